#pragma once
// CPU emulation of the CUDA C++ the kernels of kernels/src/cuda/*.cu use: every CUDA thread of a
// block is a std::thread (so __syncthreads and warp shuffles behave), blocks run one after
// another, static __shared__ arrays are plain statics (hence one block at a time process-wide),
// dynamic shared memory is a per-block buffer. Included first by the C++ that cu2cpp.py makes of
// a .cu file. Slow (a thread per CUDA thread) and only for checking results.
#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>
#include <cuda_runtime_api.h>
template <class T> cudaError_t cudaFuncSetAttribute(T* f, cudaFuncAttribute a, int v) { return ::cudaFuncSetAttribute(reinterpret_cast<const void*>(f), a, v); }
inline thread_local uint3 threadIdx, blockIdx;
inline thread_local dim3 blockDim, gridDim;
namespace emu {
struct warp { std::uint64_t slot[32]; std::unique_ptr<std::barrier<>> bar; };
inline thread_local std::barrier<>* block_bar;
inline thread_local warp* warps;
inline thread_local char* dyn_smem;
template <class K, class... A>
void launch(K kernel, dim3 grid, dim3 block, std::size_t smem, cudaStream_t, A... args) {
  static std::mutex serial;  // static __shared__ arrays: one block at a time process-wide
  std::lock_guard lock{serial};
  const unsigned nt = block.x * block.y;
  for (unsigned by = 0; by < grid.y; ++by)
    for (unsigned bx = 0; bx < grid.x; ++bx) {
      std::barrier<> bar(nt);
      std::vector<warp> ws((nt + 31) / 32);
      for (auto& w : ws) w.bar = std::make_unique<std::barrier<>>(std::min(32u, nt));
      std::vector<char> sm(smem + 16);
      std::vector<std::thread> th;
      for (unsigned t = 0; t < nt; ++t)
        th.emplace_back([&, t] {
          threadIdx = {t % block.x, t / block.x, 0};
          blockIdx = {bx, by, 0};
          blockDim = block;
          gridDim = grid;
          block_bar = &bar;
          warps = ws.data();
          dyn_smem = sm.data();
          kernel(args...);
        });
      for (auto& x : th) x.join();
    }
}
}  // namespace emu
inline void __syncthreads() { emu::block_bar->arrive_and_wait(); }
template <class T>
T __shfl_xor_sync(unsigned, T v, int off) {
  const unsigned lin = threadIdx.x + threadIdx.y * blockDim.x;
  auto& w = emu::warps[lin >> 5];
  std::uint64_t b = 0;
  std::memcpy(&b, &v, sizeof v);
  w.slot[lin & 31] = b;
  w.bar->arrive_and_wait();
  T r;
  std::uint64_t o = w.slot[(lin & 31) ^ off];
  std::memcpy(&r, &o, sizeof r);
  w.bar->arrive_and_wait();
  return r;
}
inline float atomicAdd(float* p, float v) { return std::atomic_ref<float>(*p).fetch_add(v); }
inline double atomicAdd(double* p, double v) { return std::atomic_ref<double>(*p).fetch_add(v); }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) { return std::atomic_ref<unsigned long long>(*p).fetch_add(v); }
inline int atomicMin(std::int32_t* p, std::int32_t v) {
  std::atomic_ref<std::int32_t> a(*p);
  int cur = a.load();
  while (v < cur && !a.compare_exchange_weak(cur, v)) {}
  return cur;
}
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline std::uint32_t __float_as_uint(float f) { std::uint32_t u; std::memcpy(&u, &f, 4); return u; }
inline float __uint_as_float(std::uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
using std::min; using std::max;
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(x)
#define __shared__ static
