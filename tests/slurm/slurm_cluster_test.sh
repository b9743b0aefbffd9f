#!/usr/bin/env bash
# flexsp under a real Slurm, on this one machine (ctest label slurm; run as root):
#   FLEXSP_BIN=build/apps/flexsp/flexsp tests/slurm/slurm_cluster_test.sh
#
# 1. installs slurm-wlm and munge with apt-get where they are missing (their services are not
#    started);
# 2. starts a private munged (own key, socket, pid and log under the work directory), a slurmctld
#    and three slurmd: each slurm node (fxnode1..3) is a network namespace of its own (fxslurm1..3,
#    10.213.0.11-13, a veth into the bridge fxslurmbr0, which holds 10.213.0.1 for slurmctld) with
#    a UTS namespace for its hostname, so every slurmd sees its own name and address. Where
#    namespaces cannot be made, one slurm node on 127.0.0.1 instead (it says why);
# 3. runs examples/slurm/flexsp.sbatch twice, as a user would: with `sbatch --wait` (the script,
#    hence the head, runs on fxnode1) and with `salloc` (it runs here; the nodes reach the head at
#    the bridge's address, FLEXSP_HEAD_HOST). Each time scripts/launch_cluster.sh starts one
#    flexsp node per slurm node with srun, a small training job runs with `flexsp job submit
#    --wait`, and `launch_cluster.sh --stop` ends the cluster; the test checks that every step ran
#    on the devices of all the slurm nodes and that no process of the cluster is left;
# 4. removes everything on exit, and first whatever a killed earlier run left (same names).
# Exits 77 (skipped), naming the command and the error, where Slurm cannot run here.
# Environment: FLEXSP_BIN (the flexsp binary), FLEXSP_SLURM_WORK (work directory, default
# /tmp/flexsp-slurm-test), FLEXSP_SLURM_KEEP=1 keeps the work directory (logs; the daemons are
# stopped all the same), FLEXSP_SLURM_ONE_NODE=1 takes the one-node way without trying namespaces.
set -euo pipefail

readonly SKIP=77
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
work="${FLEXSP_SLURM_WORK:-/tmp/flexsp-slurm-test}"
work="${work%/}"
readonly max_nodes=3 subnet=10.213.0 bridge=fxslurmbr0 ns_prefix=fxslurm veth_prefix=fxslurmv
nodes=$max_nodes
readonly ctld_port=16817 slurmd_port=16818
t0=$SECONDS

say() { echo "slurm_test [$((SECONDS - t0))s]: $*"; }
skip() { echo "slurm_test: SKIPPED: $*" >&2; exit $SKIP; }
fail() { echo "slurm_test: FAILED: $*" >&2; exit 1; }
# Runs a setup command; where it fails, the test is skipped naming the command and its error.
need() {
  local err
  if ! err="$("$@" 2>&1 9>&-)"; then skip "'$*' failed: ${err:-no output}"; fi
}

[[ $(id -u) -eq 0 ]] || skip "needs root (apt-get, network namespaces, slurmd); this is uid $(id -u)"
flexsp_bin="${FLEXSP_BIN:-$root/build/apps/flexsp/flexsp}"
[[ -x "$flexsp_bin" ]] || fail "no flexsp binary at '$flexsp_bin' (set FLEXSP_BIN)"
flexsp_bin="$(cd "$(dirname "$flexsp_bin")" && pwd)/$(basename "$flexsp_bin")"
for tool in flock timeout getent; do
  command -v "$tool" >/dev/null || skip "'$tool' is not installed"
done

# One run at a time: the names (namespaces, bridge, work directory) are fixed so that a run
# finds and removes what a killed one left. The lock goes with the processes holding fd 9, so
# every daemon below is started with fd 9 closed.
exec 9>"$work.lock"
flock -w 300 9 || fail "another run holds $work.lock"

