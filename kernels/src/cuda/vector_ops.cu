// Element-wise, row and reduction kernels of the GPT model (everything but GEMM and attention).
// Arithmetic follows the CPU kernels in ops.cpp.
#include <algorithm>
#include <climits>
#include <cstdint>

#include "element.cuh"
#include "fingerprint_mix.hpp"
#include "launch.hpp"

namespace flexsp::kernels::cuda {
namespace {

constexpr unsigned kThreads = 256;
constexpr float kGeluC = 0.7978845608028654f;  // sqrt(2 / pi)

// A grid-stride loop covers huge inputs; the grid is capped.
unsigned blocks_for(std::size_t n) {
  return static_cast<unsigned>(std::max<std::size_t>(1, std::min<std::size_t>((n + kThreads - 1) / kThreads, 8192)));
}

#define FLEXSP_GRID_STRIDE(i, n)                                                                    \
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < (n); \
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x)

template <class T>
__device__ T warp_sum(T v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}
__device__ float warp_max(float v) {
  for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
  return v;
}
// Block-wide sum for blocks of kThreads; every thread gets the result.
template <class T>
__device__ T block_sum(T v, T* scratch /* [32] */) {
  v = warp_sum(v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  T total = 0;
  for (int w = 0; w < static_cast<int>(blockDim.x >> 5); ++w) total += scratch[w];
  return total;
}
__device__ float block_max(float v, float* scratch) {
  v = warp_max(v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float m = -INFINITY;
  for (int w = 0; w < static_cast<int>(blockDim.x >> 5); ++w) m = fmaxf(m, scratch[w]);
  return m;
}

__global__ void axpy_kernel(float a, const float* __restrict__ x, float* __restrict__ y, std::size_t n) {
  FLEXSP_GRID_STRIDE(i, n) y[i] += a * x[i];
}
__global__ void scale_kernel(float* x, float f, std::size_t n) {
  FLEXSP_GRID_STRIDE(i, n) x[i] *= f;
}
__global__ void add_kernel(const float* a, const float* b, float* out, std::size_t n) {
  FLEXSP_GRID_STRIDE(i, n) out[i] = a[i] + b[i];
}
__global__ void accumulate2_kernel(const float* __restrict__ g, float* __restrict__ da, float* __restrict__ db,
                                   std::size_t n) {
  FLEXSP_GRID_STRIDE(i, n) {
    da[i] += g[i];
    db[i] += g[i];
  }
}
__global__ void broadcast_rows_kernel(const float* __restrict__ b, float* __restrict__ y, std::size_t total,
                                      std::int64_t cols) {
  FLEXSP_GRID_STRIDE(i, total) y[i] = b[static_cast<std::int64_t>(i) % cols];
}

// Column sums: blocks of 32 columns x 8 row lanes; each block reduces a band of rows and adds
// its partial sum with one atomic per column (gridDim.y atomics per column in total).
__global__ void column_sums_kernel(const float* __restrict__ x, float* __restrict__ out, std::int64_t rows,
                                   std::int64_t cols) {
  __shared__ float part[8][33];
  const std::int64_t c = blockIdx.x * 32 + threadIdx.x;
  float s = 0.0f;
  if (c < cols)
    for (std::int64_t r = blockIdx.y * 8 + threadIdx.y; r < rows; r += gridDim.y * 8) s += x[r * cols + c];
  part[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && c < cols) {
    float t = 0.0f;
    for (int k = 0; k < 8; ++k) t += part[k][threadIdx.x];
    atomicAdd(out + c, t);
  }
}

// LayerNorm parameter gradients: dgamma[c] += sum_r dy*xhat, dbeta[c] += sum_r dy.
__global__ void layernorm_param_grads_kernel(const float* __restrict__ dy, const float* __restrict__ x,
                                             const float* __restrict__ mean, const float* __restrict__ rstd,
                                             float* __restrict__ dgamma, float* __restrict__ dbeta, std::int64_t rows,
                                             std::int64_t cols) {
  __shared__ float pg[8][33], pb[8][33];
  const std::int64_t c = blockIdx.x * 32 + threadIdx.x;
  float sg = 0.0f, sb = 0.0f;
  if (c < cols)
    for (std::int64_t r = blockIdx.y * 8 + threadIdx.y; r < rows; r += gridDim.y * 8) {
      const float g = dy[r * cols + c];
      sg += g * (x[r * cols + c] - mean[r]) * rstd[r];
      sb += g;
    }
  pg[threadIdx.y][threadIdx.x] = sg;
  pb[threadIdx.y][threadIdx.x] = sb;
  __syncthreads();
  if (threadIdx.y == 0 && c < cols) {
    float tg = 0.0f, tb = 0.0f;
    for (int k = 0; k < 8; ++k) {
      tg += pg[k][threadIdx.x];
      tb += pb[k][threadIdx.x];
    }
    atomicAdd(dgamma + c, tg);
    atomicAdd(dbeta + c, tb);
  }
}

dim3 column_grid(std::int64_t rows, std::int64_t cols) {
  const auto gx = static_cast<unsigned>((cols + 31) / 32);
  const auto gy = static_cast<unsigned>(std::clamp<std::int64_t>((rows + 63) / 64, 1, 256));
  return dim3{gx, gy};
}

__global__ void embedding_forward_kernel(const std::int32_t* __restrict__ tokens,
                                         const std::int32_t* __restrict__ positions, const float* __restrict__ wte,
                                         const float* __restrict__ wpe, float* __restrict__ out, std::int64_t n,
                                         std::int64_t d, std::int64_t vocab, std::int64_t max_pos,
                                         std::int32_t* bad_index) {
  for (std::int64_t t = blockIdx.x; t < n; t += gridDim.x) {
    const std::int32_t tok = tokens[t], pos = positions[t];
    if (tok < 0 || tok >= vocab || pos < 0 || pos >= max_pos) {
      if (threadIdx.x == 0) atomicMin(bad_index, static_cast<std::int32_t>(t));
      continue;
    }
    for (std::int64_t i = threadIdx.x; i < d; i += blockDim.x)
      out[t * d + i] = wte[tok * d + i] + (wpe != nullptr ? wpe[pos * d + i] : 0.0f);
  }
}

__global__ void embedding_backward_kernel(const std::int32_t* __restrict__ tokens,
                                          const std::int32_t* __restrict__ positions, const float* __restrict__ dout,
                                          float* dwte, float* dwpe, std::int64_t n, std::int64_t d) {
  for (std::int64_t t = blockIdx.x; t < n; t += gridDim.x) {
    const std::int64_t tok = tokens[t], pos = positions[t];
    for (std::int64_t i = threadIdx.x; i < d; i += blockDim.x) {
      const float g = dout[t * d + i];
      atomicAdd(dwte + tok * d + i, g);
      if (dwpe != nullptr) atomicAdd(dwpe + pos * d + i, g);
    }
  }
}

// One warp per row: two passes (mean, then centred variance) like the CPU kernel.
__global__ void layernorm_forward_kernel(const float* __restrict__ x, const float* __restrict__ gamma,
                                         const float* __restrict__ beta, float* __restrict__ y,
                                         float* __restrict__ mean, float* __restrict__ rstd, std::int64_t n,
                                         std::int64_t d, float eps) {
  const std::int64_t row = blockIdx.x * static_cast<std::int64_t>(blockDim.x >> 5) + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (row >= n) return;
  const float* xr = x + row * d;
  float s = 0.0f;
  for (std::int64_t i = lane; i < d; i += 32) s += xr[i];
  const float mu = warp_sum(s) / static_cast<float>(d);
  float v = 0.0f;
  for (std::int64_t i = lane; i < d; i += 32) v += (xr[i] - mu) * (xr[i] - mu);
  const float rs = rsqrtf(warp_sum(v) / static_cast<float>(d) + eps);
  float* yr = y + row * d;
  for (std::int64_t i = lane; i < d; i += 32) yr[i] = (xr[i] - mu) * rs * gamma[i] + beta[i];
  if (lane == 0) {
    mean[row] = mu;
    rstd[row] = rs;
  }
}

__global__ void layernorm_backward_kernel(const float* __restrict__ dy, const float* __restrict__ x,
                                          const float* __restrict__ gamma, const float* __restrict__ mean,
                                          const float* __restrict__ rstd, float* __restrict__ dx, std::int64_t n,
                                          std::int64_t d) {
  const std::int64_t row = blockIdx.x * static_cast<std::int64_t>(blockDim.x >> 5) + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (row >= n) return;
  const float* xr = x + row * d;
  const float* gr = dy + row * d;
  const float m = mean[row], rs = rstd[row];
  float sg = 0.0f, sgx = 0.0f;
  for (std::int64_t i = lane; i < d; i += 32) {
    const float g = gr[i] * gamma[i];
    sg += g;
    sgx += g * (xr[i] - m) * rs;
  }
  const float mg = warp_sum(sg) / static_cast<float>(d);
  const float mgx = warp_sum(sgx) / static_cast<float>(d);
  float* dxr = dx + row * d;
  for (std::int64_t i = lane; i < d; i += 32) dxr[i] = rs * (gr[i] * gamma[i] - mg - (xr[i] - m) * rs * mgx);
}

// RMSNorm, one warp per row.
__global__ void rmsnorm_forward_kernel(const float* __restrict__ x, const float* __restrict__ gamma,
                                       float* __restrict__ y, float* __restrict__ rstd, std::int64_t n, std::int64_t d,
                                       float eps) {
  const std::int64_t row = blockIdx.x * static_cast<std::int64_t>(blockDim.x >> 5) + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (row >= n) return;
  const float* xr = x + row * d;
  float s = 0.0f;
  for (std::int64_t i = lane; i < d; i += 32) s += xr[i] * xr[i];
  const float rs = rsqrtf(warp_sum(s) / static_cast<float>(d) + eps);
  float* yr = y + row * d;
  for (std::int64_t i = lane; i < d; i += 32) yr[i] = xr[i] * rs * gamma[i];
  if (lane == 0) rstd[row] = rs;
}

__global__ void rmsnorm_backward_kernel(const float* __restrict__ dy, const float* __restrict__ x,
                                        const float* __restrict__ gamma, const float* __restrict__ rstd,
                                        float* __restrict__ dx, std::int64_t n, std::int64_t d) {
  const std::int64_t row = blockIdx.x * static_cast<std::int64_t>(blockDim.x >> 5) + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (row >= n) return;
  const float* xr = x + row * d;
  const float* gr = dy + row * d;
  const float rs = rstd[row];
  float dot = 0.0f;
  for (std::int64_t i = lane; i < d; i += 32) dot += gr[i] * gamma[i] * xr[i];
  const float m = warp_sum(dot) / static_cast<float>(d);
  float* dxr = dx + row * d;
  for (std::int64_t i = lane; i < d; i += 32) dxr[i] = rs * (gr[i] * gamma[i] - xr[i] * rs * rs * m);
}

// RMSNorm gain gradient: dgamma[c] += sum_r dy * x * rstd.
__global__ void rmsnorm_gain_grads_kernel(const float* __restrict__ dy, const float* __restrict__ x,
                                          const float* __restrict__ rstd, float* __restrict__ dgamma, std::int64_t rows,
                                          std::int64_t cols) {
  __shared__ float pg[8][33];
  const std::int64_t c = blockIdx.x * 32 + threadIdx.x;
  float sg = 0.0f;
  if (c < cols)
    for (std::int64_t r = blockIdx.y * 8 + threadIdx.y; r < rows; r += gridDim.y * 8)
      sg += dy[r * cols + c] * x[r * cols + c] * rstd[r];
  pg[threadIdx.y][threadIdx.x] = sg;
  __syncthreads();
  if (threadIdx.y == 0 && c < cols) {
    float tg = 0.0f;
    for (int k = 0; k < 8; ++k) tg += pg[k][threadIdx.x];
    atomicAdd(dgamma + c, tg);
  }
}

// Rotary embedding: one thread per (row, head, pair).
__global__ void rope_kernel(float* __restrict__ x, const std::int32_t* __restrict__ positions, std::int64_t n,
                            std::int64_t heads, std::int64_t row_stride, std::int64_t head_dim, float theta,
                            float sign, std::size_t total) {
  const std::int64_t half = head_dim / 2;
  FLEXSP_GRID_STRIDE(k, total) {
    const std::int64_t i = static_cast<std::int64_t>(k) % half;
    const std::int64_t h = (static_cast<std::int64_t>(k) / half) % heads;
    const std::int64_t t = static_cast<std::int64_t>(k) / (half * heads);
    const float inv_freq = 1.0f / powf(theta, static_cast<float>(2 * i) / static_cast<float>(head_dim));
    const float angle = static_cast<float>(positions[t]) * inv_freq;
    const float c = cosf(angle), sn = sign * sinf(angle);
    float* v = x + t * row_stride + h * head_dim;
    const float a = v[i], b = v[i + half];
    v[i] = a * c - b * sn;
    v[i + half] = b * c + a * sn;
  }
}

__global__ void swiglu_forward_kernel(const float* __restrict__ gate_up, float* __restrict__ y, std::int64_t f,
                                      std::size_t total) {
  FLEXSP_GRID_STRIDE(k, total) {
    const std::int64_t r = static_cast<std::int64_t>(k) / f, i = static_cast<std::int64_t>(k) % f;
    const float g = gate_up[r * 2 * f + i], u = gate_up[r * 2 * f + f + i];
    const float s = 1.0f / (1.0f + expf(-g));
    y[k] = g * s * u;
  }
}

__global__ void swiglu_backward_kernel(const float* __restrict__ dy, const float* __restrict__ gate_up,
                                       float* __restrict__ dgate_up, std::int64_t f, std::size_t total) {
  FLEXSP_GRID_STRIDE(k, total) {
    const std::int64_t r = static_cast<std::int64_t>(k) / f, i = static_cast<std::int64_t>(k) % f;
    const float g = gate_up[r * 2 * f + i], u = gate_up[r * 2 * f + f + i];
    const float s = 1.0f / (1.0f + expf(-g));
    const float d = dy[k];
    dgate_up[r * 2 * f + f + i] = d * g * s;
    dgate_up[r * 2 * f + i] = d * u * s * (1.0f + g * (1.0f - s));
  }
}

__global__ void gelu_forward_kernel(const float* __restrict__ x, float* __restrict__ y, std::size_t n) {
  FLEXSP_GRID_STRIDE(i, n) {
    const float v = x[i];
    y[i] = 0.5f * v * (1.0f + tanhf(kGeluC * (v + 0.044715f * v * v * v)));
  }
}

__global__ void gelu_backward_kernel(const float* __restrict__ dy, const float* __restrict__ x, float* __restrict__ dx,
                                     std::size_t n) {
  FLEXSP_GRID_STRIDE(i, n) {
    const float v = x[i];
    const float th = tanhf(kGeluC * (v + 0.044715f * v * v * v));
    const float du = kGeluC * (1.0f + 3.0f * 0.044715f * v * v);
    dx[i] = dy[i] * (0.5f * (1.0f + th) + 0.5f * v * (1.0f - th * th) * du);
  }
}

// One block per row: max, sum of exponentials, loss and (optionally) the gradient row.
__global__ void cross_entropy_kernel(const float* __restrict__ logits, const std::int32_t* __restrict__ targets,
                                     float* __restrict__ dlogits, std::int64_t n, std::int64_t vocab, float scale,
                                     double* loss_sum, std::int32_t* bad_index) {
  __shared__ float fscratch[32];
  __shared__ double dscratch[32];
  for (std::int64_t r = blockIdx.x; r < n; r += gridDim.x) {
    const std::int32_t tgt = targets[r];
    if (tgt < 0 || tgt >= vocab) {
      if (threadIdx.x == 0) atomicMin(bad_index, static_cast<std::int32_t>(r));
      continue;
    }
    const float* l = logits + r * vocab;
    float mx = -INFINITY;
    for (std::int64_t j = threadIdx.x; j < vocab; j += blockDim.x) mx = fmaxf(mx, l[j]);
    mx = block_max(mx, fscratch);
    double s = 0.0;
    for (std::int64_t j = threadIdx.x; j < vocab; j += blockDim.x) s += exp(static_cast<double>(l[j] - mx));
    s = block_sum(s, dscratch);
    const double lse = mx + log(s);
    if (threadIdx.x == 0) atomicAdd(loss_sum, lse - l[tgt]);
    if (dlogits != nullptr) {
      float* g = dlogits + r * vocab;
      for (std::int64_t j = threadIdx.x; j < vocab; j += blockDim.x)
        g[j] = scale * static_cast<float>(exp(static_cast<double>(l[j]) - lse)) - (j == tgt ? scale : 0.0f);
    }
    __syncthreads();  // scratch is reused by the next row
  }
}

__global__ void adamw_kernel(float* __restrict__ param, const float* __restrict__ grad, float* __restrict__ m,
                             float* __restrict__ v, std::size_t n, float lr, float beta1, float beta2, float eps,
                             float weight_decay, float step_size, float bc2_sqrt) {
  FLEXSP_GRID_STRIDE(i, n) {
    const float g = grad[i];
    const float mi = beta1 * m[i] + (1.0f - beta1) * g;
    const float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    float p = param[i];
    p -= lr * weight_decay * p;
    p -= step_size * mi / (sqrtf(vi) / bc2_sqrt + eps);
    param[i] = p;
  }
}

__global__ void sum_squares_kernel(const float* __restrict__ x, std::size_t n, double* out) {
  __shared__ double scratch[32];
  double s = 0.0;
  FLEXSP_GRID_STRIDE(i, n) s += static_cast<double>(x[i]) * x[i];
  s = block_sum(s, scratch);
  if (threadIdx.x == 0) atomicAdd(out, s);
}

__global__ void fingerprint_kernel(const float* __restrict__ x, std::size_t n, std::uint64_t first,
                                   unsigned long long* out) {
  __shared__ unsigned long long scratch[32];
  unsigned long long s = 0;
  FLEXSP_GRID_STRIDE(i, n) s += detail::fingerprint_term(__float_as_uint(x[i]), first + i);
  s = block_sum(s, scratch);  // integer sums: the same value in any order
  if (threadIdx.x == 0) atomicAdd(out, s);
}

// One thread block per copy block (grid-stride over them), its threads over the elements.
__global__ void copy_blocks_kernel(const float* __restrict__ src, float* __restrict__ dst,
                                   const copy_block* __restrict__ blocks, int count) {
  for (int b = blockIdx.x; b < count; b += gridDim.x) {
    const copy_block k = blocks[b];
    const std::int64_t total = k.rows * k.row_len;
    for (std::int64_t i = threadIdx.x; i < total; i += blockDim.x) {
      const std::int64_t r = i / k.row_len, e = i - r * k.row_len;
      dst[k.dst_offset + r * k.dst_pitch + e] = src[k.src_offset + r * k.src_pitch + e];
    }
  }
}

__global__ void to_bf16_kernel(const float* __restrict__ x, std::uint16_t* __restrict__ y, std::size_t n) {
  FLEXSP_GRID_STRIDE(i, n) y[i] = round_to_bf16(x[i]);
}
__global__ void from_bf16_kernel(const std::uint16_t* __restrict__ x, float* __restrict__ y, std::size_t n) {
  FLEXSP_GRID_STRIDE(i, n) y[i] = load_f32(x[i]);
}

unsigned row_blocks(std::int64_t n) { return static_cast<unsigned>(std::clamp<std::int64_t>(n, 1, 65535)); }

}  // namespace

cudaError_t launch_axpy(float a, const float* x, float* y, std::size_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  axpy_kernel<<<blocks_for(n), kThreads, 0, stream>>>(a, x, y, n);
  return cudaGetLastError();
}
cudaError_t launch_scale(float* x, float f, std::size_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  scale_kernel<<<blocks_for(n), kThreads, 0, stream>>>(x, f, n);
  return cudaGetLastError();
}
cudaError_t launch_add(const float* a, const float* b, float* out, std::size_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  add_kernel<<<blocks_for(n), kThreads, 0, stream>>>(a, b, out, n);
  return cudaGetLastError();
}
cudaError_t launch_accumulate2(const float* g, float* da, float* db, std::size_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  accumulate2_kernel<<<blocks_for(n), kThreads, 0, stream>>>(g, da, db, n);
  return cudaGetLastError();
}
cudaError_t launch_broadcast_rows(const float* b, float* y, std::int64_t rows, std::int64_t cols,
                                  cudaStream_t stream) {
  const auto total = static_cast<std::size_t>(rows * cols);
  if (total == 0) return cudaSuccess;
  broadcast_rows_kernel<<<blocks_for(total), kThreads, 0, stream>>>(b, y, total, cols);
  return cudaGetLastError();
}
cudaError_t launch_column_sums_add(const float* x, float* out, std::int64_t rows, std::int64_t cols,
                                   cudaStream_t stream) {
  if (rows == 0 || cols == 0) return cudaSuccess;
  column_sums_kernel<<<column_grid(rows, cols), dim3{32, 8}, 0, stream>>>(x, out, rows, cols);
  return cudaGetLastError();
}

cudaError_t launch_embedding_forward(const std::int32_t* tokens, const std::int32_t* positions, const float* wte,
                                     const float* wpe, float* out, std::int64_t n, std::int64_t d,
                                     std::int64_t vocab, std::int64_t max_pos, std::int32_t* bad_index,
                                     cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  embedding_forward_kernel<<<row_blocks(n), 128, 0, stream>>>(tokens, positions, wte, wpe, out, n, d, vocab, max_pos,
                                                              bad_index);
  return cudaGetLastError();
}
cudaError_t launch_embedding_backward(const std::int32_t* tokens, const std::int32_t* positions, const float* dout,
                                      float* dwte, float* dwpe, std::int64_t n, std::int64_t d, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  embedding_backward_kernel<<<row_blocks(n), 128, 0, stream>>>(tokens, positions, dout, dwte, dwpe, n, d);
  return cudaGetLastError();
}

cudaError_t launch_layernorm_forward(const float* x, const float* gamma, const float* beta, float* y, float* mean,
                                     float* rstd, std::int64_t n, std::int64_t d, float eps, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const auto blocks = static_cast<unsigned>((n + 7) / 8);  // 8 warps = 8 rows per block
  layernorm_forward_kernel<<<blocks, kThreads, 0, stream>>>(x, gamma, beta, y, mean, rstd, n, d, eps);
  return cudaGetLastError();
}
cudaError_t launch_layernorm_backward(const float* dy, const float* x, const float* gamma, const float* mean,
                                      const float* rstd, float* dx, float* dgamma, float* dbeta, std::int64_t n,
                                      std::int64_t d, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const auto blocks = static_cast<unsigned>((n + 7) / 8);
  layernorm_backward_kernel<<<blocks, kThreads, 0, stream>>>(dy, x, gamma, mean, rstd, dx, n, d);
  if (const auto rc = cudaGetLastError(); rc != cudaSuccess) return rc;
  layernorm_param_grads_kernel<<<column_grid(n, d), dim3{32, 8}, 0, stream>>>(dy, x, mean, rstd, dgamma, dbeta, n, d);
  return cudaGetLastError();
}

cudaError_t launch_rmsnorm_forward(const float* x, const float* gamma, float* y, float* rstd, std::int64_t n,
                                   std::int64_t d, float eps, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const auto blocks = static_cast<unsigned>((n + 7) / 8);  // 8 warps = 8 rows per block
  rmsnorm_forward_kernel<<<blocks, kThreads, 0, stream>>>(x, gamma, y, rstd, n, d, eps);
  return cudaGetLastError();
}
cudaError_t launch_rmsnorm_backward(const float* dy, const float* x, const float* gamma, const float* rstd, float* dx,
                                    float* dgamma, std::int64_t n, std::int64_t d, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const auto blocks = static_cast<unsigned>((n + 7) / 8);
  rmsnorm_backward_kernel<<<blocks, kThreads, 0, stream>>>(dy, x, gamma, rstd, dx, n, d);
  if (const auto rc = cudaGetLastError(); rc != cudaSuccess) return rc;
  rmsnorm_gain_grads_kernel<<<column_grid(n, d), dim3{32, 8}, 0, stream>>>(dy, x, rstd, dgamma, n, d);
  return cudaGetLastError();
}
cudaError_t launch_rope(float* x, const std::int32_t* positions, std::int64_t n, std::int64_t heads,
                        std::int64_t row_stride, std::int64_t head_dim, float theta, bool inverse,
                        cudaStream_t stream) {
  const auto total = static_cast<std::size_t>(n * heads * (head_dim / 2));
  if (total == 0) return cudaSuccess;
  rope_kernel<<<blocks_for(total), kThreads, 0, stream>>>(x, positions, n, heads, row_stride, head_dim, theta,
                                                          inverse ? -1.0f : 1.0f, total);
  return cudaGetLastError();
}
cudaError_t launch_swiglu_forward(const float* gate_up, float* y, std::int64_t n, std::int64_t f, cudaStream_t stream) {
  const auto total = static_cast<std::size_t>(n * f);
  if (total == 0) return cudaSuccess;
  swiglu_forward_kernel<<<blocks_for(total), kThreads, 0, stream>>>(gate_up, y, f, total);
  return cudaGetLastError();
}
cudaError_t launch_swiglu_backward(const float* dy, const float* gate_up, float* dgate_up, std::int64_t n,
                                   std::int64_t f, cudaStream_t stream) {
  const auto total = static_cast<std::size_t>(n * f);
  if (total == 0) return cudaSuccess;
  swiglu_backward_kernel<<<blocks_for(total), kThreads, 0, stream>>>(dy, gate_up, dgate_up, f, total);
  return cudaGetLastError();
}
cudaError_t launch_gelu_forward(const float* x, float* y, std::size_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  gelu_forward_kernel<<<blocks_for(n), kThreads, 0, stream>>>(x, y, n);
  return cudaGetLastError();
}
cudaError_t launch_gelu_backward(const float* dy, const float* x, float* dx, std::size_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  gelu_backward_kernel<<<blocks_for(n), kThreads, 0, stream>>>(dy, x, dx, n);
  return cudaGetLastError();
}

cudaError_t launch_cross_entropy(const float* logits, const std::int32_t* targets, float* dlogits, std::int64_t n,
                                 std::int64_t vocab, float scale, double* loss_sum, std::int32_t* bad_index,
                                 cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  cross_entropy_kernel<<<row_blocks(n), kThreads, 0, stream>>>(logits, targets, dlogits, n, vocab, scale, loss_sum,
                                                               bad_index);
  return cudaGetLastError();
}

cudaError_t launch_adamw(float* param, const float* grad, float* m, float* v, std::size_t n, float lr, float beta1,
                         float beta2, float eps, float weight_decay, float step_size, float bias_correction2_sqrt,
                         cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  adamw_kernel<<<blocks_for(n), kThreads, 0, stream>>>(param, grad, m, v, n, lr, beta1, beta2, eps, weight_decay,
                                                       step_size, bias_correction2_sqrt);
  return cudaGetLastError();
}
cudaError_t launch_sum_squares(const float* x, std::size_t n, double* out, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  sum_squares_kernel<<<std::min(blocks_for(n), 1024u), kThreads, 0, stream>>>(x, n, out);
  return cudaGetLastError();
}

cudaError_t launch_fingerprint(const float* x, std::size_t n, std::uint64_t first, unsigned long long* out,
                               cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  fingerprint_kernel<<<std::min(blocks_for(n), 1024u), kThreads, 0, stream>>>(x, n, first, out);
  return cudaGetLastError();
}

cudaError_t launch_copy_blocks(const float* src, float* dst, const copy_block* blocks, int count, cudaStream_t stream) {
  if (count <= 0) return cudaSuccess;
  copy_blocks_kernel<<<static_cast<unsigned>(std::min(count, 65535)), kThreads, 0, stream>>>(src, dst, blocks, count);
  return cudaGetLastError();
}

cudaError_t launch_to_bf16(const float* x, std::uint16_t* y, std::size_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  to_bf16_kernel<<<blocks_for(n), kThreads, 0, stream>>>(x, y, n);
  return cudaGetLastError();
}
cudaError_t launch_from_bf16(const std::uint16_t* x, float* y, std::size_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  from_bf16_kernel<<<blocks_for(n), kThreads, 0, stream>>>(x, y, n);
  return cudaGetLastError();
}

}  // namespace flexsp::kernels::cuda
