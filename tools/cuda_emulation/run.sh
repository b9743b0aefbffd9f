#!/usr/bin/env bash
# Runs the GPU code on the CPU, for checking it on a machine without a GPU.
#
#   tools/cuda_emulation/run.sh [--build-dir DIR] [kernels|training|all] [-- GTEST_ARGS...]
#
# The CUDA kernels (kernels/src/cuda/*.cu) are turned into C++ by cu2cpp.py and compiled against
# emu_kernel.hpp (one std::thread per CUDA thread); the CUDA runtime, cuBLAS and NCCL are replaced
# by host-memory stand-ins (fake_cudart.cpp; fake_cublas.cpp over OpenBLAS; fake_nccl.cpp, ranks
# as threads of one process). The host side of the
# CUDA backend (kernels/src/cuda/*.cpp) is the real one, taken from a CUDA-on build (default
# build/, as scripts/test.sh makes it). Then:
#   kernels   the GPU kernel tests (tests/gpu/kernels_gpu_test.cpp and friends) against the CPU
#             reference, and the NCCL tests on 4 emulated GPUs (fake_nccl.cpp); a few minutes.
#   training  training_check.cpp: jobs on emulated GPU device actors, with Gloo and with NCCL
#             collectives, against the same jobs on CPU devices; about a minute.
# Exit status 0 when everything run passed. Results say nothing about speed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
build="$root/build"
what=all
gtest=()
die() { echo "cuda_emulation: $*" >&2; exit 2; }

while (($#)); do
  case "$1" in
    --build-dir) build="$(cd "$2" && pwd)"; shift 2 ;;
    kernels|training|all) what="$1"; shift ;;
    --) shift; gtest=("$@"); break ;;
    -h|--help) sed -n '2,18p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

[[ -f "$build/build.ninja" ]] || die "no Ninja build in $build (configure one with scripts/test.sh)"
ninja -C "$build" -t targets all 2>/dev/null | grep -q '^flexsp_kernels_cuda:' ||
  die "$build has no CUDA backend (configure with -DFLEXSP_ENABLE_CUDA=ON)"
cuda_include="$(sed -n 's/^CUDAToolkit_INCLUDE_DIR:[A-Z]*=//p' "$build/CMakeCache.txt")"
[[ -d "$cuda_include" ]] || cuda_include=/usr/local/cuda/include

echo "== building the GPU tests in $build"
ninja -C "$build" flexsp_kernels_gpu_tests flexsp_training_gpu_tests >/dev/null

out="$build/cuda-emulation"
mkdir -p "$out"
cxx=(g++ -std=c++20 -O2 -w)
echo "== compiling the kernels for the CPU emulation into $out"
emu_objects=()
for cu in "$root"/kernels/src/cuda/*.cu; do
  name="$(basename "$cu" .cu)"
  python3 "$here/cu2cpp.py" "$cu" "$out/${name}_emu.cpp"
  "${cxx[@]}" -I"$here" -I"$root/kernels/src/cuda" -I"$root/kernels/src" -I"$root/kernels/include" \
    -I"$root/core/include" -isystem "$cuda_include" -c "$out/${name}_emu.cpp" -o "$out/${name}_emu.o"
  emu_objects+=("$out/${name}_emu.o")
done
"${cxx[@]}" -isystem "$cuda_include" -c "$here/fake_cudart.cpp" -o "$out/fake_cudart.o"
"${cxx[@]}" -shared -fPIC -isystem "$cuda_include" "$here/fake_cublas.cpp" -o "$out/libcublas.so.13" -lopenblas
"${cxx[@]}" -shared -fPIC -isystem "$cuda_include" "$here/fake_nccl.cpp" -o "$out/libnccl.so.2" -pthread
host_objects=("$build"/kernels/CMakeFiles/flexsp_kernels_cuda.dir/src/cuda/*.cpp.o)
replacement="${host_objects[*]} ${emu_objects[*]} $out/fake_cudart.o"

# The link command of `target` with the CUDA library swapped for the emulation, writing `binary`;
# `swap_from`/`swap_to` optionally replace one object.
relink() {
  local target="$1" binary="$2" swap_from="${3:-}" swap_to="${4:-}" cmd
  cmd="$(ninja -C "$build" -t commands "$target" | tail -1)"
  cmd="${cmd//kernels\/libflexsp_kernels_cuda.a/$replacement}"
  cmd="$(sed -E 's#[^ ]*libcudart_static\.a##g; s#-o [^ ]+#-o '"$binary"'#' <<<"$cmd")"
  [[ -n "$swap_from" ]] && cmd="${cmd//$swap_from/$swap_to}"
  (cd "$build" && eval "$cmd")
}

status=0
export LD_LIBRARY_PATH="$out${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if [[ "$what" == kernels || "$what" == all ]]; then
  relink tests/flexsp_kernels_gpu_tests "$out/kernels_gpu_tests"
  echo "== GPU kernel tests under emulation (4 GPUs for the NCCL groups)"
  FLEXSP_EMU_GPUS=4 "$out/kernels_gpu_tests" "${gtest[@]}" || status=1
fi
if [[ "$what" == training || "$what" == all ]]; then
  test_object="tests/CMakeFiles/flexsp_training_gpu_tests.dir/gpu/training_gpu_test.cpp.o"
  compile="$(ninja -C "$build" -t commands "$test_object" | tail -1)"
  compile="$(sed -E 's# -MD -MT [^ ]+ -MF [^ ]+##; s#-o [^ ]+#-o '"$out/training_check.o"'#; s#-c [^ ]+#-c '"$here/training_check.cpp"'#' <<<"$compile")"
  (cd "$build" && eval "$compile")
  relink tests/flexsp_training_gpu_tests "$out/training_check" "$test_object" "$out/training_check.o"
  echo "== training on emulated GPU device actors"
  FLEXSP_EMU_GPUS=4 "$out/training_check" || status=1
fi
echo "== cuda emulation: $([[ $status == 0 ]] && echo PASSED || echo FAILED)"
exit $status
