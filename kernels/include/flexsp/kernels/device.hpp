#pragma once
/// \file
/// A compute device: its memory and every op the model runs on it, on device pointers. Two
/// implementations: the host device (host memory, the CPU kernels of ops.hpp and attention.hpp,
/// `make_host_device`) and the CUDA device (GPU memory, one stream, the CUDA kernels and cuBLAS,
/// `gpu::open_device`). The model (model.hpp) is written once against this interface.
///
/// Conventions:
/// - Pointers passed to ops are *device* pointers (from `device::allocate`; host memory on the
///   host device), in the layouts of the CPU kernels (row-major, shapes in trailing comments).
///   Host pointers are only taken by the copy functions and by the host-side index lists
///   (`cu_seqlens`).
/// - Every op validates its arguments on the host first and returns errc::invalid_argument
///   naming the bad argument, without launching anything. On the CUDA device ops are queued on
///   its stream and return before the GPU finishes, except where a result must come back to the
///   host (`embedding_forward` and `cross_entropy` check ids / return the loss; `sum_squares`).
///   On the host device every op has finished when it returns.
/// - A failed CUDA, cuBLAS or NCCL call returns errc::failed with the call text and file:line;
///   after a failed kernel (an asynchronous error) the device is unusable and must be reopened.
/// - Backward ops accumulate parameter gradients and overwrite input gradients.
/// - What a device cannot do (bf16 or tf32 arithmetic on the host) is errc::unimplemented.

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include "flexsp/core/error.hpp"
#include "flexsp/kernels/ops.hpp"

namespace flexsp::kernels {

/// Element types of GEMM operands.
enum class dtype : std::uint8_t {
  f32,   ///< IEEE single precision
  bf16,  ///< bfloat16 (the upper half of an f32), stored as std::uint16_t
};

/// Arithmetic of an f32 GEMM: exact fp32 (matches the CPU), or TF32 tensor cores (10-bit
/// mantissa inputs, fp32 accumulation). bf16 GEMMs always accumulate in fp32.
enum class gemm_math : std::uint8_t { fp32, tf32 };

/// Bytes a device has handed out through allocate(), now and at most (a high-water mark).
class memory_ledger {
public:
  void add(std::size_t bytes) noexcept {
    const auto now = in_use_.fetch_add(bytes, std::memory_order_relaxed) + bytes;
    auto peak = peak_.load(std::memory_order_relaxed);
    while (now > peak && !peak_.compare_exchange_weak(peak, now, std::memory_order_relaxed)) {
    }
  }
  void remove(std::size_t bytes) noexcept { in_use_.fetch_sub(bytes, std::memory_order_relaxed); }
  std::uint64_t in_use() const noexcept { return in_use_.load(std::memory_order_relaxed); }
  std::uint64_t peak() const noexcept { return peak_.load(std::memory_order_relaxed); }
  /// Starts a new high-water mark at what is in use now.
  void reset_peak() noexcept { peak_.store(in_use(), std::memory_order_relaxed); }

private:
  std::atomic<std::uint64_t> in_use_{0}, peak_{0};
};

/// An owning device allocation (move-only; freed on destruction). A buffer made with a ledger
/// counts its bytes there while it lives.
class buffer {
public:
  using release_fn = void (*)(void*) noexcept;
  buffer() = default;
  buffer(void* ptr, std::size_t bytes, release_fn release) noexcept : ptr_{ptr}, bytes_{bytes}, release_{release} {}
  buffer(void* ptr, std::size_t bytes, release_fn release, std::shared_ptr<memory_ledger> ledger) noexcept
      : ptr_{ptr}, bytes_{bytes}, release_{release}, ledger_{std::move(ledger)} {
    if (ledger_) ledger_->add(bytes_);
  }
  buffer(buffer&& other) noexcept
      : ptr_{std::exchange(other.ptr_, nullptr)}, bytes_{std::exchange(other.bytes_, 0)},
        release_{std::exchange(other.release_, nullptr)}, ledger_{std::move(other.ledger_)} {}
  buffer& operator=(buffer&& other) noexcept {
    if (this != &other) {
      reset();
      ptr_ = std::exchange(other.ptr_, nullptr);
      bytes_ = std::exchange(other.bytes_, 0);
      release_ = std::exchange(other.release_, nullptr);
      ledger_ = std::move(other.ledger_);
    }
    return *this;
  }
  buffer(const buffer&) = delete;
  buffer& operator=(const buffer&) = delete;
  ~buffer() { reset(); }