# ------------------------------------------------------------------------------------- cleanup
# Pids of this test's processes: those in its namespaces, those whose command line names the
# work directory (slurmctld, munged, sbatch, salloc) and those whose environment names it
# (slurmscriptd, flexsp processes, srun, the example script).
our_pids() {
  local i p
  for i in $(seq 1 $max_nodes); do ip netns pids "$ns_prefix$i" 2>/dev/null; done
  for p in /proc/[0-9]*; do
    p="${p#/proc/}"
    [[ "$p" == "$$" || "$p" == "$BASHPID" ]] && continue
    if grep -qsF "$work/" "/proc/$p/cmdline" || grep -qsF -e "FLEXSP_STATE_DIR=$work/" -e "SLURM_CONF=$work/" "/proc/$p/environ"; then
      echo "$p"
    fi
  done
}
kill_ours() {
  local pids p i
  pids="$(our_pids | sort -u | tr '\n' ' ')"
  [[ -n "${pids// /}" ]] || return 0
  # shellcheck disable=SC2086
  kill -TERM $pids 2>/dev/null
  for i in $(seq 1 50); do
    pids="$(for p in $pids; do if kill -0 "$p" 2>/dev/null; then echo "$p"; fi; done | tr '\n' ' ')"
    [[ -n "${pids// /}" ]] || return 0
    sleep 0.1
  done
  # shellcheck disable=SC2086
  kill -KILL $pids 2>/dev/null
}
remove_network() {
  local - i
  set +e
  for i in $(seq 1 $max_nodes); do
    ip netns del "$ns_prefix$i" 2>/dev/null
    ip link del "$veth_prefix$i" 2>/dev/null
  done
  ip link del "$bridge" 2>/dev/null
  return 0
}
policy_rc_d=/usr/sbin/policy-rc.d
policy_rc_d_ours=0
policy_rc_d_mark="# flexsp slurm test: no service starts while it installs slurm-wlm and munge"
cleanup() {
  local - i
  set +e
  export -n SLURM_CONF  # this script's own children are not the daemons to stop
  kill_ours
  kill_ours  # a second pass for what the first one's deaths started (slurmstepd teardown)
  remove_network
  # The policy-rc.d put in place for the install (also one a killed run left: it says whose it is).
  if [[ $policy_rc_d_ours -eq 1 ]] || grep -qsF "$policy_rc_d_mark" "$policy_rc_d"; then rm -f "$policy_rc_d"; fi
  if [[ "${1:-}" == keep ]]; then
    echo "slurm_test: logs kept in $work" >&2
  else
    rm -rf "$work"
  fi
  return 0
}
on_exit() {
  local rc=$? f
  set +e
  trap - EXIT INT TERM
  if [[ $rc -ne 0 && $rc -ne $SKIP && -d "$work" ]]; then
    for f in "$work"/log/* "$work"/flexsp-*/logs/*; do
      [[ -f "$f" ]] || continue
      echo "---- $f (last 30 lines)" >&2
      tail -n 30 "$f" >&2
    done
  fi
  if [[ "${FLEXSP_SLURM_KEEP:-0}" == 1 ]]; then cleanup keep; else cleanup; fi
  rm -f "$work.lock"
  say "done (exit $rc)"
  exit $rc
}
cleanup  # what an earlier, killed run left
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------------------------------- packages
missing=0
for cmd in slurmctld slurmd sbatch salloc sinfo srun scontrol munged mungekey munge unmunge; do
  command -v "$cmd" >/dev/null || missing=1
done
if [[ $missing -eq 1 ]]; then
  say "installing slurm-wlm munge"
  # Their services are not started: this test runs its own daemons. Where no policy-rc.d says so
  # already, one does for the length of the install.
  if [[ ! -e "$policy_rc_d" ]]; then
    printf '#!/bin/sh\n%s\nexit 101\n' "$policy_rc_d_mark" >"$policy_rc_d" && chmod 755 "$policy_rc_d" &&
      policy_rc_d_ours=1
  fi
  apt_log="$work.apt.log"
  apt_install() {
    DEBIAN_FRONTEND=noninteractive timeout 240 apt-get install -y --no-install-recommends slurm-wlm munge \
      >>"$apt_log" 2>&1 9>&-
  }
  if ! apt_install; then
    timeout 120 apt-get update >>"$apt_log" 2>&1 9>&- || true
    apt_install ||
      skip "'apt-get install -y --no-install-recommends slurm-wlm munge' failed: $(tail -n 3 "$apt_log" | tr '\n' ' ')"
  fi
  rm -f "$apt_log"
  if [[ $policy_rc_d_ours -eq 1 ]]; then rm -f "$policy_rc_d"; policy_rc_d_ours=0; fi
fi
say "$(slurmctld -V), $(munged --version 2>&1 | awk '{print $1; exit}')"

mkdir -p "$work"/{log,state,spool,munge}
chmod 755 "$work" "$work/munge"  # munged wants its socket directory searchable by all

# ------------------------------------------------------------------------------------- munge
sock="$work/munge/munge.sock"
need mungekey --create --keyfile="$work/munge/munge.key"
need munged --socket="$sock" --key-file="$work/munge/munge.key" --pid-file="$work/munge/munged.pid" \
  --log-file="$work/log/munged.log" --seed-file="$work/munge/munged.seed"
need sh -c "munge -S '$sock' -n | unmunge -S '$sock'"
say "munged up ($sock)"

# ------------------------------------------------------------------------------------- network
# A slurm node per network namespace, on a bridge; try() records what failed, for the way back to
# one node.
net_error=""
try() {
  local err
  if ! err="$("$@" 2>&1 9>&-)"; then net_error="'$*' failed: ${err:-no output}"; return 1; fi
}
# Reachable means a TCP connect to a closed port is refused (no ping needed).
reach() {  # reach NS ADDR: prints the connect error
  ip netns exec "$1" timeout 2 bash -c "exec 3<>/dev/tcp/$2/1" 2>&1 9>&- | tail -n 1 || true
}
namespaces() {
  local i ns deadline tool
  for tool in ip nsenter unshare; do
    command -v "$tool" >/dev/null || { net_error="'$tool' is not installed"; return 1; }
  done
  try ip link add "$bridge" type bridge || return 1
  try ip addr add "$subnet.1/24" dev "$bridge" || return 1
  try ip link set "$bridge" up || return 1
  for i in $(seq 1 $nodes); do
    ns="$ns_prefix$i"
    try ip netns add "$ns" || return 1
    try ip link add "$veth_prefix$i" type veth peer name eth0 netns "$ns" || return 1
    try ip link set "$veth_prefix$i" master "$bridge" up || return 1
    try ip -n "$ns" addr add "$subnet.$((10 + i))/24" dev eth0 || return 1
    try ip -n "$ns" link set eth0 up || return 1
    try ip -n "$ns" link set lo up || return 1
    try nsenter --net="/run/netns/$ns" unshare --uts sh -c "hostname fxnode$i" || return 1
  done
  # The bridge forwards once its ports are up: the first namespace reaches the bridge and the last.
  deadline=$((SECONDS + 30))
  until [[ "$(reach "${ns_prefix}1" "$subnet.1")" == *refused* &&
    "$(reach "${ns_prefix}1" "$subnet.$((10 + nodes))")" == *refused* ]]; do
    if [[ $SECONDS -ge $deadline ]]; then
      net_error="'ip netns exec ${ns_prefix}1 bash -c \"exec 3<>/dev/tcp/$subnet.$((10 + nodes))/1\"': $(reach "${ns_prefix}1" "$subnet.$((10 + nodes))") (expected: connection refused)"
      return 1
    fi
    sleep 0.5
  done
}
if [[ "${FLEXSP_SLURM_ONE_NODE:-0}" == 1 ]]; then
  net_error="FLEXSP_SLURM_ONE_NODE=1"
elif namespaces; then
  net_error=""
fi
if [[ -z "$net_error" ]]; then
  ctld_addr="$subnet.1" node_names="fxnode[1-$nodes]" node_addrs="$subnet.[11-$((10 + nodes))]"
  say "network up: $bridge $subnet.1, namespaces ${ns_prefix}1-$nodes"
else
  remove_network
  nodes=1 ctld_addr=127.0.0.1 node_names=fxnode1 node_addrs=127.0.0.1
  say "no namespaces ($net_error): one slurm node, on 127.0.0.1"
fi
node_addr() { if [[ $nodes -gt 1 ]]; then echo "$subnet.$((10 + $1))"; else echo 127.0.0.1; fi; }

# ------------------------------------------------------------------------------------- slurm
export SLURM_CONF="$work/slurm.conf"
cat >"$SLURM_CONF" <<EOF
ClusterName=flexsptest
SlurmctldHost=$(hostname -s)($ctld_addr)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$sock
CredType=cred/munge
StateSaveLocation=$work/state
SlurmdSpoolDir=$work/spool/%n
SlurmctldPidFile=$work/slurmctld.pid
SlurmdPidFile=$work/spool/slurmd-%n.pid
SlurmctldLogFile=$work/log/slurmctld.log
SlurmdLogFile=$work/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
SlurmdTimeout=60
InactiveLimit=0
KillWait=10
MinJobAge=300
PlugStackConfig=$work/plugstack.conf
NodeName=$node_names NodeAddr=$node_addrs CPUs=1 RealMemory=256 State=UNKNOWN
PartitionName=debug Nodes=$node_names Default=YES MaxTime=INFINITE State=UP
EOF
# slurmd loads a cgroup plugin even with none configured; v1's loads without any cgroup mount
# (autodetection fails where /sys/fs/cgroup is not a cgroup or tmpfs mount).
echo "CgroupPlugin=cgroup/v1" >"$work/cgroup.conf"
: >"$work/plugstack.conf"

slurmctld -D -f "$SLURM_CONF" >"$work/log/slurmctld.out" 2>&1 9>&- &
daemons=("slurmctld:$!")
for i in $(seq 1 $nodes); do
  mkdir -p "$work/spool/fxnode$i"
  if [[ $nodes -gt 1 ]]; then
    nsenter --net="/run/netns/$ns_prefix$i" unshare --uts sh -c \
      "hostname fxnode$i && exec slurmd -D -f '$SLURM_CONF' -N fxnode$i" >"$work/log/slurmd-fxnode$i.out" 2>&1 9>&- &
  else
    slurmd -D -f "$SLURM_CONF" -N fxnode1 >"$work/log/slurmd-fxnode1.out" 2>&1 9>&- &
  fi
  daemons+=("slurmd-fxnode$i:$!")
done

# Every node idle; a daemon that exits stops the test with its last words.
deadline=$((SECONDS + 90))
while :; do
  idle="$(sinfo -h -N -t idle -o '%N' 2>/dev/null | sort -u | wc -l || true)"
  [[ "${idle:-0}" -ge $nodes ]] && break
  for d in "${daemons[@]}"; do
    kill -0 "${d#*:}" 2>/dev/null ||
      skip "${d%%:*} exited: $(tail -n 5 "$work/log/${d%%:*}.out" "$work/log/${d%%:*}.log" 2>/dev/null | tr '\n' ' ')"
  done
  if [[ $SECONDS -ge $deadline ]]; then
    skip "slurm nodes not idle within 90s: sinfo: $(sinfo -N 2>&1 | tr '\n' ';') slurmctld: $(tail -n 5 "$work/log/slurmctld.log" 2>&1 | tr '\n' ' ') slurmd: $(tail -n 3 "$work"/log/slurmd-*.log 2>&1 | tr '\n' ' ')"
  fi
  sleep 0.5
done
say "slurm up: $(sinfo -h -o '%P %a %D %T %N' | tr '\n' ' ')"

# ------------------------------------------------------------------------------------- the job
# examples/slurm/flexsp.sbatch as a user runs it, with this test's binary and a small CPU job:
#   sbatch: the batch script runs on fxnode1, hence the head; the nodes reach it at fxnode1's
#           address (launch_cluster.sh's default: the first address of `hostname -I` there);
#   salloc: the script runs here, in the root namespace; the head binds every interface
#           (--bind 0.0.0.0) and the nodes reach it at the bridge's address (FLEXSP_HEAD_HOST,
#           passed on as --head-host, which the head advertises to jobs' devices).
# With one node (no namespaces), the head is on 127.0.0.1 both times.
cat >"$work/job.json" <<'EOF'
{"name": "slurm-test", "steps": 6, "batch_size": 8, "model": {"max_seq": 256}, "calibrate": false}
EOF
example() {  # example sbatch|salloc: runs the example; its output in $work/NAME.job
  local name="$1" head_host="" launch_args="--timeout 120" rc=0
  local -a cmd=(sbatch --wait --output "$work/$name.job")
  if [[ "$name" == salloc ]]; then cmd=(salloc); head_host="$ctld_addr"; launch_args+=" --bind 0.0.0.0"; fi
  [[ $nodes -eq 1 ]] && head_host=127.0.0.1
  say "$name --nodes $nodes examples/slurm/flexsp.sbatch"
  FLEXSP_ROOT="$root" FLEXSP_BIN="$flexsp_bin" FLEXSP_STATE_DIR="$work/flexsp-$name" FLEXSP_DEVICES=cpu:1 \
    FLEXSP_LAUNCH_ARGS="$launch_args" FLEXSP_HEAD_HOST="$head_host" \
    timeout 200 "${cmd[@]}" --nodes $nodes --time 4 --chdir "$root" \
    "$root/examples/slurm/flexsp.sbatch" "$work/job.json" >"$work/$name.out" 2>"$work/$name.err" 9>&- || rc=$?
  [[ "$name" == salloc ]] && mv "$work/$name.out" "$work/$name.job"
  cat "$work/$name".{out,err,job} 2>/dev/null || true
  return $rc
}
# What a run of the example printed and left: a cluster on every slurm node, the job to its
# last step on every node's device, a completed Slurm job, no process of the cluster.
check_example() {  # check_example NAME EXIT_STATUS
  local name="$1" rc="$2" state="$work/flexsp-$1" out="$work/$1.job" job_id metrics steps on_all left p i deadline
  job_id="$(sed -n 's/.*\(Submitted batch job\|Granted job allocation\) \([0-9]*\).*/\2/p' "$work/$name".{out,err,job} 2>/dev/null |
    head -n 1 || true)"
  [[ -n "$job_id" ]] || fail "$name: no Slurm job (exit $rc)"
  [[ $rc -eq 0 ]] ||
    fail "$name: job $job_id failed (exit $rc): $(scontrol show job "$job_id" 2>&1 | grep -o 'JobState=[^ ]*\|ExitCode=[^ ]*\|Reason=[^ ]*' | tr '\n' ' ')"
  grep -q "^nodes: $nodes registered (slurm)" "$out" || fail "$name: launch_cluster.sh did not report $nodes nodes in Slurm mode"
  for i in $(seq 1 $nodes); do
    grep -q "^ *node .* alive *$(node_addr "$i"):" "$out" ||
      fail "$name: flexsp status shows no node at $(node_addr "$i") (fxnode$i)"
  done
  metrics="$(compgen -G "$state/metrics-*.jsonl" | head -n 1 || true)"
  [[ -n "$metrics" ]] || fail "$name: the training job wrote no metrics"
  steps="$(wc -l <"$metrics")"
  [[ "$steps" -eq 6 ]] || fail "$name: the training job committed $steps steps, not 6"
  # Every step on every node's device: those of fxnode2 and fxnode3 joined across the network.
  on_all="$(grep -c "\"devices\": *${nodes}[,}]" "$metrics" || true)"
  [[ "$on_all" -eq 6 ]] || fail "$name: $((6 - on_all)) of 6 steps ran on fewer than $nodes devices: $(head -n 1 "$metrics")"
  deadline=$((SECONDS + 60))
  until scontrol show job "$job_id" 2>/dev/null | grep -q "JobState=COMPLETED"; do
    [[ $SECONDS -lt $deadline ]] || fail "$name: slurm job $job_id: $(scontrol show job "$job_id" 2>&1 | grep -o 'JobState=[^ ]*')"
    sleep 0.5
  done
  # Nothing of the flexsp cluster is left: no head, no node, no srun.
  while :; do
    left=""
    for p in /proc/[0-9]*; do
      p="${p#/proc/}"
      if grep -qsF "FLEXSP_STATE_DIR=$state" "/proc/$p/environ"; then
        left+=" $p:$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | cut -c1-80 || true)"
      fi
    done
    [[ -z "$left" ]] && break
    [[ $SECONDS -lt $deadline ]] || fail "$name: left running after launch_cluster.sh --stop:$left"
    sleep 0.5
  done
  say "$name: job $job_id ran flexsp on $nodes slurm nodes; the training job committed $steps steps on $nodes devices; nothing left running"
}

rc=0; example sbatch || rc=$?
check_example sbatch $rc
rc=0; example salloc || rc=$?
check_example salloc $rc
say "PASSED ($nodes slurm node$([[ $nodes -gt 1 ]] && echo s))"
