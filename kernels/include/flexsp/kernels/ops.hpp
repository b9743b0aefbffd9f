#pragma once
/// \file
/// fp32 CPU kernels of a GPT decoder, each with its backward. Shapes are in trailing comments;
/// all buffers are contiguous row-major. Backward functions *accumulate* parameter gradients
/// (so micro-batches add up) and *overwrite* input gradients unless stated otherwise.
/// Sizes are preconditions (FLEXSP_EXPECTS); token ids out of range are reported as errors.

#include <cstdint>
#include <span>
#include <string>

#include "flexsp/core/error.hpp"

namespace flexsp::kernels {

// ---- embedding --------------------------------------------------------------------------

/// out[t] = wte[tokens[t]] + wpe[positions[t]] (just wte[tokens[t]] when wpe is empty: a model
/// without a position table). errc::invalid_argument when a token id is outside [0, vocab) or a
/// position outside [0, max_pos).
expected<void> embedding_forward(std::span<const std::int32_t> tokens,     // [n]
                                 std::span<const std::int32_t> positions,  // [n]
                                 std::span<const float> wte,               // [vocab, d]
                                 std::span<const float> wpe,               // [max_pos, d]
                                 std::span<float> out,                     // [n, d]
                                 std::int64_t d);

/// Accumulates dwte[tokens[t]] += dout[t] and dwpe[positions[t]] += dout[t] (the latter unless
/// dwpe is empty). Ids must be valid (they were checked by the forward pass).
void embedding_backward(std::span<const std::int32_t> tokens, std::span<const std::int32_t> positions,
                        std::span<const float> dout,  // [n, d]
                        std::span<float> dwte,        // [vocab, d]
                        std::span<float> dwpe,        // [max_pos, d]
                        std::int64_t d);

// ---- layer norm -------------------------------------------------------------------------

/// Epsilon added to the variance (GPT-2's value).
inline constexpr float kLayerNormEps = 1e-5f;

/// y = (x - mean) * rstd * gamma + beta per row; stores mean and rstd for the backward pass.
void layernorm_forward(std::span<const float> x,      // [n, d]
                       std::span<const float> gamma,  // [d]
                       std::span<const float> beta,   // [d]
                       std::span<float> y,            // [n, d]
                       std::span<float> mean,         // [n]
                       std::span<float> rstd,         // [n]
                       std::int64_t d);

/// dx = d/dx (overwritten); dgamma, dbeta accumulated.
void layernorm_backward(std::span<const float> dy, std::span<const float> x, std::span<const float> gamma,
                        std::span<const float> mean, std::span<const float> rstd,
                        std::span<float> dx,      // [n, d]
                        std::span<float> dgamma,  // [d]
                        std::span<float> dbeta,   // [d]
                        std::int64_t d);

// ---- RMSNorm (LLaMA) ----------------------------------------------------------------------

/// y = x * rstd * gamma per row, rstd = 1 / sqrt(mean(x^2) + eps); stores rstd for backward.
void rmsnorm_forward(std::span<const float> x,      // [n, d]
                     std::span<const float> gamma,  // [d]
                     std::span<float> y,            // [n, d]
                     std::span<float> rstd,         // [n]
                     std::int64_t d, float eps);

/// dx = d/dx (overwritten); dgamma accumulated.
void rmsnorm_backward(std::span<const float> dy, std::span<const float> x, std::span<const float> gamma,
                      std::span<const float> rstd,
                      std::span<float> dx,      // [n, d]
                      std::span<float> dgamma,  // [d]
                      std::int64_t d);

// ---- rotary position embedding (LLaMA) --------------------------------------------------

/// Rotates in place the first `heads` heads of every row t of x (rows of `row_stride` floats,
/// head h at floats [h * head_dim, (h + 1) * head_dim)) by the angles of position
/// positions[t], with the "rotate half" pairing of Hugging Face's LLaMA: element i pairs with
/// i + head_dim/2, at frequency theta^(-2i/head_dim). `inverse` rotates back: the backward
/// pass of a rotation is the opposite rotation of the gradient. head_dim must be even.
void rope(std::span<float> x, std::span<const std::int32_t> positions, std::int64_t heads, std::int64_t row_stride,
          std::int64_t head_dim, float theta, bool inverse);

// ---- SwiGLU (LLaMA) ---------------------------------------------------------------------

/// y = silu(gate) * up per row, where gate and up are the two halves of gate_up ([n, 2f]:
/// gate in columns [0, f), up in [f, 2f)).
void swiglu_forward(std::span<const float> gate_up, std::span<float> y, std::int64_t f);
/// dgate_up (overwritten) from dy ([n, f]) and the forward's gate_up.
void swiglu_backward(std::span<const float> dy, std::span<const float> gate_up, std::span<float> dgate_up,
                     std::int64_t f);

// ---- matmul (OpenBLAS sgemm) ------------------------------------------------------------

/// Row-major C[m, n] = alpha * op(A) op(B) + beta * C through cblas_sgemm.
/// op(A) is [m, k] (A stored [k, m] when trans_a), op(B) is [k, n] (B stored [n, k] when trans_b).
/// lda/ldb/ldc are row strides in elements.
void gemm(bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k, float alpha, const float* a,
          std::int64_t lda, const float* b, std::int64_t ldb, float beta, float* c, std::int64_t ldc);

/// y = x w + b (bias optional: empty span).
void linear_forward(std::span<const float> x,  // [n, in]
                    std::span<const float> w,  // [in, out]
                    std::span<const float> b,  // [out] or empty
                    std::span<float> y,        // [n, out]
                    std::int64_t n, std::int64_t in, std::int64_t out);

/// dx = dy w^T (overwritten; skipped when dx is empty); dw += x^T dy; db += sum_rows dy.
void linear_backward(std::span<const float> dy,  // [n, out]
                     std::span<const float> x,   // [n, in]
                     std::span<const float> w,   // [in, out]
                     std::span<float> dx,        // [n, in] or empty
                     std::span<float> dw,        // [in, out]
                     std::span<float> db,        // [out] or empty
                     std::int64_t n, std::int64_t in, std::int64_t out);

// ---- pointwise --------------------------------------------------------------------------

/// GELU, tanh approximation (GPT-2): y = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
void gelu_forward(std::span<const float> x, std::span<float> y);
/// dx = dy * gelu'(x) (overwritten).
void gelu_backward(std::span<const float> dy, std::span<const float> x, std::span<float> dx);

/// out = a + b (out may alias a or b). The backward of a residual add is the identity for both
/// inputs; `residual_backward` accumulates dout into da and db.
void residual_forward(std::span<const float> a, std::span<const float> b, std::span<float> out);
void residual_backward(std::span<const float> dout, std::span<float> da, std::span<float> db);

// ---- loss -------------------------------------------------------------------------------

/// Softmax cross-entropy over rows of logits. Returns the *sum* of token losses (double).
/// When dlogits is non-empty it receives scale * (softmax - onehot(target)), the gradient of
/// scale * sum-loss; `scale` is 1 / (tokens of the global batch) for a normalised loss.
/// errc::invalid_argument when a target is outside [0, vocab).
expected<double> cross_entropy_forward_backward(std::span<const float> logits,       // [n, vocab]
                                                std::span<const std::int32_t> targets,  // [n]
                                                std::span<float> dlogits,             // [n, vocab] or empty
                                                std::int64_t vocab, float scale);

// ---- optimizer --------------------------------------------------------------------------

/// AdamW hyper-parameters (Loshchilov & Hutter; decoupled weight decay).
struct adamw_params {
  float lr = 3e-4f;            ///< learning rate
  float beta1 = 0.9f;
  float beta2 = 0.95f;
  float eps = 1e-8f;
  float weight_decay = 0.1f;   ///< multiplied by lr; 0 for gains and biases
};

/// One AdamW update of `param` with `grad`; `step` counts from 1 (bias correction).
void adamw_update(std::span<float> param, std::span<const float> grad, std::span<float> m, std::span<float> v,
                  std::int64_t step, const adamw_params& p);

/// L2 norm of all gradients (accumulated in double).
double l2_norm(std::span<const float> values);

/// Scales `grads` so that their L2 norm is at most `max_norm` (no-op when already below or when
/// max_norm <= 0). Returns the norm before clipping.
double clip_grad_norm(std::span<float> grads, double max_norm);

/// OpenBLAS picks its GEMM kernels from the CPU model when it loads and, on CPUs it does not
/// recognise (a VM's generic "Intel Xeon Processor"), falls back to Prescott's SSE3 kernels,
/// 4-5x slower than the AVX-512 ones the CPU runs. Unless OPENBLAS_CORETYPE is set, when the
/// loaded kernels are older than the CPU's features allow (AVX-512: SkylakeX; AVX2 + FMA:
/// Haswell), this sets OPENBLAS_CORETYPE and executes the program again with the same
/// arguments; otherwise (and after that restart) it returns. Call first thing in main.
void restart_with_best_blas_kernels(char** argv);
/// The kernels OpenBLAS runs ("SkylakeX", "Haswell", "Prescott", ...).
std::string blas_core();

/// Threads one CPU device's GEMMs and attention may use (workers of the process's shared pool;
/// OpenBLAS itself runs single-threaded, since its idle threads spin).
int cpu_math_threads() noexcept;
/// Records `devices` more CPU devices in this process (negative: fewer) and shares the cores
/// among them: threads per device become max(1, cores / CPU devices), so devices that compute
/// at the same time do not oversubscribe the machine. A thread count fixed by
/// FLEXSP_CPU_THREADS (or OPENBLAS_NUM_THREADS) wins. Returns the threads now in use.
/// Thread-safe.
int add_cpu_devices(int devices) noexcept;
/// CPU devices add_cpu_devices() has counted in this process.
int cpu_devices() noexcept;
/// Memory each CPU device of this process may use, bytes (0, the default: the host's physical
/// memory divided by cpu_devices()). A node's `--cpu-memory-gb`.
void set_cpu_device_memory(std::uint64_t bytes) noexcept;
std::uint64_t cpu_device_memory() noexcept;

/// fp32 -> bf16 bits, rounding to nearest even (a NaN stays a NaN), and bf16 bits -> fp32 (exact).
std::uint16_t to_bf16(float v) noexcept;
float from_bf16(std::uint16_t v) noexcept;

/// One strided copy of `rows` rows of `row_len` floats: row i goes from src[src_offset + i *
/// src_pitch] to dst[dst_offset + i * dst_pitch] (offsets and pitches in floats). Lists of them
/// describe the packing around the Ulysses all-to-alls, on the host and on the GPU alike.
struct row_block {
  std::int64_t src_offset = 0, dst_offset = 0;
  std::int64_t src_pitch = 0, dst_pitch = 0;
  std::int64_t rows = 0, row_len = 0;
};

/// Runs `blocks` from `src` to `dst` (host memory; the blocks must stay inside both).
void copy_blocks(std::span<const row_block> blocks, const float* src, float* dst) noexcept;

/// Bit-exact fingerprint of `data` as elements `first_position`, first_position + 1, ... of a
/// longer sequence: the sum mod 2^64 of one splitmix64-mixed term per element (its bits salted
/// with its position). The fingerprint of a concatenation is the sum of its parts' (continue the
/// positions), and the sum can be formed in any order, so a GPU computes the same value in
/// parallel (gpu::device::fingerprint). Changing any one element always changes it. Used to
/// check that replicas are bitwise equal without moving their state.
std::uint64_t fingerprint(std::span<const float> data, std::uint64_t first_position = 0) noexcept;

}  // namespace flexsp::kernels
