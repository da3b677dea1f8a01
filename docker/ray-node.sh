#!/usr/bin/env bash
# Start one Ray node of a tuner cluster: `ray-node.sh head` or `ray-node.sh worker`.
#
# The compose file's containers run exactly this, and so do tuner's cluster tests (tests/test_cluster.py),
# on 127.0.0.1. Token authentication is always on: RAY_AUTH_TOKEN must be set (from docker/.env, which is
# not committed), and every process that talks to the cluster needs the same token.
#
# Settings (environment): RAY_PORT (6379), RAY_DASHBOARD_PORT (8265), RAY_CLIENT_PORT (10001),
# RAY_DASHBOARD_HOST (127.0.0.1; the head container sets 0.0.0.0 and compose publishes it on 127.0.0.1 only),
# RAY_AGENT_PORT (52365: the node's dashboard agent, which runs the head's jobs; nodes sharing a machine need one
# each),
# RAY_NODE_IP (the node's address), RAY_HEAD_ADDRESS (a worker's head, host:port), RAY_NUM_CPUS,
# RAY_NUM_GPUS, RAY_TEMP_DIR, RAY_BLOCK (set: stay in the foreground, as a container's main process must).
set -euo pipefail

role=${1:?usage: ray-node.sh head|worker}
export RAY_AUTH_MODE=token
if [ -z "${RAY_AUTH_TOKEN:-}" ]; then
  echo "ray-node.sh: RAY_AUTH_TOKEN is not set; put one in docker/.env (see docker/.env.example)" >&2
  exit 2
fi

args=()
[ -n "${RAY_NODE_IP:-}" ] && args+=(--node-ip-address="$RAY_NODE_IP")
[ -n "${RAY_NUM_CPUS:-}" ] && args+=(--num-cpus="$RAY_NUM_CPUS")
[ -n "${RAY_NUM_GPUS:-}" ] && args+=(--num-gpus="$RAY_NUM_GPUS")
[ -n "${RAY_TEMP_DIR:-}" ] && args+=(--temp-dir="$RAY_TEMP_DIR")
[ -n "${RAY_AGENT_PORT:-}" ] && args+=(--dashboard-agent-listen-port="$RAY_AGENT_PORT")
[ -n "${RAY_BLOCK:-}" ] && args+=(--block)

case "$role" in
  head)
    exec ray start --head \
      --port="${RAY_PORT:-6379}" \
      --dashboard-host="${RAY_DASHBOARD_HOST:-127.0.0.1}" \
      --dashboard-port="${RAY_DASHBOARD_PORT:-8265}" \
      --ray-client-server-port="${RAY_CLIENT_PORT:-10001}" \
      --resources='{"head": 1}' \
      "${args[@]}"
    ;;
  worker)
    exec ray start \
      --address="${RAY_HEAD_ADDRESS:?RAY_HEAD_ADDRESS (host:port of the head) is not set}" \
      --resources='{"worker": 1}' \
      "${args[@]}"
    ;;
  *)
    echo "ray-node.sh: unknown role $role (head or worker)" >&2
    exit 2
    ;;
esac
