#!/usr/bin/env bash
# Builds everything (warnings are errors) and runs the unit and integration tests:
# every ctest label except `perf` (benchmarks) and `gpu` (needs a GPU).
#   scripts/test.sh [ctest args...]     e.g. scripts/test.sh -R Planner --output-on-failure
set -euo pipefail
root_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_dir="${FLEXSP_BUILD_DIR:-$root_dir/build}"
"$root_dir/scripts/bootstrap.sh" --werror
cd "$build_dir"
ctest --label-exclude 'perf|gpu' --output-on-failure -j "$(nproc)" --timeout 600 "$@"