  void* get() const noexcept { return ptr_; }
  std::size_t bytes() const noexcept { return bytes_; }
  template <class T>
  T* as() const noexcept {
    return static_cast<T*>(ptr_);
  }
  void reset() noexcept {
    if (ptr_ != nullptr && release_ != nullptr) release_(ptr_);
    if (ledger_) ledger_->remove(bytes_);
    ledger_.reset();
    ptr_ = nullptr;
    bytes_ = 0;
  }

private:
  void* ptr_ = nullptr;
  std::size_t bytes_ = 0;
  release_fn release_ = nullptr;
  std::shared_ptr<memory_ledger> ledger_;
};

/// What a device's allocations hold (bytes): in use now, the high-water mark since it was
/// made or last reset, and what the device may use in all (0: unknown).
struct memory_stats {
  std::uint64_t in_use = 0;
  std::uint64_t peak = 0;
  std::uint64_t capacity = 0;
};

/// Row-major GEMM, the device twin of kernels::gemm: C[m, n] = alpha op(A) op(B) + beta C.
/// op(A) is [m, k] (A stored [k, m] when trans_a), op(B) is [k, n] (B stored [n, k] when
/// trans_b); lda/ldb/ldc are row strides in elements. A, B and C have element type `type`.
struct gemm_args {
  bool trans_a = false;
  bool trans_b = false;
  std::int64_t m = 0, n = 0, k = 0;
  float alpha = 1.0f;
  const void* a = nullptr;
  std::int64_t lda = 0;
  const void* b = nullptr;
  std::int64_t ldb = 0;
  float beta = 0.0f;
  void* c = nullptr;
  std::int64_t ldc = 0;
  dtype type = dtype::f32;
  gemm_math math = gemm_math::fp32;
};

/// Causal attention over packed variable-length sequences, forward. Same layout and results
/// as attention::forward_args: Q, K, V, O are [tokens, heads, head_dim] (row stride
/// heads*head_dim) of element type `type` (f32, or bf16 as std::uint16_t bits), sequence s
/// covers tokens [cu_seqlens[s], cu_seqlens[s+1]). cu_seqlens is a *host* array; the launcher
/// copies it (and its tile schedule) into the workspace. Arithmetic is fp32 for either type;
/// lse is always fp32.
struct attention_forward_args {
  std::span<const std::int64_t> cu_seqlens;  // [sequences + 1] host
  std::int64_t heads = 0;
  std::int64_t head_dim = 0;  ///< 1..kMaxAttentionHeadDim
  const void* q = nullptr;    // [tokens, heads, head_dim] of `type`
  const void* k = nullptr;    // [tokens, heads, head_dim]
  const void* v = nullptr;    // [tokens, heads, head_dim]
  void* out = nullptr;        // [tokens, heads, head_dim]
  float* lse = nullptr;       // [tokens, heads]
  dtype type = dtype::f32;
};

/// Backward of attention_forward_args: dq, dk, dv (element type `type`) overwritten.
struct attention_backward_args {
  std::span<const std::int64_t> cu_seqlens;  // [sequences + 1] host
  std::int64_t heads = 0;
  std::int64_t head_dim = 0;
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  const void* out = nullptr;   // [tokens, heads, head_dim]
  const float* lse = nullptr;  // [tokens, heads]
  const void* dout = nullptr;  // [tokens, heads, head_dim]
  void* dq = nullptr;          // [tokens, heads, head_dim]
  void* dk = nullptr;          // [tokens, heads, head_dim]
  void* dv = nullptr;          // [tokens, heads, head_dim]
  dtype type = dtype::f32;
};

/// Largest head_dim the attention kernels take (register tiles are sized for it).
inline constexpr std::int64_t kMaxAttentionHeadDim = 128;

/// One CUDA device with its own stream and cuBLAS handle. Not thread-safe: one owner (the
/// device actor) issues work. All methods validate first, then queue work on the stream.
class device {
public:
  virtual ~device() = default;

