#!/usr/bin/env bash
# Builds the `flexsp` command and runs the main job: an embedded elastic training run (head,
# node with 8 CPU devices and the job in one process) of a small GPT on long-tail synthetic
# data, re-planned with FlexSP every step. Extra flags go to `flexsp train` (see --help there),
# e.g. scripts/main_job.sh --steps 10 --strategy static:4
set -euo pipefail
root_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_dir="${FLEXSP_BUILD_DIR:-$root_dir/build}"
"$root_dir/scripts/bootstrap.sh" --target flexsp
exec "$build_dir/apps/flexsp/flexsp" train --devices cpu:8 --metrics "$build_dir/train_metrics.jsonl" "$@"
