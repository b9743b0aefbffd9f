// The host device: device.hpp's interface over host memory and the CPU kernels (ops.hpp,
// attention.hpp). Every op has finished when it returns.
#include <chrono>
#include <cstdlib>
#include <cstring>

#include <unistd.h>

#include "flexsp/kernels/attention.hpp"
#include "flexsp/kernels/device.hpp"

namespace flexsp::kernels {

namespace {

std::size_t sz(std::int64_t v) { return static_cast<std::size_t>(v); }

template <class T>
std::span<const T> in(const T* p, std::int64_t n) {
  return {p, sz(n)};
}
template <class T>
std::span<T> out(T* p, std::int64_t n) {
  return {p, sz(n)};
}

expected<void> check_count(std::int64_t count, std::string_view what) {
  if (count < 0) return make_error(errc::invalid_argument, "{}: negative count {}", what, count);
  return {};
}

expected<void> fp32_only(gemm_math math, std::string_view what) {
  if (math != gemm_math::fp32)
    return make_error(errc::unimplemented, "{}: tf32 arithmetic runs on CUDA devices only", what);
  return {};
}

void release(void* p) noexcept { std::free(p); }

class host_device final : public device {
public:
  bool host_memory() const noexcept override { return true; }
  int index() const noexcept override { return 0; }
  std::string description() const override { return "host memory, CPU kernels"; }
  void* stream() const noexcept override { return nullptr; }

  expected<buffer> allocate(std::size_t bytes) override {
    const std::size_t rounded = (std::max<std::size_t>(bytes, 1) + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, rounded);
    if (p == nullptr) return make_error(errc::overloaded, "host device: cannot allocate {} bytes", bytes);
    return track(p, bytes, &release);
  }
  std::uint64_t memory_capacity() const noexcept override {
    if (const auto fixed = cpu_device_memory(); fixed > 0) return fixed;
    // The physical memory, shared by the CPU devices of this process (add_cpu_devices).
    const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGESIZE);
    if (pages <= 0 || page <= 0) return 0;
    return static_cast<std::uint64_t>(pages) * static_cast<std::uint64_t>(page) /
           static_cast<std::uint64_t>(std::max(1, cpu_devices()));
  }
  expected<void> copy_to_device(void* dst, const void* src, std::size_t bytes) override {
    if (bytes) std::memmove(dst, src, bytes);
    return {};
  }
  expected<void> copy_to_host(void* dst, const void* src, std::size_t bytes) override {
    if (bytes) std::memmove(dst, src, bytes);
    return {};
  }
  expected<void> copy_on_device(void* dst, const void* src, std::size_t bytes) override {
    if (bytes) std::memmove(dst, src, bytes);
    return {};
  }
  expected<void> copy_rows(void* dst, std::size_t dst_pitch, const void* src, std::size_t src_pitch,
                           std::size_t row_bytes, std::size_t rows) override {
    if (row_bytes > dst_pitch || row_bytes > src_pitch)
      return make_error(errc::invalid_argument, "copy_rows: rows of {} bytes exceed the pitches {} / {}", row_bytes,
                        dst_pitch, src_pitch);
    auto* d = static_cast<char*>(dst);
    const auto* s = static_cast<const char*>(src);
    for (std::size_t r = 0; r < rows; ++r) std::memcpy(d + r * dst_pitch, s + r * src_pitch, row_bytes);
    return {};
  }
  expected<void> fill_zero(void* dst, std::size_t bytes) override {
    if (bytes) std::memset(dst, 0, bytes);
    return {};
  }
  expected<void> copy_blocks(float* dst, const float* src, std::span<const row_block> blocks) override {
    kernels::copy_blocks(blocks, src, dst);
    return {};
  }
  expected<void> synchronize() override { return {}; }
  expected<float> time_ms(const std::function<expected<void>()>& body) override {
    const auto t0 = std::chrono::steady_clock::now();
    FLEXSP_TRY(body());
    return std::chrono::duration<float, std::milli>(std::chrono::steady_clock::now() - t0).count();
  }

