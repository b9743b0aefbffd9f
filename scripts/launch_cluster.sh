#!/usr/bin/env bash
# Starts a flexsp cluster: a head here plus N nodes, and waits until every node has registered.
#
#   scripts/launch_cluster.sh --nodes N --devices SPEC [--port P] [options]   start
#   scripts/launch_cluster.sh --stop [--port P] [--hostfile FILE]             stop, leave no process
#
# Where the nodes run:
#   local (default)    N node processes on this machine
#   --hostfile FILE    one node per line of FILE ("host" or "user@host"), started over ssh; the
#                      secret travels on ssh's stdin, never on a command line
#   under Slurm        inside an allocation (SLURM_JOB_ID set, srun found): one node per
#                      allocated machine via srun (N defaults to SLURM_JOB_NUM_NODES); --local
#                      forces local mode
# Options:
#   --port P                 head port (default 7400; 0 picks a free one)
#   --devices SPEC           node devices: cpu:K, cuda:all, cuda:0,1, auto (default auto: every GPU
#                            when the CUDA backend is usable, else cpu:1)
#   --bind ADDR              head listen address (default 127.0.0.1 locally, else the --head-host
#                            address: the head gives jobs' devices its address; bound to 0.0.0.0
#                            it advertises --head-host)
#   --head-host HOST         address nodes use to reach the head (remote modes; default: first
#                            address of `hostname -I`)
#   --heartbeat-interval D   e.g. 500ms (default 500ms); --failure-timeout D, e.g. 3s (default 3s)
#   --timeout S              seconds to wait for every node to register (default 60)
# Environment: FLEXSP_BIN (the flexsp binary; default: on PATH, else the build tree),
#   FLEXSP_STATE_DIR (per-user state, as for `flexsp`).
# Prints "head address: HOST:PORT" once every node has registered; exits non-zero with a clear
# message (and stops what it started) otherwise.
set -euo pipefail

usage() { sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "launch_cluster: $*" >&2; exit 1; }

root_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
flexsp_bin="${FLEXSP_BIN:-}"
if [[ -z "$flexsp_bin" ]]; then
  if command -v flexsp >/dev/null; then flexsp_bin="$(command -v flexsp)";
  elif [[ -x "$root_dir/build/apps/flexsp/flexsp" ]]; then flexsp_bin="$root_dir/build/apps/flexsp/flexsp";
  else die "cannot find the flexsp binary: set FLEXSP_BIN or build it (scripts/bootstrap.sh)"; fi
fi

nodes=""; devices="auto"; port=7400; port_given=0; bind=""; head_host=""; hostfile=""; stop=0; local_only=0
heartbeat="500ms"; failure_timeout="3s"; wait_s=60
while [[ $# -gt 0 ]]; do
  case "$1" in
    --nodes) nodes="$2"; shift 2 ;;
    --devices) devices="$2"; shift 2 ;;
    --port) port="$2"; port_given=1; shift 2 ;;
    --bind) bind="$2"; shift 2 ;;
    --head-host) head_host="$2"; shift 2 ;;
    --hostfile) hostfile="$2"; shift 2 ;;
    --heartbeat-interval) heartbeat="$2"; shift 2 ;;
    --failure-timeout) failure_timeout="$2"; shift 2 ;;
    --timeout) wait_s="$2"; shift 2 ;;
    --local) local_only=1; shift ;;
    --stop) stop=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[[ "$port" =~ ^[0-9]+$ ]] || die "--port '$port' is not a number"
[[ "$wait_s" =~ ^[0-9]+$ ]] || die "--timeout '$wait_s' is not a number of seconds"

mode=local
if [[ -n "$hostfile" ]]; then
  [[ -r "$hostfile" ]] || die "cannot read hostfile '$hostfile'"
  mode=ssh
elif [[ $local_only -eq 0 && -n "${SLURM_JOB_ID:-}" ]] && command -v srun >/dev/null; then
  mode=slurm
fi

state_dir="${FLEXSP_STATE_DIR:-${XDG_RUNTIME_DIR:+$XDG_RUNTIME_DIR/flexsp}}"
state_dir="${state_dir:-/tmp/flexsp-$(id -u)}"
mkdir -p "$state_dir"

read_hosts() { grep -v '^[[:space:]]*\(#\|$\)' "$hostfile" | awk '{print $1}'; }

# ---------------------------------------------------------------------------- stop
if [[ $stop -eq 1 ]]; then
  port_args=()
  [[ $port_given -eq 1 ]] && port_args=(--port "$port")
  if [[ -n "$hostfile" ]]; then
    while read -r host; do
      ssh -o BatchMode=yes "$host" "$(printf '%q ' "${FLEXSP_REMOTE_BIN:-flexsp}" stop "${port_args[@]}")" </dev/null ||
        echo "launch_cluster: warning: stop on $host failed" >&2
    done < <(read_hosts)
  fi
  if [[ -f "$state_dir/srun-${port}.pid" ]]; then
    srun_pid="$(cat "$state_dir/srun-${port}.pid")"
    kill "$srun_pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$srun_pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$srun_pid" 2>/dev/null || true
    rm -f "$state_dir/srun-${port}.pid"
  fi
  "$flexsp_bin" stop "${port_args[@]}"
  exit 0
