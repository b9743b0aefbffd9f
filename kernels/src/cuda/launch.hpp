#pragma once
// Kernel launchers compiled by nvcc. This header is plain C++ (no fmt, no flexsp::expected) so
// that .cu files stay free of host-library templates nvcc cannot compile; the checked,
// expected-returning wrappers live in the .cpp files of the CUDA target, which validate every
// argument before calling a launcher. Launchers only check what the launch itself needs and
// return the launch error. All pointers are device pointers unless named host_*.
#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

namespace flexsp::kernels::cuda {

/// y[i] += a * x[i] for i < n.
cudaError_t launch_axpy(float a, const float* x, float* y, std::size_t n, cudaStream_t stream);
/// x[i] *= f.
cudaError_t launch_scale(float* x, float f, std::size_t n, cudaStream_t stream);
/// out[i] = a[i] + b[i] (out may alias a or b).
cudaError_t launch_add(const float* a, const float* b, float* out, std::size_t n, cudaStream_t stream);
/// da[i] += g[i]; db[i] += g[i].
cudaError_t launch_accumulate2(const float* g, float* da, float* db, std::size_t n, cudaStream_t stream);
/// y[r, :] = b for every row (the bias term before a beta=1 GEMM).
cudaError_t launch_broadcast_rows(const float* b, float* y, std::int64_t rows, std::int64_t cols, cudaStream_t stream);
/// out[c] += sum_r x[r, c].
cudaError_t launch_column_sums_add(const float* x, float* out, std::int64_t rows, std::int64_t cols,
                                   cudaStream_t stream);

/// Embedding forward; `bad_index` (one int, preset to INT32_MAX) receives the smallest index t
/// whose token or position id is out of range.
cudaError_t launch_embedding_forward(const std::int32_t* tokens, const std::int32_t* positions, const float* wte,
                                     const float* wpe, float* out, std::int64_t n, std::int64_t d,
                                     std::int64_t vocab, std::int64_t max_pos, std::int32_t* bad_index,
                                     cudaStream_t stream);
cudaError_t launch_embedding_backward(const std::int32_t* tokens, const std::int32_t* positions, const float* dout,
                                      float* dwte, float* dwpe, std::int64_t n, std::int64_t d, cudaStream_t stream);

cudaError_t launch_rmsnorm_forward(const float* x, const float* gamma, float* y, float* rstd, std::int64_t n,
                                   std::int64_t d, float eps, cudaStream_t stream);
cudaError_t launch_rmsnorm_backward(const float* dy, const float* x, const float* gamma, const float* rstd, float* dx,
                                    float* dgamma, std::int64_t n, std::int64_t d, cudaStream_t stream);
cudaError_t launch_rope(float* x, const std::int32_t* positions, std::int64_t n, std::int64_t heads,
                        std::int64_t row_stride, std::int64_t head_dim, float theta, bool inverse, cudaStream_t stream);
cudaError_t launch_swiglu_forward(const float* gate_up, float* y, std::int64_t n, std::int64_t f, cudaStream_t stream);
cudaError_t launch_swiglu_backward(const float* dy, const float* gate_up, float* dgate_up, std::int64_t n,
                                   std::int64_t f, cudaStream_t stream);
cudaError_t launch_layernorm_forward(const float* x, const float* gamma, const float* beta, float* y, float* mean,
                                     float* rstd, std::int64_t n, std::int64_t d, float eps, cudaStream_t stream);
cudaError_t launch_layernorm_backward(const float* dy, const float* x, const float* gamma, const float* mean,
                                      const float* rstd, float* dx, float* dgamma, float* dbeta, std::int64_t n,
                                      std::int64_t d, cudaStream_t stream);

cudaError_t launch_gelu_forward(const float* x, float* y, std::size_t n, cudaStream_t stream);
cudaError_t launch_gelu_backward(const float* dy, const float* x, float* dx, std::size_t n, cudaStream_t stream);

/// Cross-entropy rows; `loss_sum` (one double, preset to 0) accumulates the token losses,
/// `bad_index` (preset to INT32_MAX) the smallest row with an out-of-range target. dlogits may
/// be null.
cudaError_t launch_cross_entropy(const float* logits, const std::int32_t* targets, float* dlogits, std::int64_t n,
                                 std::int64_t vocab, float scale, double* loss_sum, std::int32_t* bad_index,
                                 cudaStream_t stream);

/// AdamW with the CPU kernel's arithmetic; step_size = lr / bias_correction1.
cudaError_t launch_adamw(float* param, const float* grad, float* m, float* v, std::size_t n, float lr, float beta1,
                         float beta2, float eps, float weight_decay, float step_size, float bias_correction2_sqrt,
                         cudaStream_t stream);
/// *out (preset to 0) += sum of x[i]^2 in double.
cudaError_t launch_sum_squares(const float* x, std::size_t n, double* out, cudaStream_t stream);
/// Adds kernels::fingerprint(x[0, n), first) to *out (device; zero it first).
cudaError_t launch_fingerprint(const float* x, std::size_t n, std::uint64_t first, unsigned long long* out,
                               cudaStream_t stream);

/// One strided copy, laid out as kernels::row_block (offsets and pitches in floats).
struct copy_block {
  std::int64_t src_offset, dst_offset, src_pitch, dst_pitch, rows, row_len;
};
/// Runs the `count` blocks of the device array `blocks` from src to dst.
cudaError_t launch_copy_blocks(const float* src, float* dst, const copy_block* blocks, int count, cudaStream_t stream);

cudaError_t launch_to_bf16(const float* x, std::uint16_t* y, std::size_t n, cudaStream_t stream);
cudaError_t launch_from_bf16(const std::uint16_t* x, float* y, std::size_t n, cudaStream_t stream);

// ---- attention --------------------------------------------------------------------------

/// Rows of Q (forward) and of K (backward) per thread block; the host builds its schedule of
/// (sequence, first row) items with these tile sizes.
inline constexpr int kAttentionForwardTile = 64;
inline constexpr int kAttentionBackwardTile = 32;
inline constexpr int kAttentionMaxHeadDim = 128;

/// Dynamic shared memory of the kernels for `head_dim`, in bytes.
std::size_t attention_forward_smem(int head_dim);
std::size_t attention_backward_smem(int head_dim);

/// Forward over `items` (pairs of int32: sequence, first query row) x heads blocks.
/// cu_seqlens: [sequences + 1] int64 on the device.
cudaError_t launch_attention_forward(const float* q, const float* k, const float* v, float* out, float* lse,
                                     const std::int64_t* cu_seqlens, const std::int32_t* items, int item_count,
                                     int heads, int head_dim, cudaStream_t stream);

/// delta[t, h] = sum_e out[t, h, e] * dout[t, h, e].
cudaError_t launch_attention_row_dot(const float* out, const float* dout, float* delta, std::int64_t tokens, int heads,
                                     int head_dim, cudaStream_t stream);

/// Backward over `items` (sequence, first key row); dk and dv are written, dq must be zero on
/// entry (it is accumulated with atomics).
cudaError_t launch_attention_backward(const float* q, const float* k, const float* v, const float* lse,
                                      const float* delta, const float* dout, float* dq, float* dk, float* dv,
                                      const std::int64_t* cu_seqlens, const std::int32_t* items, int item_count,
                                      int heads, int head_dim, cudaStream_t stream);

// The same three on bf16 Q, K, V, O, dO, dK, dV (std::uint16_t bits; fp32 arithmetic inside).
// lse and delta stay fp32, and dq is an fp32 accumulator (zero on entry) the caller rounds.
cudaError_t launch_attention_forward(const std::uint16_t* q, const std::uint16_t* k, const std::uint16_t* v,
                                     std::uint16_t* out, float* lse, const std::int64_t* cu_seqlens,
                                     const std::int32_t* items, int item_count, int heads, int head_dim,
                                     cudaStream_t stream);
cudaError_t launch_attention_row_dot(const std::uint16_t* out, const std::uint16_t* dout, float* delta,
                                     std::int64_t tokens, int heads, int head_dim, cudaStream_t stream);
cudaError_t launch_attention_backward(const std::uint16_t* q, const std::uint16_t* k, const std::uint16_t* v,
                                      const float* lse, const float* delta, const std::uint16_t* dout, float* dq,
                                      std::uint16_t* dk, std::uint16_t* dv, const std::int64_t* cu_seqlens,
                                      const std::int32_t* items, int item_count, int heads, int head_dim,
                                      cudaStream_t stream);

}  // namespace flexsp::kernels::cuda
