#!/usr/bin/env bash
# Start the cluster's MLflow tracking server with authentication on (MLflow's basic-auth app).
#
# The admin account comes from MLFLOW_ADMIN_USERNAME and MLFLOW_ADMIN_PASSWORD (docker/.env, not committed);
# runs go to PostgreSQL (MLFLOW_BACKEND_STORE_URI) and artifacts to a directory every node mounts.
set -euo pipefail

: "${MLFLOW_ADMIN_USERNAME:?set MLFLOW_ADMIN_USERNAME in docker/.env}"
: "${MLFLOW_ADMIN_PASSWORD:?set MLFLOW_ADMIN_PASSWORD in docker/.env}"
: "${MLFLOW_BACKEND_STORE_URI:?set MLFLOW_BACKEND_STORE_URI}"

config=$(mktemp --suffix=.ini)
cat > "$config" <<INI
[mlflow]
default_permission = READ
database_uri = ${MLFLOW_AUTH_DATABASE_URI:-$MLFLOW_BACKEND_STORE_URI}
admin_username = ${MLFLOW_ADMIN_USERNAME}
admin_password = ${MLFLOW_ADMIN_PASSWORD}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
export MLFLOW_AUTH_CONFIG_PATH=$config

exec mlflow server \
  --app-name basic-auth \
  --backend-store-uri "$MLFLOW_BACKEND_STORE_URI" \
  --artifacts-destination "${MLFLOW_ARTIFACTS_DESTINATION:-/shared/mlartifacts}" \
  --host "${MLFLOW_HOST:-0.0.0.0}" \
  --port "${MLFLOW_PORT:-5000}"