  expected<void> can_implement(const gemm_args& a) const override {
    if (a.type != dtype::f32) return make_error(errc::unimplemented, "gemm: bf16 operands run on CUDA devices only");
    FLEXSP_TRY(fp32_only(a.math, "gemm"));
    if (a.m < 0 || a.n < 0 || a.k < 0)
      return make_error(errc::invalid_argument, "gemm: negative shape {}x{}x{}", a.m, a.n, a.k);
    return {};
  }
  expected<void> gemm(const gemm_args& a) override {
    FLEXSP_TRY(can_implement(a));
    kernels::gemm(a.trans_a, a.trans_b, a.m, a.n, a.k, a.alpha, static_cast<const float*>(a.a), a.lda,
                  static_cast<const float*>(a.b), a.ldb, a.beta, static_cast<float*>(a.c), a.ldc);
    return {};
  }
  expected<void> linear_forward(const float* x, const float* w, const float* b, float* y, std::int64_t n,
                                std::int64_t in_f, std::int64_t out_f, gemm_math math) override {
    FLEXSP_TRY(fp32_only(math, "linear_forward"));
    kernels::linear_forward(in(x, n * in_f), in(w, in_f * out_f), b ? in(b, out_f) : std::span<const float>{},
                            out(y, n * out_f), n, in_f, out_f);
    return {};
  }
  expected<void> linear_backward(const float* dy, const float* x, const float* w, float* dx, float* dw, float* db,
                                 std::int64_t n, std::int64_t in_f, std::int64_t out_f, gemm_math math) override {
    FLEXSP_TRY(fp32_only(math, "linear_backward"));
    kernels::linear_backward(in(dy, n * out_f), in(x, n * in_f), in(w, in_f * out_f),
                             dx ? out(dx, n * in_f) : std::span<float>{}, out(dw, in_f * out_f),
                             db ? out(db, out_f) : std::span<float>{}, n, in_f, out_f);
    return {};
  }

