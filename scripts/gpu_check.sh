#!/usr/bin/env bash
# GPU check in two halves.
#
#   scripts/gpu_check.sh build [BUNDLE_DIR]
#     On a machine with the project's dependencies (no GPU needed): configures a CUDA build in
#     build-gpu/ (or $FLEXSP_GPU_BUILD_DIR), builds the GPU tests and the GPU benchmark, and makes
#     a self-contained folder (default gpu-bundle/, < 64 MiB) holding them, every shared library
#     they load that a bare GPU machine lacks (glibc too, used only when the host's is older;
#     packed as lib.tar.gz, OpenBLAS alone is 36 MB), the PyTorch reference script and this
#     script.
#
#   gpu-bundle/gpu_check.sh run [RESULTS_FILE]      (or scripts/gpu_check.sh run)
#     On a GPU machine with the CUDA driver and Python + PyTorch but none of the Debian
#     libraries and no network: runs the GPU tests, the benchmark and the PyTorch reference from
#     the bundle and writes everything to RESULTS_FILE (default gpu-bundle/gpu-results.txt).
#     cuBLAS and NCCL are taken from the machine: the CUDA toolkit (/usr/local/cuda/lib64) or
#     PyTorch's nvidia-* wheels (found through python3).
#     Exit status: 0 all passed, 1 a test or check failed, 77 no GPU here (nothing was run).
#     Time: each step has its own limit (kernel tests 90 s, training tests 60 s, benchmark 220 s,
#     PyTorch 90 s), so the whole run ends within 8 minutes even when something hangs.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mode="${1:-}"
max_bundle_bytes=$((64 * 1024 * 1024))

die() { echo "gpu_check: $*" >&2; exit 1; }

# Libraries every Linux machine with a CUDA driver has, or that must come from the driver.
is_system_lib() {
  case "$(basename "$1")" in
    linux-vdso.so.*|ld-linux*.so.*|libc.so.*|libm.so.*|libpthread.so.*|libdl.so.*|librt.so.*|libresolv.so.*) return 0 ;;
    libcuda.so*|libnvidia-*.so*) return 0 ;;
  esac
  return 1
}

build() {
  local root; root="$(cd "$here/.." && pwd)"
  [[ -f "$root/CMakeLists.txt" ]] || die "build must run from the source tree (scripts/gpu_check.sh)"
  local build_dir="${FLEXSP_GPU_BUILD_DIR:-$root/build-gpu}"
  local bundle="${1:-$root/gpu-bundle}"
  command -v nvcc >/dev/null || [[ -x /usr/local/cuda/bin/nvcc ]] || die "nvcc not found (CUDA toolkit under /usr/local/cuda)"
  cmake -S "$root" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DFLEXSP_ENABLE_CUDA=ON \
    -DFLEXSP_BUILD_TESTS=ON -DFLEXSP_BUILD_BENCHMARKS=ON ${CMAKE_CUDA_COMPILER:+-DCMAKE_CUDA_COMPILER=$CMAKE_CUDA_COMPILER} >/dev/null
  cmake --build "$build_dir" -j "${JOBS:-2}" --target flexsp_kernels_gpu_tests flexsp_training_gpu_tests flexsp_bench_gpu

  rm -rf "$bundle"
  mkdir -p "$bundle/bin" "$bundle/lib" "$bundle/lib/glibc"
  local bins=("$build_dir/tests/flexsp_kernels_gpu_tests" "$build_dir/tests/flexsp_training_gpu_tests"
              "$build_dir/bench/flexsp_bench_gpu")
  for b in "${bins[@]}"; do
    [[ -x "$b" ]] || die "missing $b"
    cp "$b" "$bundle/bin/"
    strip --strip-unneeded "$bundle/bin/$(basename "$b")"
  done
  # Every shared library the binaries resolve here, except the system and driver ones.
  local lib
  while read -r lib; do
    [[ -n "$lib" && -f "$lib" ]] || continue
    is_system_lib "$lib" && continue
    cp -L "$lib" "$bundle/lib/$(basename "$lib")"
  done < <(for b in "${bins[@]}"; do ldd "$b" | awk '/=> \// { print $3 }'; done | sort -u)
  # glibc of this machine, for hosts whose glibc is older than the one we built against.
  for lib in ld-linux-x86-64.so.2 libc.so.6 libm.so.6; do
    cp -L "/lib/x86_64-linux-gnu/$lib" "$bundle/lib/glibc/$lib"
  done
  cp "$root/bench/gpu/torch_reference.py" "$here/gpu_check.sh" "$bundle/"
  {
    echo "commit: $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m)"
    echo "glibc: $(ldd --version | head -1 | awk '{ print $NF }')"
    echo "cuda: $("${CMAKE_CUDA_COMPILER:-/usr/local/cuda/bin/nvcc}" --version | tail -1)"
    echo "archs: sm_80 sm_90; cudart linked statically (needs a driver for this CUDA version)"
    echo "runtime libraries taken from the GPU machine: libcuda (driver), libcublas(Lt) 12 or 13, libnccl >= 2.18"
  } > "$bundle/MANIFEST"
  ls -la "$bundle/bin" "$bundle/lib"
  tar -C "$bundle" -czf "$bundle/lib.tar.gz" lib
  rm -rf "$bundle/lib"
  local size; size=$(du -sb "$bundle" | awk '{ print $1 }')
  echo "bundle: $bundle, $((size / 1024 / 1024)) MiB ($size bytes)"
  (( size < max_bundle_bytes )) || die "bundle is $size bytes, over the 64 MiB limit"
}