  /// True when device pointers are host pointers (the host device): host code and host
  /// collectives may use them directly.
  virtual bool host_memory() const noexcept { return false; }

  /// CUDA device index on this machine.
  virtual int index() const noexcept = 0;
  /// "NVIDIA H100 80GB HBM3 (sm_90, 79.1 GiB)"
  virtual std::string description() const = 0;
  /// The cudaStream_t of this device, for code that launches its own work (e.g. NCCL).
  virtual void* stream() const noexcept = 0;

  // ---- memory --------------------------------------------------------------------------
  /// Uninitialised device memory. errc::overloaded when the device is out of memory.
  virtual expected<buffer> allocate(std::size_t bytes) = 0;
  /// Bytes allocate() handed out (tensors, scratch; not a library's own buffers), their
  /// high-water mark, and the memory the device may use: on a GPU its own allocations plus the
  /// memory free now (at most the GPU's total); on the host the physical memory shared by the
  /// CPU devices of this process (or set_cpu_device_memory's figure).
  memory_stats memory() const noexcept { return {ledger_->in_use(), ledger_->peak(), memory_capacity()}; }
  /// memory_stats::peak alone (capacity may ask the GPU driver).
  std::uint64_t peak_memory() const noexcept { return ledger_->peak(); }
  void reset_peak_memory() noexcept { ledger_->reset_peak(); }
  /// Host -> device; returns once `src` may be reused.
  virtual expected<void> copy_to_device(void* dst, const void* src, std::size_t bytes) = 0;
  /// Device -> host; waits for queued work, then copies.
  virtual expected<void> copy_to_host(void* dst, const void* src, std::size_t bytes) = 0;
  /// Device -> device, queued.
  virtual expected<void> copy_on_device(void* dst, const void* src, std::size_t bytes) = 0;
  /// Device -> device copy of `rows` rows of `row_bytes` each between pitched layouts
  /// (cudaMemcpy2D), queued: the permutations around attention ([n, 3, D] <-> [3, n, D]).
  virtual expected<void> copy_rows(void* dst, std::size_t dst_pitch, const void* src, std::size_t src_pitch,
                                   std::size_t row_bytes, std::size_t rows) = 0;
  virtual expected<void> fill_zero(void* dst, std::size_t bytes) = 0;
  /// Device -> device strided copies (kernels::row_block, in floats), one launch, queued: the
  /// packing around the Ulysses all-to-alls (ulysses_layout::exchange_plan).
  virtual expected<void> copy_blocks(float* dst, const float* src, std::span<const row_block> blocks) = 0;
  /// Waits for everything queued; reports asynchronous kernel errors.
  virtual expected<void> synchronize() = 0;
  /// Milliseconds the GPU spent on the work `body` queues (CUDA events around it; waits).
  virtual expected<float> time_ms(const std::function<expected<void>()>& body) = 0;

