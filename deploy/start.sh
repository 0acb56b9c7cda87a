#!/usr/bin/env bash
# The seed's start.sh: run this machine's agent (the seed's manager_rpc), which starts or finds the
# local RabbitMQ node, reads its Erlang cookie, registers with the coordinator and serves `initial`.
#
#   LABELLOOP_CLUSTER_TOKEN=... LABELLOOP_AGENT_REGISTRY=http://coordinator:8700 deploy/start.sh
#
# Every `labelloop agent` option is also a LABELLOOP_AGENT_* variable (docs/DEPLOY.md); extra
# arguments are passed on as they are. The token is read from the environment (or from the file
# LABELLOOP_CLUSTER_TOKEN_FILE names), never printed.
#
# `labelloop` is found as: $LABELLOOP_BIN, else `labelloop` on PATH, else the virtual environment
# of the checkout this script belongs to (`make install` makes it: .venv/bin/labelloop).
set -euo pipefail

if [[ -z "${LABELLOOP_CLUSTER_TOKEN:-}" && -z "${LABELLOOP_CLUSTER_TOKEN_FILE:-}" ]]; then
    echo "start.sh: set LABELLOOP_CLUSTER_TOKEN (or LABELLOOP_CLUSTER_TOKEN_FILE): the cluster secret shared by all machines" >&2
    exit 2
fi
: "${LABELLOOP_AGENT_REGISTRY:?set LABELLOOP_AGENT_REGISTRY (the coordinator URL, e.g. http://10.0.0.1:8700)}"
export LABELLOOP_AGENT_REGISTRY

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ -n "${LABELLOOP_BIN:-}" ]]; then
    labelloop="$LABELLOOP_BIN"
elif command -v labelloop >/dev/null 2>&1; then
    labelloop="$(command -v labelloop)"
elif [[ -x "$here/../.venv/bin/labelloop" ]]; then
    labelloop="$here/../.venv/bin/labelloop"
else
    echo "start.sh: labelloop not found. Install it from the checkout (make install, which makes" \
         ".venv/bin/labelloop; or: python3 -m pip install /path/to/labelloop), put it on PATH," \
         "or set LABELLOOP_BIN" >&2
    exit 2
fi
if ! [[ -x "$labelloop" ]]; then
    echo "start.sh: '$labelloop' is not an executable" >&2
    exit 2
fi
exec "$labelloop" agent "$@"
