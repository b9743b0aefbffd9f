#!/usr/bin/env bash
# Runs an example against a fresh local cluster (used by ctest):
#   run_with_cluster.sh FLEXSP_BIN NODES DEVICES EXAMPLE [kill-a-node]
# Starts the cluster in a private state directory, runs EXAMPLE with the head address (and, with
# kill-a-node, the pid of the last node), stops the cluster, and returns the example's status.
set -euo pipefail
bin="$1"; nodes="$2"; devices="$3"; example="$4"; mode="${5:-}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export FLEXSP_STATE_DIR="$(mktemp -d /tmp/flexsp-example.XXXXXX)"
export FLEXSP_BIN="$bin"
cleanup() {
  "$root/scripts/launch_cluster.sh" --stop --port "${port:-0}" >/dev/null 2>&1 || true
  rm -rf "$FLEXSP_STATE_DIR"
}
trap cleanup EXIT
"$root/scripts/launch_cluster.sh" --nodes "$nodes" --devices "$devices" --port 0 \
  --heartbeat-interval 100ms --failure-timeout 500ms >/dev/null
address="$(sed -n 's/.*"address": *"\([^"]*\)".*/\1/p' "$FLEXSP_STATE_DIR/current_cluster.json")"
port="${address##*:}"
export FLEXSP_SECRET_FILE="$(sed -n 's/.*"secret_file": *"\([^"]*\)".*/\1/p' "$FLEXSP_STATE_DIR/current_cluster.json")"
if [[ "$mode" == "kill-a-node" ]]; then
  victim="$(grep -l '"role":"node"' "$FLEXSP_STATE_DIR"/procs/*.json | tail -1 | xargs basename | cut -d. -f1)"
  "$example" "$address" "$victim"
else
  "$example" "$address"
fi
