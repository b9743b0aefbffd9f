#!/usr/bin/env bash
# Builds the `flexsp` command and runs the main job on this machine's CPU devices.
#   scripts/main_job.sh [extra flags for the job]
set -euo pipefail
root_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_dir="${FLEXSP_BUILD_DIR:-$root_dir/build}"
"$root_dir/scripts/bootstrap.sh" --target flexsp
"$build_dir/apps/flexsp/flexsp" info "$@"
