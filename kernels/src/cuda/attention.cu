// Causal attention over packed variable-length sequences, flash-attention style: each block
// owns one tile of rows, streams the tiles of the other operand through shared memory and never
// materialises an L x L matrix. Same results as the CPU kernel in attention.cpp. Q, K, V, O and
// their gradients are fp32 or bf16 (element type T); tiles, scores and accumulators are fp32,
// and so are lse, delta and the dQ accumulator.
//
// Thread layout: 256 threads as 16 x 16 (ty, tx). A thread owns rows ty + 16*i (i < R) of its
// block's tile and, for the [tile, head_dim] accumulators, columns tx + 16*j (j < 8), so
// head_dim <= 128; for score tiles it owns columns tx + 16*j (j < R). The 16 threads of a row
// sit in one half-warp, so row reductions are four shuffles.
#include <cstdint>

#include "element.cuh"
#include "launch.hpp"

namespace flexsp::kernels::cuda {
namespace {

constexpr int kCols = 8;  // accumulator columns per thread: kAttentionMaxHeadDim / 16

__device__ __forceinline__ float half_warp_max(float v) {
  for (int off = 8; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
  return v;
}
__device__ __forceinline__ float half_warp_sum(float v) {
  for (int off = 8; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Copies rows [row0, row0 + rows) of one head into a padded shared tile of `tile` rows; rows
// past the sequence are zero.
template <class T>
__device__ __forceinline__ void load_tile(float* dst, const T* __restrict__ src, std::int64_t first_token,
                                          int rows, int tile, std::int64_t ld, int head_offset, int dh) {
  const int dp = dh + 1;
  for (int idx = threadIdx.x; idx < tile * dh; idx += blockDim.x) {
    const int r = idx / dh, e = idx - r * dh;
    dst[r * dp + e] = r < rows ? load_f32(src[(first_token + r) * ld + head_offset + e]) : 0.0f;
  }
}

template <int R, class Elem>
__global__ void __launch_bounds__(256) attention_forward_kernel(
    const Elem* __restrict__ q, const Elem* __restrict__ k, const Elem* __restrict__ v, Elem* __restrict__ out,
    float* __restrict__ lse, const std::int64_t* __restrict__ cu_seqlens, const std::int32_t* __restrict__ items,
    int heads, int dh, float scale) {
  constexpr int T = 16 * R;
  extern __shared__ float smem[];
  const int dp = dh + 1;
  float* qs = smem;         // [T, dp]
  float* ks = qs + T * dp;  // [T, dp]
  float* vs = ks + T * dp;  // [T, dp]
  float* ps = vs + T * dp;  // [T, T + 1]
  const int seq = items[2 * blockIdx.x], q0 = items[2 * blockIdx.x + 1];
  const int h = blockIdx.y;
  const std::int64_t base = cu_seqlens[seq];
  const int len = static_cast<int>(cu_seqlens[seq + 1] - base);
  const int bq = min(T, len - q0);
  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
  const std::int64_t ld = static_cast<std::int64_t>(heads) * dh;
  load_tile(qs, q, base + q0, bq, T, ld, h * dh, dh);

  float acc[R][kCols];
  float row_max[R], row_sum[R];
#pragma unroll
  for (int i = 0; i < R; ++i) {
    row_max[i] = -INFINITY;
    row_sum[i] = 0.0f;
#pragma unroll
    for (int j = 0; j < kCols; ++j) acc[i][j] = 0.0f;
  }

  for (int k0 = 0; k0 < q0 + bq; k0 += T) {
    const int bk = min(T, len - k0);
    __syncthreads();  // the previous tile's K, V and P are no longer read
    load_tile(ks, k, base + k0, bk, T, ld, h * dh, dh);
    load_tile(vs, v, base + k0, bk, T, ld, h * dh, dh);
    __syncthreads();
    float s[R][R];
#pragma unroll
    for (int i = 0; i < R; ++i)
#pragma unroll
      for (int j = 0; j < R; ++j) s[i][j] = 0.0f;
    for (int e = 0; e < dh; ++e) {
      float qv[R], kv[R];
#pragma unroll
      for (int i = 0; i < R; ++i) qv[i] = qs[(ty + 16 * i) * dp + e];
#pragma unroll
      for (int j = 0; j < R; ++j) kv[j] = ks[(tx + 16 * j) * dp + e];
#pragma unroll
      for (int i = 0; i < R; ++i)
#pragma unroll
        for (int j = 0; j < R; ++j) s[i][j] = fmaf(qv[i], kv[j], s[i][j]);
    }
#pragma unroll
    for (int i = 0; i < R; ++i) {
      const int r = ty + 16 * i;
      float mx = -INFINITY;
#pragma unroll
      for (int j = 0; j < R; ++j) {
        const int c = tx + 16 * j;
        const bool valid = r < bq && c < bk && k0 + c <= q0 + r;  // causal: key <= query
        s[i][j] = valid ? s[i][j] * scale : -INFINITY;
        mx = fmaxf(mx, s[i][j]);
      }
      mx = half_warp_max(mx);
      const float new_max = fmaxf(row_max[i], mx);
      // Rows past the sequence end stay at -inf; guard the (-inf) - (-inf) case.
      const float corr = new_max == -INFINITY ? 1.0f : expf(row_max[i] - new_max);
      float sum = 0.0f;
#pragma unroll
      for (int j = 0; j < R; ++j) {
        const float p = s[i][j] == -INFINITY ? 0.0f : expf(s[i][j] - new_max);
        ps[r * (T + 1) + tx + 16 * j] = p;
        sum += p;
      }
      sum = half_warp_sum(sum);
      row_sum[i] = row_sum[i] * corr + sum;
      row_max[i] = new_max;
#pragma unroll
      for (int j = 0; j < kCols; ++j) acc[i][j] *= corr;
    }
    __syncthreads();
    for (int c = 0; c < bk; ++c) {
      float p[R];
#pragma unroll
      for (int i = 0; i < R; ++i) p[i] = ps[(ty + 16 * i) * (T + 1) + c];
#pragma unroll
      for (int j = 0; j < kCols; ++j) {
        const int e = tx + 16 * j;
        if (e < dh) {
          const float vv = vs[c * dp + e];
#pragma unroll
          for (int i = 0; i < R; ++i) acc[i][j] = fmaf(p[i], vv, acc[i][j]);
        }
      }
    }
  }
#pragma unroll
  for (int i = 0; i < R; ++i) {
    const int r = ty + 16 * i;
    if (r >= bq) continue;
    const std::int64_t t = base + q0 + r;
    const float inv = 1.0f / row_sum[i];
#pragma unroll
    for (int j = 0; j < kCols; ++j) {
      const int e = tx + 16 * j;
      if (e < dh) out[t * ld + h * dh + e] = store_as<Elem>(acc[i][j] * inv);
    }
    if (tx == 0) lse[t * heads + h] = row_max[i] + logf(row_sum[i]);
  }
}

template <class T>
__global__ void row_dot_kernel(const T* __restrict__ out, const T* __restrict__ dout, float* __restrict__ delta,
                               std::int64_t rows, int dh) {
  const std::int64_t row = blockIdx.x * static_cast<std::int64_t>(blockDim.x >> 5) + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (row >= rows) return;
  float s = 0.0f;
  for (int e = lane; e < dh; e += 32) s += load_f32(out[row * dh + e]) * load_f32(dout[row * dh + e]);
  for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
  if (lane == 0) delta[row] = s;
}

// One block per (key tile, head): dK and dV of the tile stay in registers while the query
// tiles at or after it stream through; dQ is accumulated in global memory with atomics.
template <int R, class Elem>
__global__ void __launch_bounds__(256) attention_backward_kernel(
    const Elem* __restrict__ q, const Elem* __restrict__ k, const Elem* __restrict__ v,
    const float* __restrict__ lse, const float* __restrict__ delta, const Elem* __restrict__ dout,
    float* __restrict__ dq, Elem* __restrict__ dk, Elem* __restrict__ dv, const std::int64_t* __restrict__ cu_seqlens,
    const std::int32_t* __restrict__ items, int heads, int dh, float scale) {
  constexpr int T = 16 * R;
  extern __shared__ float smem[];
  const int dp = dh + 1;
  float* ks = smem;               // [T, dp]
  float* vs = ks + T * dp;        // [T, dp]
  float* qs = vs + T * dp;        // [T, dp]
  float* dos = qs + T * dp;       // [T, dp]
  float* ps = dos + T * dp;       // [T, T + 1]  P[query row, key col]
  float* dss = ps + T * (T + 1);  // [T, T + 1]  dS
  float* lse_s = dss + T * (T + 1);  // [T]
  float* delta_s = lse_s + T;        // [T]
  const int seq = items[2 * blockIdx.x], k0 = items[2 * blockIdx.x + 1];
  const int h = blockIdx.y;
  const std::int64_t base = cu_seqlens[seq];
  const int len = static_cast<int>(cu_seqlens[seq + 1] - base);
  const int bk = min(T, len - k0);
  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
  const std::int64_t ld = static_cast<std::int64_t>(heads) * dh;
  load_tile(ks, k, base + k0, bk, T, ld, h * dh, dh);
  load_tile(vs, v, base + k0, bk, T, ld, h * dh, dh);

  float dk_acc[R][kCols], dv_acc[R][kCols];
#pragma unroll
  for (int i = 0; i < R; ++i)
#pragma unroll
    for (int j = 0; j < kCols; ++j) dk_acc[i][j] = dv_acc[i][j] = 0.0f;

  // Query tiles are aligned to the same tile size, so the first one that sees this key tile
  // starts at k0.
  for (int q0 = k0; q0 < len; q0 += T) {
    const int bq = min(T, len - q0);
    __syncthreads();
    load_tile(qs, q, base + q0, bq, T, ld, h * dh, dh);
    load_tile(dos, dout, base + q0, bq, T, ld, h * dh, dh);
    for (int r = threadIdx.x; r < T; r += blockDim.x) {
      lse_s[r] = r < bq ? lse[(base + q0 + r) * heads + h] : 0.0f;
      delta_s[r] = r < bq ? delta[(base + q0 + r) * heads + h] : 0.0f;
    }
    __syncthreads();
    float s[R][R], dpv[R][R];
#pragma unroll
    for (int i = 0; i < R; ++i)
#pragma unroll
      for (int j = 0; j < R; ++j) s[i][j] = dpv[i][j] = 0.0f;
    for (int e = 0; e < dh; ++e) {
      float qv[R], gv[R], kv[R], vv[R];
#pragma unroll
      for (int i = 0; i < R; ++i) {
        qv[i] = qs[(ty + 16 * i) * dp + e];
        gv[i] = dos[(ty + 16 * i) * dp + e];
      }
#pragma unroll
      for (int j = 0; j < R; ++j) {
        kv[j] = ks[(tx + 16 * j) * dp + e];
        vv[j] = vs[(tx + 16 * j) * dp + e];
      }
#pragma unroll
      for (int i = 0; i < R; ++i)
#pragma unroll
        for (int j = 0; j < R; ++j) {
          s[i][j] = fmaf(qv[i], kv[j], s[i][j]);
          dpv[i][j] = fmaf(gv[i], vv[j], dpv[i][j]);
        }
    }
#pragma unroll
    for (int i = 0; i < R; ++i) {
      const int r = ty + 16 * i;
#pragma unroll
      for (int j = 0; j < R; ++j) {
        const int c = tx + 16 * j;
        const bool valid = r < bq && c < bk && k0 + c <= q0 + r;
        const float p = valid ? expf(s[i][j] * scale - lse_s[r]) : 0.0f;
        ps[r * (T + 1) + c] = p;
        dss[r * (T + 1) + c] = p * (dpv[i][j] - delta_s[r]);
      }
    }
    __syncthreads();
    // dV[c] += sum_r P[r, c] dO[r];  dK[c] += sum_r dS[r, c] Q[r]   (scale applied at the end)
    for (int r = 0; r < bq; ++r) {
      float pc[R], dc[R];
#pragma unroll
      for (int i = 0; i < R; ++i) {
        pc[i] = ps[r * (T + 1) + ty + 16 * i];
        dc[i] = dss[r * (T + 1) + ty + 16 * i];
      }
#pragma unroll
      for (int j = 0; j < kCols; ++j) {
        const int e = tx + 16 * j;
        if (e < dh) {
          const float g = dos[r * dp + e], qq = qs[r * dp + e];
#pragma unroll
          for (int i = 0; i < R; ++i) {
            dv_acc[i][j] = fmaf(pc[i], g, dv_acc[i][j]);
            dk_acc[i][j] = fmaf(dc[i], qq, dk_acc[i][j]);
          }
        }
      }
    }
    // dQ[r] += scale sum_c dS[r, c] K[c]
#pragma unroll
    for (int i = 0; i < R; ++i) {
      const int r = ty + 16 * i;
      if (r >= bq) continue;
      float part[kCols];
#pragma unroll
      for (int j = 0; j < kCols; ++j) part[j] = 0.0f;
      for (int c = 0; c < bk; ++c) {
        const float d = dss[r * (T + 1) + c];
#pragma unroll
        for (int j = 0; j < kCols; ++j) {
          const int e = tx + 16 * j;
          if (e < dh) part[j] = fmaf(d, ks[c * dp + e], part[j]);
        }
      }
      const std::int64_t t = base + q0 + r;
#pragma unroll
      for (int j = 0; j < kCols; ++j) {
        const int e = tx + 16 * j;
        if (e < dh) atomicAdd(dq + t * ld + h * dh + e, scale * part[j]);
      }
    }
  }
#pragma unroll
  for (int i = 0; i < R; ++i) {
    const int c = ty + 16 * i;
    if (c >= bk) continue;
    const std::int64_t t = base + k0 + c;
#pragma unroll
    for (int j = 0; j < kCols; ++j) {
      const int e = tx + 16 * j;
      if (e < dh) {
        dk[t * ld + h * dh + e] = store_as<Elem>(scale * dk_acc[i][j]);
        dv[t * ld + h * dh + e] = store_as<Elem>(dv_acc[i][j]);
      }
    }
  }
}

constexpr int kForwardR = kAttentionForwardTile / 16;
constexpr int kBackwardR = kAttentionBackwardTile / 16;
static_assert(kForwardR * 16 == kAttentionForwardTile && kBackwardR * 16 == kAttentionBackwardTile);
static_assert(kCols * 16 == kAttentionMaxHeadDim);

}  // namespace

std::size_t attention_forward_smem(int head_dim) {
  constexpr std::size_t T = kAttentionForwardTile;
  return sizeof(float) * (3 * T * static_cast<std::size_t>(head_dim + 1) + T * (T + 1));
}

std::size_t attention_backward_smem(int head_dim) {
  constexpr std::size_t T = kAttentionBackwardTile;
  return sizeof(float) * (4 * T * static_cast<std::size_t>(head_dim + 1) + 2 * T * (T + 1) + 2 * T);
}

namespace {

template <class T>
cudaError_t attention_forward(const T* q, const T* k, const T* v, T* out, float* lse, const std::int64_t* cu_seqlens,
                              const std::int32_t* items, int item_count, int heads, int head_dim, cudaStream_t stream) {
  if (item_count == 0 || heads == 0) return cudaSuccess;
  const auto smem = attention_forward_smem(head_dim);
  auto kernel = attention_forward_kernel<kForwardR, T>;
  if (const auto rc = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
      rc != cudaSuccess)
    return rc;
  const float scale = 1.0f / sqrtf(static_cast<float>(head_dim));
  kernel<<<dim3(static_cast<unsigned>(item_count), static_cast<unsigned>(heads)), 256, smem, stream>>>(
      q, k, v, out, lse, cu_seqlens, items, heads, head_dim, scale);
  return cudaGetLastError();
}

template <class T>
cudaError_t attention_row_dot(const T* out, const T* dout, float* delta, std::int64_t tokens, int heads, int head_dim,
                              cudaStream_t stream) {
  const std::int64_t rows = tokens * heads;
  if (rows == 0) return cudaSuccess;
  row_dot_kernel<T><<<static_cast<unsigned>((rows + 7) / 8), 256, 0, stream>>>(out, dout, delta, rows, head_dim);
  return cudaGetLastError();
}

template <class T>
cudaError_t attention_backward(const T* q, const T* k, const T* v, const float* lse, const float* delta,
                               const T* dout, float* dq, T* dk, T* dv, const std::int64_t* cu_seqlens,
                               const std::int32_t* items, int item_count, int heads, int head_dim, cudaStream_t stream) {
  if (item_count == 0 || heads == 0) return cudaSuccess;
  const auto smem = attention_backward_smem(head_dim);
  auto kernel = attention_backward_kernel<kBackwardR, T>;
  if (const auto rc = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
      rc != cudaSuccess)
    return rc;
  const float scale = 1.0f / sqrtf(static_cast<float>(head_dim));
  kernel<<<dim3(static_cast<unsigned>(item_count), static_cast<unsigned>(heads)), 256, smem, stream>>>(
      q, k, v, lse, delta, dout, dq, dk, dv, cu_seqlens, items, heads, head_dim, scale);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_attention_forward(const float* q, const float* k, const float* v, float* out, float* lse,
                                     const std::int64_t* cu_seqlens, const std::int32_t* items, int item_count,
                                     int heads, int head_dim, cudaStream_t stream) {
  return attention_forward(q, k, v, out, lse, cu_seqlens, items, item_count, heads, head_dim, stream);
}
cudaError_t launch_attention_forward(const std::uint16_t* q, const std::uint16_t* k, const std::uint16_t* v,
                                     std::uint16_t* out, float* lse, const std::int64_t* cu_seqlens,
                                     const std::int32_t* items, int item_count, int heads, int head_dim,
                                     cudaStream_t stream) {
  return attention_forward(q, k, v, out, lse, cu_seqlens, items, item_count, heads, head_dim, stream);
}

cudaError_t launch_attention_row_dot(const float* out, const float* dout, float* delta, std::int64_t tokens, int heads,
                                     int head_dim, cudaStream_t stream) {
  return attention_row_dot(out, dout, delta, tokens, heads, head_dim, stream);
}
cudaError_t launch_attention_row_dot(const std::uint16_t* out, const std::uint16_t* dout, float* delta,
                                     std::int64_t tokens, int heads, int head_dim, cudaStream_t stream) {
  return attention_row_dot(out, dout, delta, tokens, heads, head_dim, stream);
}

cudaError_t launch_attention_backward(const float* q, const float* k, const float* v, const float* lse,
                                      const float* delta, const float* dout, float* dq, float* dk, float* dv,
                                      const std::int64_t* cu_seqlens, const std::int32_t* items, int item_count,
                                      int heads, int head_dim, cudaStream_t stream) {
  return attention_backward(q, k, v, lse, delta, dout, dq, dk, dv, cu_seqlens, items, item_count, heads, head_dim,
                            stream);
}
cudaError_t launch_attention_backward(const std::uint16_t* q, const std::uint16_t* k, const std::uint16_t* v,
                                      const float* lse, const float* delta, const std::uint16_t* dout, float* dq,
                                      std::uint16_t* dk, std::uint16_t* dv, const std::int64_t* cu_seqlens,
                                      const std::int32_t* items, int item_count, int heads, int head_dim,
                                      cudaStream_t stream) {
  return attention_backward(q, k, v, lse, delta, dout, dq, dk, dv, cu_seqlens, items, item_count, heads, head_dim,
                            stream);
}

}  // namespace flexsp::kernels::cuda
