#!/usr/bin/env bash
# Start the cluster's MLflow tracking server with authentication on (MLflow's basic-auth app).
#
# The admin account comes from MLFLOW_ADMIN_USERNAME and MLFLOW_ADMIN_PASSWORD, and the key that signs its
# login forms (CSRF) from MLFLOW_FLASK_SERVER_SECRET_KEY (docker/.env, not committed). Runs and accounts go to
# MLFLOW_BACKEND_STORE_URI (PostgreSQL in the compose file), artifacts to a directory every node mounts. The
# Host headers it accepts are MLflow's own setting, MLFLOW_SERVER_ALLOWED_HOSTS.
#
# A checked login is cached for MLFLOW_AUTH_CACHE_TTL_SECONDS (60; 0 turns the cache off): MLflow otherwise
# hashes the password on every request, about 0.4 s of CPU each on 2 cores, and a study sends several per trial.
# A password changed through MLflow's API takes effect at once on the worker that changed it, on the others
# within that time.
set -euo pipefail

for name in MLFLOW_ADMIN_USERNAME MLFLOW_ADMIN_PASSWORD MLFLOW_FLASK_SERVER_SECRET_KEY MLFLOW_BACKEND_STORE_URI; do
  if [ -z "${!name:-}" ]; then
    echo "mlflow-server.sh: $name is not set; put it in docker/.env (see docker/.env.example)" >&2
    exit 2
  fi
done
if [ "${#MLFLOW_ADMIN_PASSWORD}" -lt 12 ]; then
  echo "mlflow-server.sh: MLFLOW_ADMIN_PASSWORD must have at least 12 characters (MLflow's rule), got ${#MLFLOW_ADMIN_PASSWORD}" >&2
  exit 2
fi

# The admin account reaches MLflow through its own variables, which take precedence over the file: the file
# holds no secret, and a password may hold any character (the file is read with configparser, where % is special).
export MLFLOW_AUTH_ADMIN_USERNAME=$MLFLOW_ADMIN_USERNAME MLFLOW_AUTH_ADMIN_PASSWORD=$MLFLOW_ADMIN_PASSWORD
database_uri=${MLFLOW_AUTH_DATABASE_URI:-$MLFLOW_BACKEND_STORE_URI}
config=$(mktemp --suffix=.ini)
cat > "$config" <<INI
[mlflow]
default_permission = READ
database_uri = ${database_uri//%/%%}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
auth_cache_ttl_seconds = ${MLFLOW_AUTH_CACHE_TTL_SECONDS:-60}
INI
export MLFLOW_AUTH_CONFIG_PATH=$config
# MLflow's background job runner serves GenAI features a study does not use; it costs a process.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}

exec mlflow server \
  --app-name basic-auth \
  --backend-store-uri "$MLFLOW_BACKEND_STORE_URI" \
  --artifacts-destination "${MLFLOW_ARTIFACTS_DESTINATION:-/shared/mlartifacts}" \
  --host "${MLFLOW_HOST:-0.0.0.0}" \
  --port "${MLFLOW_PORT:-5000}" \
  --workers "${MLFLOW_WORKERS:-2}"
