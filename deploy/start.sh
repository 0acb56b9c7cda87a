#!/usr/bin/env bash
# The seed's start.sh: run this machine's agent (the seed's manager_rpc), which starts or finds the
# local RabbitMQ node, reads its Erlang cookie, registers with the coordinator and serves `initial`.
#
#   LABELLOOP_CLUSTER_TOKEN=... LABELLOOP_AGENT_REGISTRY=http://coordinator:8700 deploy/start.sh
#
# Every `labelloop agent` option is also a LABELLOOP_AGENT_* variable (docs/DEPLOY.md); extra
# arguments are passed on as they are. The token is read from the environment, never printed.
set -euo pipefail

: "${LABELLOOP_CLUSTER_TOKEN:?set LABELLOOP_CLUSTER_TOKEN (the cluster secret shared by all machines)}"
: "${LABELLOOP_AGENT_REGISTRY:?set LABELLOOP_AGENT_REGISTRY (the coordinator URL, e.g. http://10.0.0.1:8700)}"
export LABELLOOP_CLUSTER_TOKEN LABELLOOP_AGENT_REGISTRY

LABELLOOP="${LABELLOOP_BIN:-labelloop}"
if ! command -v "$LABELLOOP" >/dev/null 2>&1; then
    echo "start.sh: '$LABELLOOP' not found; install labelloop or set LABELLOOP_BIN" >&2
    exit 2
fi
exec "$LABELLOOP" agent "$@"