  expected<void> embedding_forward(const std::int32_t* tokens, const std::int32_t* positions, const float* wte,
                                   const float* wpe, float* o, std::int64_t n, std::int64_t d, std::int64_t vocab,
                                   std::int64_t max_pos) override {
    if (wpe == nullptr)  // no position table: the positions must still fit the model
      for (std::int64_t t = 0; t < n; ++t)
        if (positions[t] < 0 || positions[t] >= max_pos)
          return make_error(errc::invalid_argument, "position {} at index {} outside [0, {}) (max positions)",
                            positions[t], t, max_pos);
    return kernels::embedding_forward(in(tokens, n), in(positions, n), in(wte, vocab * d),
                                      wpe ? in(wpe, max_pos * d) : std::span<const float>{}, out(o, n * d), d);
  }
  expected<void> embedding_backward(const std::int32_t* tokens, const std::int32_t* positions, const float* dout,
                                    float* dwte, float* dwpe, std::int64_t n, std::int64_t d) override {
    // The tables' sizes are not passed: ids were checked by the forward pass, so the spans
    // only need to reach the largest id.
    std::int64_t top_token = 0, top_position = 0;
    for (std::int64_t t = 0; t < n; ++t) {
      top_token = std::max<std::int64_t>(top_token, tokens[t] + 1);
      top_position = std::max<std::int64_t>(top_position, positions[t] + 1);
    }
    kernels::embedding_backward(in(tokens, n), in(positions, n), in(dout, n * d), out(dwte, top_token * d),
                                dwpe ? out(dwpe, top_position * d) : std::span<float>{}, d);
    return {};
  }
  expected<void> layernorm_forward(const float* x, const float* gamma, const float* beta, float* y, float* mean,
                                   float* rstd, std::int64_t n, std::int64_t d) override {
    kernels::layernorm_forward(in(x, n * d), in(gamma, d), in(beta, d), out(y, n * d), out(mean, n), out(rstd, n), d);
    return {};
  }
  expected<void> layernorm_backward(const float* dy, const float* x, const float* gamma, const float* mean,
                                    const float* rstd, float* dx, float* dgamma, float* dbeta, std::int64_t n,
                                    std::int64_t d) override {
    kernels::layernorm_backward(in(dy, n * d), in(x, n * d), in(gamma, d), in(mean, n), in(rstd, n), out(dx, n * d),
                                out(dgamma, d), out(dbeta, d), d);
    return {};
  }
  expected<void> rmsnorm_forward(const float* x, const float* gamma, float* y, float* rstd, std::int64_t n,
                                 std::int64_t d, float eps) override {
    FLEXSP_TRY(check_count(n, "rmsnorm_forward"));
    kernels::rmsnorm_forward(in(x, n * d), in(gamma, d), out(y, n * d), out(rstd, n), d, eps);
    return {};
  }
  expected<void> rmsnorm_backward(const float* dy, const float* x, const float* gamma, const float* rstd, float* dx,
                                  float* dgamma, std::int64_t n, std::int64_t d) override {
    FLEXSP_TRY(check_count(n, "rmsnorm_backward"));
    kernels::rmsnorm_backward(in(dy, n * d), in(x, n * d), in(gamma, d), in(rstd, n), out(dx, n * d), out(dgamma, d),
                              d);
    return {};
  }
  expected<void> rope(float* x, const std::int32_t* positions, std::int64_t n, std::int64_t heads,
                      std::int64_t row_stride, std::int64_t head_dim, float theta, bool inverse) override {
    FLEXSP_TRY(check_count(n, "rope"));
    if (head_dim % 2 != 0 || heads * head_dim > row_stride)
      return make_error(errc::invalid_argument, "rope: {} heads of {} (even) must fit rows of {}", heads, head_dim,
                        row_stride);
    kernels::rope(out(x, n * row_stride), in(positions, n), heads, row_stride, head_dim, theta, inverse);
    return {};
  }
  expected<void> swiglu_forward(const float* gate_up, float* y, std::int64_t n, std::int64_t f) override {
    FLEXSP_TRY(check_count(n, "swiglu_forward"));
    kernels::swiglu_forward(in(gate_up, 2 * n * f), out(y, n * f), f);
    return {};
  }
  expected<void> swiglu_backward(const float* dy, const float* gate_up, float* dgate_up, std::int64_t n,
                                 std::int64_t f) override {
    FLEXSP_TRY(check_count(n, "swiglu_backward"));
    kernels::swiglu_backward(in(dy, n * f), in(gate_up, 2 * n * f), out(dgate_up, 2 * n * f), f);
    return {};
  }
  expected<void> gelu_forward(const float* x, float* y, std::int64_t count) override {
    FLEXSP_TRY(check_count(count, "gelu_forward"));
    kernels::gelu_forward(in(x, count), out(y, count));
    return {};
  }
  expected<void> gelu_backward(const float* dy, const float* x, float* dx, std::int64_t count) override {
    FLEXSP_TRY(check_count(count, "gelu_backward"));
    kernels::gelu_backward(in(dy, count), in(x, count), out(dx, count));
    return {};
  }
  expected<void> residual_forward(const float* a, const float* b, float* o, std::int64_t count) override {
    FLEXSP_TRY(check_count(count, "residual_forward"));
    kernels::residual_forward(in(a, count), in(b, count), out(o, count));
    return {};
  }
  expected<void> residual_backward(const float* dout, float* da, float* db, std::int64_t count) override {
    FLEXSP_TRY(check_count(count, "residual_backward"));
    kernels::residual_backward(in(dout, count), out(da, count), out(db, count));
    return {};
  }
  expected<void> axpy(float alpha, const float* x, float* y, std::int64_t count) override {
    FLEXSP_TRY(check_count(count, "axpy"));
    for (std::int64_t i = 0; i < count; ++i) y[i] += alpha * x[i];
    return {};
  }
  expected<void> scale(float* x, float factor, std::int64_t count) override {
    FLEXSP_TRY(check_count(count, "scale"));
    for (std::int64_t i = 0; i < count; ++i) x[i] *= factor;
    return {};
  }
  expected<void> to_bf16(const float* x, std::uint16_t* y, std::int64_t count) override {
    FLEXSP_TRY(check_count(count, "to_bf16"));
    for (std::int64_t i = 0; i < count; ++i) y[i] = kernels::to_bf16(x[i]);
    return {};
  }
  expected<void> from_bf16(const std::uint16_t* x, float* y, std::int64_t count) override {
    FLEXSP_TRY(check_count(count, "from_bf16"));
    for (std::int64_t i = 0; i < count; ++i) y[i] = kernels::from_bf16(x[i]);
    return {};
  }
  expected<double> cross_entropy(const float* logits, const std::int32_t* targets, float* dlogits, std::int64_t n,
                                 std::int64_t vocab, float loss_scale) override {
    return kernels::cross_entropy_forward_backward(in(logits, n * vocab), in(targets, n),
                                                   dlogits ? out(dlogits, n * vocab) : std::span<float>{}, vocab,
                                                   loss_scale);
  }
  expected<void> adamw_update(float* param, const float* grad, float* m, float* v, std::int64_t count,
                              std::int64_t step, const adamw_params& p) override {
    FLEXSP_TRY(check_count(count, "adamw_update"));
    kernels::adamw_update(out(param, count), in(grad, count), out(m, count), out(v, count), step, p);
    return {};
  }
  expected<double> sum_squares(const float* x, std::int64_t count) override {
    FLEXSP_TRY(check_count(count, "sum_squares"));
    double s = 0;
    for (std::int64_t i = 0; i < count; ++i) s += static_cast<double>(x[i]) * x[i];
    return s;
  }
  expected<std::uint64_t> fingerprint(const float* x, std::int64_t count, std::uint64_t first_position) override {
    FLEXSP_TRY(check_count(count, "fingerprint"));
    return kernels::fingerprint(in(x, count), first_position);
  }