# Library folders holding cuBLAS / NCCL / cudart on a GPU machine (toolkit, PyTorch wheels).
gpu_library_path() {
  local dirs=() d
  for d in "${CUDA_HOME:-/usr/local/cuda}/lib64" /usr/local/cuda/lib64 /usr/lib/x86_64-linux-gnu; do
    [[ -d "$d" ]] && dirs+=("$d")
  done
  if command -v python3 >/dev/null; then
    while read -r d; do [[ -d "$d" ]] && dirs+=("$d"); done < <(python3 - <<'EOF' 2>/dev/null
import importlib.util, os
for mod in ("nvidia.cublas", "nvidia.nccl", "nvidia.cuda_runtime", "torch"):
    try:
        spec = importlib.util.find_spec(mod)
    except (ImportError, ValueError):
        continue
    if spec and spec.submodule_search_locations:
        print(os.path.join(list(spec.submodule_search_locations)[0], "lib"))
EOF
)
  fi
  local IFS=:
  echo "${dirs[*]}"
}

version_lt() { [[ "$1" != "$2" && "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -1)" == "$1" ]]; }

run() {
  local bundle="$here"
  [[ -x "$bundle/bin/flexsp_bench_gpu" ]] || bundle="$(cd "$here/.." && pwd)/gpu-bundle"
  [[ -x "$bundle/bin/flexsp_bench_gpu" ]] || die "no bundle next to this script or in gpu-bundle/ (run 'build' first)"
  local results="${1:-$bundle/gpu-results.txt}"
  : > "$results"
  log() { echo "$*" | tee -a "$results"; }

  log "== flexsp GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  sed 's/^/   /' "$bundle/MANIFEST" | tee -a "$results"
  if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
    log "SKIPPED: no GPU on this machine (nvidia-smi $(command -v nvidia-smi >/dev/null && echo 'lists no device' || echo 'not found')); nothing was run"
    exit 77
  fi
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | sed 's/^/   GPU: /' | tee -a "$results"

  # The libraries travel packed; unpack them next to the results (or in a temporary folder).
  local libdir="$bundle/lib"
  if [[ ! -d "$libdir" ]]; then
    libdir="$(mktemp -d "${TMPDIR:-/tmp}/flexsp-gpu-lib.XXXXXX")/lib"
    tar -C "$(dirname "$libdir")" -xzf "$bundle/lib.tar.gz" || die "cannot unpack $bundle/lib.tar.gz"
  fi
  local libpath="$libdir:$(gpu_library_path)"
  local launcher=()
  local need have
  need="$(awk '/^glibc:/ { print $2 }' "$bundle/MANIFEST")"
  have="$(ldd --version 2>/dev/null | head -1 | awk '{ print $NF }')"
  if [[ -n "$need" && -n "$have" ]] && version_lt "$have" "$need"; then
    log "   host glibc $have < $need: running through the bundled loader"
    launcher=("$libdir/glibc/ld-linux-x86-64.so.2" --library-path "$libpath:$libdir/glibc")
  fi
  export LD_LIBRARY_PATH="$libpath${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

  local status=0
  # step TITLE SECONDS COMMAND...: runs one part under its time limit, output into the results.
  step() {
    local title="$1" limit="$2" rc; shift 2
    set +e
    timeout "$limit" "$@" 2>&1 | tee -a "$results"
    rc=${PIPESTATUS[0]}
    set -e
    (( rc == 0 )) || { log "$title FAILED (exit $rc)"; status=1; }
  }
  log ""
  log "== GPU tests (every kernel forward and backward against the CPU reference; NCCL one-rank)"
  step "GPU tests" 90 "${launcher[@]}" "$bundle/bin/flexsp_kernels_gpu_tests" --gtest_color=no
  log ""
  log "== Training on the GPU (a job on cuda:0 through the device actor, against the same job on the CPU)"
  step "GPU training tests" 60 "${launcher[@]}" "$bundle/bin/flexsp_training_gpu_tests" --gtest_color=no
  # With a GPU present a skipped GPU test means the GPU path is unusable (driver too old for
  # the bundled runtime, cuBLAS or NCCL not found): that is a failure of the check.
  if grep -q "SKIPPED \]" "$results"; then log "GPU tests SKIPPED on a GPU machine (reasons above)"; status=1; fi

  log ""
  log "== GPU benchmark"
  step "GPU benchmark" 220 "${launcher[@]}" "$bundle/bin/flexsp_bench_gpu" --json "$bundle/gpu_bench.jsonl"

  log ""
  log "== PyTorch on the same shapes"
  if [[ -s "$bundle/gpu_bench.jsonl" ]] && command -v python3 >/dev/null; then
    # PyTorch loads its own CUDA libraries; keep ours out of its way.
    step "PyTorch reference" 90 env -u LD_LIBRARY_PATH python3 "$bundle/torch_reference.py" "$bundle/gpu_bench.jsonl"
  else
    log "skipped: no benchmark results or no python3"
  fi
  log ""
  log "== result: $([[ $status == 0 ]] && echo PASSED || echo FAILED); written to $results"
  exit $status
}

case "$mode" in
  build) shift; build "$@" ;;
  run) shift; run "$@" ;;
  *) echo "usage: $0 build [BUNDLE_DIR] | run [RESULTS_FILE]" >&2; exit 2 ;;
esac