fi

# ---------------------------------------------------------------------------- start
if [[ "$mode" == slurm && -z "$nodes" ]]; then nodes="${SLURM_JOB_NUM_NODES:-}"; fi
[[ -n "$nodes" ]] || die "--nodes N is required"
[[ "$nodes" =~ ^[0-9]+$ && "$nodes" -ge 1 ]] || die "--nodes '$nodes' must be a positive number"
if [[ "$mode" == ssh ]]; then
  mapfile -t hosts < <(read_hosts)
  [[ ${#hosts[@]} -ge "$nodes" ]] || die "hostfile '$hostfile' lists ${#hosts[@]} hosts, fewer than --nodes $nodes"
fi
if [[ "$mode" != local && -z "$head_host" ]]; then
  if [[ -n "$bind" && "$bind" != 0.0.0.0 ]]; then head_host="$bind"; else head_host="$(hostname -I | awk '{print $1}')"; fi
  [[ -n "$head_host" ]] || die "cannot tell the address nodes should use: pass --head-host"
fi
if [[ -z "$bind" ]]; then
  # Remote modes bind the head to the address the nodes use: the head hands its listening address
  # to the devices of a job, which connect back to it; from another machine 0.0.0.0 is not it.
  if [[ "$mode" == local ]]; then bind=127.0.0.1; else bind="$(getent ahostsv4 "$head_host" | awk 'NR == 1 {print $1}' || true)"; fi
  [[ -n "$bind" ]] || die "cannot resolve --head-host '$head_host' to an IPv4 address to bind the head to"
fi
# A head bound to every interface tells jobs' devices the address the nodes use.
advertise_args=()
if [[ "$mode" != local && ( "$bind" == 0.0.0.0 || "$bind" == "::" ) ]]; then advertise_args=(--advertise "$head_host"); fi

started_head=0
cleanup_on_error() {
  local rc=$?
  if [[ $rc -ne 0 && $started_head -eq 1 ]]; then
    echo "launch_cluster: stopping what was started" >&2
    "$0" --stop --port "$port" ${hostfile:+--hostfile "$hostfile"} >/dev/null 2>&1 || true
  fi
}
trap cleanup_on_error EXIT

head_out="$("$flexsp_bin" start --head --port "$port" --bind "$bind" "${advertise_args[@]}" \
  --heartbeat-interval "$heartbeat" --failure-timeout "$failure_timeout")" || die "the head did not start: $head_out"
started_head=1
head_address="$(sed -n 's/.*started at \([^ ]*\) .*/\1/p' <<<"$head_out" | head -n1)"
[[ -n "$head_address" ]] || die "could not read the head address from: $head_out"
port="${head_address##*:}"
secret_file="$(sed -n 's/.*secret file: \(.*\)$/\1/p' <<<"$head_out" | head -n1)"

if [[ "$mode" != local ]]; then
  join_address="$head_host:$port"
  [[ -r "$secret_file" ]] || die "the head's secret file is not readable: '$secret_file'"
else
  join_address="$head_address"
fi

case "$mode" in
  local)
    for i in $(seq 1 "$nodes"); do
      "$flexsp_bin" start --address "$join_address" --devices "$devices" >/dev/null ||
        die "node $i of $nodes did not start (see $state_dir/logs)"
    done
    ;;
  ssh)
    for ((i = 0; i < nodes; i++)); do
      host="${hosts[$i]}"
      remote_cmd="FLEXSP_CLUSTER_SECRET=\"\$(cat)\" $(printf '%q ' "${FLEXSP_REMOTE_BIN:-flexsp}" start --address "$join_address" --devices "$devices" --bind 0.0.0.0)"
      ssh -o BatchMode=yes "$host" "$remote_cmd" <"$secret_file" >/dev/null ||
        die "node on $host did not start (ssh $host failed)"
    done
    ;;
  slurm)
    FLEXSP_CLUSTER_SECRET="$(cat "$secret_file")" srun --nodes="$nodes" --ntasks="$nodes" --ntasks-per-node=1 \
      --kill-on-bad-exit=0 "$flexsp_bin" start --block --address "$join_address" --devices "$devices" --bind 0.0.0.0 \
      >"$state_dir/logs/srun-$port.log" 2>&1 &
    echo $! >"$state_dir/srun-$port.pid"
    ;;
esac

deadline=$((SECONDS + wait_s))
alive=0
while :; do
  status_json="$("$flexsp_bin" status --address "$head_address" --json 2>/dev/null || true)"
  alive="$(sed -n 's/^  "alive": \([0-9]*\),\{0,1\}$/\1/p' <<<"$status_json" | head -n1)"
  alive="${alive:-0}"
  [[ "$alive" -ge "$nodes" ]] && break
  if [[ $SECONDS -ge $deadline ]]; then
    die "only $alive of $nodes nodes registered within ${wait_s}s (logs: $state_dir/logs)"
  fi
  sleep 0.2
done
trap - EXIT
echo "head address: $head_address"
echo "nodes: $alive registered ($mode)"
echo "stop with: $0 --stop --port $port${hostfile:+ --hostfile $hostfile}"