  // ---- GEMM (cuBLAS) -------------------------------------------------------------------
  virtual expected<void> can_implement(const gemm_args& args) const = 0;
  virtual expected<void> gemm(const gemm_args& args) = 0;
  /// y = x w + b (b may be null), f32, exact fp32 arithmetic unless `math` says tf32.
  virtual expected<void> linear_forward(const float* x,  // [n, in]
                                        const float* w,  // [in, out]
                                        const float* b,  // [out] or null
                                        float* y,        // [n, out]
                                        std::int64_t n, std::int64_t in, std::int64_t out,
                                        gemm_math math = gemm_math::fp32) = 0;
  /// dx = dy w^T (skipped when dx is null); dw += x^T dy; db += column sums of dy (when db).
  virtual expected<void> linear_backward(const float* dy,  // [n, out]
                                         const float* x,   // [n, in]
                                         const float* w,   // [in, out]
                                         float* dx,        // [n, in] or null
                                         float* dw,        // [in, out]
                                         float* db,        // [out] or null
                                         std::int64_t n, std::int64_t in, std::int64_t out,
                                         gemm_math math = gemm_math::fp32) = 0;

  // ---- element-wise and row ops ----------------------------------------------------------
  /// out[t] = wte[tokens[t]] + wpe[positions[t]] (wpe may be null: no position table, positions
  /// are still checked against max_pos); ids are device int32 arrays. Checks every id on the
  /// device and waits: errc::invalid_argument names the first bad index.
  virtual expected<void> embedding_forward(const std::int32_t* tokens, const std::int32_t* positions,  // [n]
                                           const float* wte,  // [vocab, d]
                                           const float* wpe,  // [max_pos, d]
                                           float* out,        // [n, d]
                                           std::int64_t n, std::int64_t d, std::int64_t vocab,
                                           std::int64_t max_pos) = 0;
  /// dwte[tokens[t]] += dout[t]; dwpe[positions[t]] += dout[t] (unless dwpe is null; ids
  /// already checked).
  virtual expected<void> embedding_backward(const std::int32_t* tokens, const std::int32_t* positions,
                                            const float* dout,  // [n, d]
                                            float* dwte, float* dwpe, std::int64_t n, std::int64_t d) = 0;
  virtual expected<void> layernorm_forward(const float* x, const float* gamma, const float* beta,  // [n, d], [d], [d]
                                           float* y, float* mean, float* rstd,                    // [n, d], [n], [n]
                                           std::int64_t n, std::int64_t d) = 0;
  virtual expected<void> layernorm_backward(const float* dy, const float* x, const float* gamma,  // [n, d]
                                            const float* mean, const float* rstd,                // [n]
                                            float* dx,                                           // [n, d]
                                            float* dgamma, float* dbeta,                         // [d] accumulated
                                            std::int64_t n, std::int64_t d) = 0;
  /// RMSNorm (kernels::rmsnorm_forward / rmsnorm_backward): y = x * rstd * gamma per row.
  virtual expected<void> rmsnorm_forward(const float* x, const float* gamma,  // [n, d], [d]
                                         float* y, float* rstd,               // [n, d], [n]
                                         std::int64_t n, std::int64_t d, float eps) = 0;
  virtual expected<void> rmsnorm_backward(const float* dy, const float* x, const float* gamma,  // [n, d]
                                          const float* rstd,                                   // [n]
                                          float* dx, float* dgamma,                            // [n, d], [d] accumulated
                                          std::int64_t n, std::int64_t d) = 0;
  /// Rotary position embedding in place (kernels::rope): the first `heads` heads of each of the
  /// n rows of `row_stride` floats, at positions[t] (device int32).
  virtual expected<void> rope(float* x, const std::int32_t* positions, std::int64_t n, std::int64_t heads,
                              std::int64_t row_stride, std::int64_t head_dim, float theta, bool inverse) = 0;
  /// SwiGLU (kernels::swiglu_forward / swiglu_backward): y = silu(gate) * up, gate_up [n, 2f].
  virtual expected<void> swiglu_forward(const float* gate_up, float* y, std::int64_t n, std::int64_t f) = 0;
  virtual expected<void> swiglu_backward(const float* dy, const float* gate_up, float* dgate_up, std::int64_t n,
                                         std::int64_t f) = 0;
  virtual expected<void> gelu_forward(const float* x, float* y, std::int64_t count) = 0;
  virtual expected<void> gelu_backward(const float* dy, const float* x, float* dx, std::int64_t count) = 0;
  /// out = a + b (out may alias a or b).
  virtual expected<void> residual_forward(const float* a, const float* b, float* out, std::int64_t count) = 0;
  /// da += dout; db += dout.
  virtual expected<void> residual_backward(const float* dout, float* da, float* db, std::int64_t count) = 0;
  /// y += alpha x.
  virtual expected<void> axpy(float alpha, const float* x, float* y, std::int64_t count) = 0;
  virtual expected<void> scale(float* x, float factor, std::int64_t count) = 0;
  /// f32 <-> bf16 (round to nearest even).
  virtual expected<void> to_bf16(const float* x, std::uint16_t* y, std::int64_t count) = 0;
  virtual expected<void> from_bf16(const std::uint16_t* x, float* y, std::int64_t count) = 0;