  expected<void> can_implement(const attention_forward_args& a) const override {
    if (a.type != dtype::f32) return make_error(errc::unimplemented, "attention: bf16 runs on CUDA devices only");
    return attention::can_implement(host_args(a));
  }
  expected<void> can_implement(const attention_backward_args& a) const override {
    if (a.type != dtype::f32) return make_error(errc::unimplemented, "attention: bf16 runs on CUDA devices only");
    return attention::can_implement(host_args(a));
  }
  std::size_t workspace_size(const attention_forward_args& a) const override {
    return sz(attention::workspace_size(host_args(a))) * sizeof(float);
  }
  std::size_t workspace_size(const attention_backward_args& a) const override {
    return sz(attention::workspace_size(host_args(a))) * sizeof(float);
  }
  expected<void> run(const attention_forward_args& a, void* workspace) override {
    FLEXSP_TRY(can_implement(a));
    const auto h = host_args(a);
    attention::run(h, {static_cast<float*>(workspace), sz(attention::workspace_size(h))});
    return {};
  }
  expected<void> run(const attention_backward_args& a, void* workspace) override {
    FLEXSP_TRY(can_implement(a));
    const auto h = host_args(a);
    attention::run(h, {static_cast<float*>(workspace), sz(attention::workspace_size(h))});
    return {};
  }

private:
  static attention::forward_args host_args(const attention_forward_args& a) {
    attention::forward_args h;
    h.cu_seqlens = a.cu_seqlens;
    h.heads = a.heads;
    h.head_dim = a.head_dim;
    h.q = static_cast<const float*>(a.q);
    h.k = static_cast<const float*>(a.k);
    h.v = static_cast<const float*>(a.v);
    h.out = static_cast<float*>(a.out);
    h.lse = a.lse;
    h.threads = cpu_math_threads();  // the device's share of the cores, as its GEMMs
    return h;
  }
  static attention::backward_args host_args(const attention_backward_args& a) {
    attention::backward_args h;
    h.cu_seqlens = a.cu_seqlens;
    h.heads = a.heads;
    h.head_dim = a.head_dim;
    h.q = static_cast<const float*>(a.q);
    h.k = static_cast<const float*>(a.k);
    h.v = static_cast<const float*>(a.v);
    h.out = static_cast<const float*>(a.out);
    h.lse = a.lse;
    h.dout = static_cast<const float*>(a.dout);
    h.dq = static_cast<float*>(a.dq);
    h.dk = static_cast<float*>(a.dk);
    h.dv = static_cast<float*>(a.dv);
    h.threads = cpu_math_threads();
    return h;
  }
};

}  // namespace

std::unique_ptr<device> make_host_device() { return std::make_unique<host_device>(); }

}  // namespace flexsp::kernels