  /// Softmax cross-entropy per row, as kernels::cross_entropy_forward_backward: returns the
  /// sum of token losses (waits); dlogits (may be null) = scale * (softmax - onehot).
  /// errc::invalid_argument names the first target outside [0, vocab).
  virtual expected<double> cross_entropy(const float* logits,         // [n, vocab]
                                         const std::int32_t* targets,  // [n]
                                         float* dlogits,               // [n, vocab] or null
                                         std::int64_t n, std::int64_t vocab, float scale) = 0;

  /// One AdamW update over `count` parameters (kernels::adamw_update's arithmetic).
  virtual expected<void> adamw_update(float* param, const float* grad, float* m, float* v, std::int64_t count,
                                      std::int64_t step, const adamw_params& p) = 0;
  /// Sum of squares in double (waits): the squared L2 norm for gradient clipping.
  virtual expected<double> sum_squares(const float* x, std::int64_t count) = 0;
  /// kernels::fingerprint of x[0, count) at positions first_position... (waits): the same value
  /// as on the host, computed without copying the data off the GPU.
  virtual expected<std::uint64_t> fingerprint(const float* x, std::int64_t count, std::uint64_t first_position) = 0;

  // ---- attention (launcher convention) ---------------------------------------------------
  virtual expected<void> can_implement(const attention_forward_args& args) const = 0;
  virtual expected<void> can_implement(const attention_backward_args& args) const = 0;
  /// Workspace in bytes (device memory): the sequence table and tile schedule (backward: also
  /// delta, and for bf16 the fp32 dQ accumulator).
  virtual std::size_t workspace_size(const attention_forward_args& args) const = 0;
  virtual std::size_t workspace_size(const attention_backward_args& args) const = 0;
  /// Queues the pass; `workspace` holds at least workspace_size(args) bytes of device memory.
  virtual expected<void> run(const attention_forward_args& args, void* workspace) = 0;
  virtual expected<void> run(const attention_backward_args& args, void* workspace) = 0;

protected:
  /// A buffer over memory the device just allocated, counted in its ledger.
  buffer track(void* ptr, std::size_t bytes, buffer::release_fn release) const {
    return buffer{ptr, bytes, release, ledger_};
  }
  /// memory_stats::capacity.
  virtual std::uint64_t memory_capacity() const noexcept { return 0; }
  /// Bytes of this device's allocations alive now (memory_stats::in_use).
  std::uint64_t allocated_bytes() const noexcept { return ledger_->in_use(); }

private:
  std::shared_ptr<memory_ledger> ledger_ = std::make_shared<memory_ledger>();
};

/// The host device: host memory and the CPU kernels (one per call; thread-safe for separate
/// buffers, like the CPU kernels).
std::unique_ptr<device> make_host_device();

}  // namespace flexsp::kernels
