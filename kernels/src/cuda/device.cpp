// The CUDA implementation of gpu::device: argument checks on the host, then launches.
#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <vector>

#include "cuda_check.hpp"
#include "cuda_entry.hpp"
#include "device_buffer.hpp"
#include "handles.hpp"
#include "launch.hpp"
#include "libraries.hpp"

namespace flexsp::kernels::cuda {

namespace {

std::size_t sz(std::int64_t v) { return static_cast<std::size_t>(v); }

void release_device_memory(void* ptr) noexcept { ::cudaFree(ptr); }  // a failed free cannot be handled

expected<void> need(bool ok, const char* what, std::string_view op) {
  if (!ok) return make_error(errc::invalid_argument, "{}: {}", op, what);
  return {};
}

expected<void> need_count(std::int64_t n, const char* name, std::string_view op) {
  if (n < 0) return make_error(errc::invalid_argument, "{}: {} = {} is negative", op, name, n);
  return {};
}

std::size_t align256(std::size_t bytes) { return (bytes + 255) / 256 * 256; }

template <class Args>
expected<void> check_attention_common(const Args& a, std::string_view op) {
  if (a.cu_seqlens.empty() || a.cu_seqlens[0] != 0)
    return make_error(errc::invalid_argument, "{}: cu_seqlens must start with 0 (size {})", op, a.cu_seqlens.size());
  for (std::size_t i = 1; i < a.cu_seqlens.size(); ++i) {
    if (a.cu_seqlens[i] < a.cu_seqlens[i - 1])
      return make_error(errc::invalid_argument, "{}: cu_seqlens decreases at index {} ({} < {})", op, i,
                        a.cu_seqlens[i], a.cu_seqlens[i - 1]);
    if (a.cu_seqlens[i] - a.cu_seqlens[i - 1] > INT32_MAX / 2)
      return make_error(errc::invalid_argument, "{}: sequence {} has {} tokens (at most {})", op, i - 1,
                        a.cu_seqlens[i] - a.cu_seqlens[i - 1], INT32_MAX / 2);
  }
  if (a.type != gpu::dtype::f32 && a.type != gpu::dtype::bf16)
    return make_error(errc::invalid_argument, "{}: element type {} is neither f32 nor bf16", op,
                      static_cast<int>(a.type));
  if (a.heads < 0 || a.heads > 65535)
    return make_error(errc::invalid_argument, "{}: heads = {} (0..65535)", op, a.heads);
  if (a.head_dim <= 0 || a.head_dim > gpu::kMaxAttentionHeadDim)
    return make_error(errc::invalid_argument, "{}: head_dim = {} (1..{})", op, a.head_dim,
                      gpu::kMaxAttentionHeadDim);
  return {};
}

// (sequence, first row) of every tile, costliest first: in the causal forward a query tile's
// work grows with its start; in the backward a key tile's work grows with the rows after it.
std::vector<std::int32_t> tile_schedule(std::span<const std::int64_t> cu, int tile, bool forward) {
  struct item {
    std::int32_t seq, start;
    std::int64_t cost;
  };
  std::vector<item> items;
  for (std::size_t s = 0; s + 1 < cu.size(); ++s) {
    const std::int64_t len = cu[s + 1] - cu[s];
    for (std::int64_t r = 0; r < len; r += tile)
      items.push_back({static_cast<std::int32_t>(s), static_cast<std::int32_t>(r), forward ? r + tile : len - r});
  }
  std::stable_sort(items.begin(), items.end(), [](const item& x, const item& y) { return x.cost > y.cost; });
  std::vector<std::int32_t> flat;
  flat.reserve(items.size() * 2);
  for (const auto& it : items) {
    flat.push_back(it.seq);
    flat.push_back(it.start);
  }
  return flat;
}

std::size_t tile_count(std::span<const std::int64_t> cu, int tile) {
  std::size_t n = 0;
  for (std::size_t s = 0; s + 1 < cu.size(); ++s) n += sz((cu[s + 1] - cu[s] + tile - 1) / tile);
  return n;
}

class cuda_device final : public gpu::device {
public:
  cuda_device(int index, std::string description, cuda::stream s, const cublas_api* blas, cublasHandle_t handle,
              device_buffer<std::int32_t> flag, device_buffer<double> scalar)
      : index_{index}, description_{std::move(description)}, stream_{std::move(s)}, blas_{blas}, handle_{handle},
        flag_{std::move(flag)}, scalar_{std::move(scalar)} {}
  ~cuda_device() override {
    if (handle_ != nullptr) blas_->destroy(handle_);
  }
  cuda_device(const cuda_device&) = delete;
  cuda_device& operator=(const cuda_device&) = delete;

  int index() const noexcept override { return index_; }
  std::string description() const override { return description_; }
  void* stream() const noexcept override { return stream_.get(); }

  expected<gpu::buffer> allocate(std::size_t bytes) override {
    FLEXSP_TRY(current());
    void* ptr = nullptr;
    if (bytes == 0) return gpu::buffer{};
    if (const auto rc = ::cudaMalloc(&ptr, bytes); rc != cudaSuccess) {
      ::cudaGetLastError();
      return make_error(rc == cudaErrorMemoryAllocation ? errc::overloaded : errc::failed,
                        "cudaMalloc of {} bytes on GPU {} failed: {}", bytes, index_, ::cudaGetErrorString(rc));
    }
    return track(ptr, bytes, &release_device_memory);
  }
  std::uint64_t memory_capacity() const noexcept override {
    std::size_t free_bytes = 0, total = 0;
    if (!current() || ::cudaMemGetInfo(&free_bytes, &total) != cudaSuccess) {
      ::cudaGetLastError();
      return 0;
    }
    // What this device could hold: its own allocations plus what is free now (other processes
    // may use the GPU too), never more than the GPU has.
    return std::min<std::uint64_t>(total, free_bytes + allocated_bytes());
  }

  expected<void> copy_to_device(void* dst, const void* src, std::size_t bytes) override {
    if (bytes == 0) return {};
    FLEXSP_TRY(need(dst != nullptr && src != nullptr, "null pointer", "copy_to_device"));
    FLEXSP_TRY(current());
    FLEXSP_CUDA_CHECK(::cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_.get()));
    // The caller may reuse `src` once we return: wait for pageable and pinned sources alike.
    FLEXSP_CUDA_CHECK(::cudaStreamSynchronize(stream_.get()));
    return {};
  }
  expected<void> copy_to_host(void* dst, const void* src, std::size_t bytes) override {
    if (bytes == 0) return {};
    FLEXSP_TRY(need(dst != nullptr && src != nullptr, "null pointer", "copy_to_host"));
    FLEXSP_TRY(current());
    FLEXSP_CUDA_CHECK(::cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream_.get()));
    FLEXSP_CUDA_CHECK(::cudaStreamSynchronize(stream_.get()));
    return {};
  }
  expected<void> copy_on_device(void* dst, const void* src, std::size_t bytes) override {
    if (bytes == 0) return {};
    FLEXSP_TRY(need(dst != nullptr && src != nullptr, "null pointer", "copy_on_device"));
    FLEXSP_TRY(current());
    FLEXSP_CUDA_CHECK(::cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_.get()));
    return {};
  }
  expected<void> copy_rows(void* dst, std::size_t dst_pitch, const void* src, std::size_t src_pitch,
                           std::size_t row_bytes, std::size_t rows) override {
    if (rows == 0 || row_bytes == 0) return {};
    FLEXSP_TRY(need(dst != nullptr && src != nullptr, "null pointer", "copy_rows"));
    FLEXSP_TRY(need(dst_pitch >= row_bytes && src_pitch >= row_bytes, "pitch smaller than a row", "copy_rows"));
    FLEXSP_TRY(current());
    FLEXSP_CUDA_CHECK(::cudaMemcpy2DAsync(dst, dst_pitch, src, src_pitch, row_bytes, rows, cudaMemcpyDeviceToDevice,
                                          stream_.get()));
    return {};
  }
  expected<void> copy_blocks(float* dst, const float* src, std::span<const row_block> blocks) override {
    static_assert(sizeof(row_block) == sizeof(copy_block) && alignof(row_block) == alignof(copy_block));
    bool any = false;
    for (std::size_t i = 0; i < blocks.size(); ++i) {
      const auto& b = blocks[i];
      if (b.src_offset < 0 || b.dst_offset < 0 || b.src_pitch < 0 || b.dst_pitch < 0 || b.rows < 0 || b.row_len < 0)
        return make_error(errc::invalid_argument, "copy_blocks: block {} has a negative field", i);
      if (b.rows > 1 && (b.src_pitch < b.row_len || b.dst_pitch < b.row_len))
        return make_error(errc::invalid_argument, "copy_blocks: block {} has a pitch smaller than its rows", i);
      any = any || b.rows * b.row_len > 0;
    }
    if (!any) return {};
    FLEXSP_TRY(need(dst != nullptr && src != nullptr, "null pointer", "copy_blocks"));
    if (blocks.size() > static_cast<std::size_t>(INT32_MAX))
      return make_error(errc::invalid_argument, "copy_blocks: {} blocks", blocks.size());
    FLEXSP_TRY(current());
    if (blocks_.size() < blocks.size()) {
      blocks_ = device_buffer<copy_block>{};
      FLEXSP_TRY_ASSIGN(blocks_, device_buffer<copy_block>::allocate(std::max<std::size_t>(blocks.size(), 256)));
    }
    FLEXSP_CUDA_CHECK(::cudaMemcpyAsync(blocks_.data(), blocks.data(), blocks.size_bytes(), cudaMemcpyHostToDevice,
                                        stream_.get()));
    FLEXSP_CUDA_CHECK(launch_copy_blocks(src, dst, blocks_.data(), static_cast<int>(blocks.size()), stream_.get()));
    return {};
  }
  expected<void> fill_zero(void* dst, std::size_t bytes) override {
    if (bytes == 0) return {};
    FLEXSP_TRY(need(dst != nullptr, "null pointer", "fill_zero"));
    FLEXSP_TRY(current());
    FLEXSP_CUDA_CHECK(::cudaMemsetAsync(dst, 0, bytes, stream_.get()));
    return {};
  }
  expected<void> synchronize() override {
    FLEXSP_TRY(current());
    FLEXSP_CUDA_CHECK(::cudaStreamSynchronize(stream_.get()));
    return {};
  }
  expected<float> time_ms(const std::function<expected<void>()>& body) override {
    FLEXSP_TRY(current());
    FLEXSP_TRY_ASSIGN(auto start, event::create());
    FLEXSP_TRY_ASSIGN(auto stop, event::create());
    FLEXSP_CUDA_CHECK(::cudaEventRecord(start.get(), stream_.get()));
    FLEXSP_TRY(body());
    FLEXSP_CUDA_CHECK(::cudaEventRecord(stop.get(), stream_.get()));
    FLEXSP_CUDA_CHECK(::cudaEventSynchronize(stop.get()));
    float ms = 0;
    FLEXSP_CUDA_CHECK(::cudaEventElapsedTime(&ms, start.get(), stop.get()));
    return ms;
  }

  // ---- GEMM ----
  expected<void> can_implement(const gpu::gemm_args& g) const override {
    constexpr std::string_view op = "gemm";
    if (g.m < 0 || g.n < 0 || g.k < 0 || g.m > INT_MAX || g.n > INT_MAX || g.k > INT_MAX)
      return make_error(errc::invalid_argument, "gemm: m={} n={} k={} (each 0..{})", g.m, g.n, g.k, INT_MAX);
    const std::int64_t a_cols = g.trans_a ? g.m : g.k, b_cols = g.trans_b ? g.k : g.n;
    if (g.lda < std::max<std::int64_t>(1, a_cols) || g.lda > INT_MAX)
      return make_error(errc::invalid_argument, "gemm: lda={} < {} (row length of A)", g.lda, a_cols);
    if (g.ldb < std::max<std::int64_t>(1, b_cols) || g.ldb > INT_MAX)
      return make_error(errc::invalid_argument, "gemm: ldb={} < {} (row length of B)", g.ldb, b_cols);
    if (g.ldc < std::max<std::int64_t>(1, g.n) || g.ldc > INT_MAX)
      return make_error(errc::invalid_argument, "gemm: ldc={} < n={}", g.ldc, g.n);
    if (g.m > 0 && g.n > 0) {
      FLEXSP_TRY(need(g.c != nullptr, "C is null", op));
      if (g.k > 0) FLEXSP_TRY(need(g.a != nullptr && g.b != nullptr, "A or B is null", op));
    }
    if (g.type == gpu::dtype::bf16 && g.math == gpu::gemm_math::tf32)
      return make_error(errc::invalid_argument, "gemm: tf32 math applies to f32 operands only");
    return {};
  }

  expected<void> gemm(const gpu::gemm_args& g) override {
    FLEXSP_TRY(can_implement(g));
    if (g.m == 0 || g.n == 0) return {};
    FLEXSP_TRY(current());
    const cudaDataType t = g.type == gpu::dtype::f32 ? CUDA_R_32F : CUDA_R_16BF;
    const cublasComputeType_t compute = g.type == gpu::dtype::f32 && g.math == gpu::gemm_math::tf32
                                            ? CUBLAS_COMPUTE_32F_FAST_TF32
                                            : CUBLAS_COMPUTE_32F;
    // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the operands.
    FLEXSP_CUBLAS_CHECK(blas_->gemm_ex(handle_, g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                                       g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, static_cast<int>(g.n),
                                       static_cast<int>(g.m), static_cast<int>(g.k), &g.alpha, g.b, t,
                                       static_cast<int>(g.ldb), g.a, t, static_cast<int>(g.lda), &g.beta, g.c, t,
                                       static_cast<int>(g.ldc), compute, CUBLAS_GEMM_DEFAULT));
    return {};
  }

  expected<void> linear_forward(const float* x, const float* w, const float* b, float* y, std::int64_t n,
                                std::int64_t in, std::int64_t out, gpu::gemm_math math) override {
    constexpr std::string_view op = "linear_forward";
    FLEXSP_TRY(need(n >= 0 && in > 0 && out > 0, "n must be >= 0 and in, out > 0", op));
    if (n == 0) return {};
    FLEXSP_TRY(need(x && w && y, "null x, w or y", op));
    FLEXSP_TRY(current());
    if (b != nullptr) FLEXSP_CUDA_CHECK(launch_broadcast_rows(b, y, n, out, stream_.get()));
    return gemm({.m = n, .n = out, .k = in, .a = x, .lda = in, .b = w, .ldb = out, .beta = b ? 1.0f : 0.0f,
                 .c = y, .ldc = out, .math = math});
  }

  expected<void> linear_backward(const float* dy, const float* x, const float* w, float* dx, float* dw, float* db,
                                 std::int64_t n, std::int64_t in, std::int64_t out, gpu::gemm_math math) override {
    constexpr std::string_view op = "linear_backward";
    FLEXSP_TRY(need(n >= 0 && in > 0 && out > 0, "n must be >= 0 and in, out > 0", op));
    if (n == 0) return {};
    FLEXSP_TRY(need(dy && x && w && dw, "null dy, x, w or dw", op));
    FLEXSP_TRY(current());
    if (dx != nullptr)
      FLEXSP_TRY(gemm({.trans_b = true, .m = n, .n = in, .k = out, .a = dy, .lda = out, .b = w, .ldb = out,
                       .c = dx, .ldc = in, .math = math}));
    FLEXSP_TRY(gemm({.trans_a = true, .m = in, .n = out, .k = n, .a = x, .lda = in, .b = dy, .ldb = out,
                     .beta = 1.0f, .c = dw, .ldc = out, .math = math}));
    if (db != nullptr) FLEXSP_CUDA_CHECK(launch_column_sums_add(dy, db, n, out, stream_.get()));
    return {};
  }

  // ---- element-wise ----
  expected<void> embedding_forward(const std::int32_t* tokens, const std::int32_t* positions, const float* wte,
                                   const float* wpe, float* out, std::int64_t n, std::int64_t d, std::int64_t vocab,
                                   std::int64_t max_pos) override {
    constexpr std::string_view op = "embedding_forward";
    FLEXSP_TRY(need(n >= 0 && n <= INT32_MAX && d > 0 && vocab > 0 && max_pos > 0,
                    "n in [0, 2^31), d, vocab, max_pos > 0", op));
    if (n == 0) return {};
    FLEXSP_TRY(need(tokens && positions && wte && out, "null pointer", op));
    FLEXSP_TRY(current());
    const std::int32_t none = INT32_MAX;
    FLEXSP_CUDA_CHECK(::cudaMemcpyAsync(flag_.data(), &none, sizeof none, cudaMemcpyHostToDevice, stream_.get()));
    FLEXSP_CUDA_CHECK(launch_embedding_forward(tokens, positions, wte, wpe, out, n, d, vocab, max_pos, flag_.data(),
                                               stream_.get()));
    std::int32_t bad = none;
    FLEXSP_CUDA_CHECK(::cudaMemcpyAsync(&bad, flag_.data(), sizeof bad, cudaMemcpyDeviceToHost, stream_.get()));
    FLEXSP_CUDA_CHECK(::cudaStreamSynchronize(stream_.get()));
    if (bad != none) {
      std::int32_t tok = 0, pos = 0;
      FLEXSP_CUDA_CHECK(::cudaMemcpy(&tok, tokens + bad, sizeof tok, cudaMemcpyDeviceToHost));
      FLEXSP_CUDA_CHECK(::cudaMemcpy(&pos, positions + bad, sizeof pos, cudaMemcpyDeviceToHost));
      if (tok < 0 || tok >= vocab)
        return make_error(errc::invalid_argument, "token id {} at index {} outside vocabulary [0, {})", tok, bad, vocab);
      return make_error(errc::invalid_argument, "position {} at index {} outside [0, {}) (max positions)", pos, bad,
                        max_pos);
    }
    return {};
  }

  expected<void> embedding_backward(const std::int32_t* tokens, const std::int32_t* positions, const float* dout,
                                    float* dwte, float* dwpe, std::int64_t n, std::int64_t d) override {
    constexpr std::string_view op = "embedding_backward";
    FLEXSP_TRY(need(n >= 0 && d > 0, "n >= 0, d > 0", op));
    if (n == 0) return {};
    FLEXSP_TRY(need(tokens && positions && dout && dwte, "null pointer", op));
    FLEXSP_TRY(current());
    FLEXSP_CUDA_CHECK(launch_embedding_backward(tokens, positions, dout, dwte, dwpe, n, d, stream_.get()));
    return {};
  }

  expected<void> layernorm_forward(const float* x, const float* gamma, const float* beta, float* y, float* mean,
                                   float* rstd, std::int64_t n, std::int64_t d) override {
    constexpr std::string_view op = "layernorm_forward";
    FLEXSP_TRY(need(n >= 0 && d > 0, "n >= 0, d > 0", op));
    if (n == 0) return {};
    FLEXSP_TRY(need(x && gamma && beta && y && mean && rstd, "null pointer", op));
    FLEXSP_TRY(current());
    FLEXSP_CUDA_CHECK(launch_layernorm_forward(x, gamma, beta, y, mean, rstd, n, d, kLayerNormEps, stream_.get()));
    return {};
  }

  expected<void> layernorm_backward(const float* dy, const float* x, const float* gamma, const float* mean,
                                    const float* rstd, float* dx, float* dgamma, float* dbeta, std::int64_t n,
                                    std::int64_t d) override {
    constexpr std::string_view op = "layernorm_backward";
    FLEXSP_TRY(need(n >= 0 && d > 0, "n >= 0, d > 0", op));
    if (n == 0) return {};
    FLEXSP_TRY(need(dy && x && gamma && mean && rstd && dx && dgamma && dbeta, "null pointer", op));
    FLEXSP_TRY(current());
    FLEXSP_CUDA_CHECK(launch_layernorm_backward(dy, x, gamma, mean, rstd, dx, dgamma, dbeta, n, d, stream_.get()));
    return {};
  }

  expected<void> rmsnorm_forward(const float* x, const float* gamma, float* y, float* rstd, std::int64_t n,
                                 std::int64_t d, float eps) override {
    constexpr std::string_view op = "rmsnorm_forward";
    FLEXSP_TRY(need(n >= 0 && d > 0, "n >= 0, d > 0", op));
    if (n == 0) return {};
    FLEXSP_TRY(need(x && gamma && y && rstd, "null pointer", op));
    FLEXSP_TRY(current());
    FLEXSP_CUDA_CHECK(launch_rmsnorm_forward(x, gamma, y, rstd, n, d, eps, stream_.get()));
    return {};
  }
  expected<void> rmsnorm_backward(const float* dy, const float* x, const float* gamma, const float* rstd, float* dx,
                                  float* dgamma, std::int64_t n, std::int64_t d) override {
    constexpr std::string_view op = "rmsnorm_backward";
    FLEXSP_TRY(need(n >= 0 && d > 0, "n >= 0, d > 0", op));
    if (n == 0) return {};
    FLEXSP_TRY(need(dy && x && gamma && rstd && dx && dgamma, "null pointer", op));
    FLEXSP_TRY(current());
    FLEXSP_CUDA_CHECK(launch_rmsnorm_backward(dy, x, gamma, rstd, dx, dgamma, n, d, stream_.get()));
    return {};
  }
  expected<void> rope(float* x, const std::int32_t* positions, std::int64_t n, std::int64_t heads,
                      std::int64_t row_stride, std::int64_t head_dim, float theta, bool inverse) override {
    constexpr std::string_view op = "rope";
    FLEXSP_TRY(need(n >= 0 && heads >= 0 && head_dim > 0 && head_dim % 2 == 0 && heads * head_dim <= row_stride,
                    "n, heads >= 0, head_dim even, heads * head_dim <= row_stride", op));
    if (n == 0 || heads == 0) return {};
    FLEXSP_TRY(need(x && positions, "null pointer", op));
    FLEXSP_TRY(current());
    FLEXSP_CUDA_CHECK(launch_rope(x, positions, n, heads, row_stride, head_dim, theta, inverse, stream_.get()));
    return {};
  }
  expected<void> swiglu_forward(const float* gate_up, float* y, std::int64_t n, std::int64_t f) override {
    constexpr std::string_view op = "swiglu_forward";
    FLEXSP_TRY(need(n >= 0 && f > 0, "n >= 0, f > 0", op));
    if (n == 0) return {};
    FLEXSP_TRY(need(gate_up && y, "null pointer", op));
    FLEXSP_TRY(current());
    FLEXSP_CUDA_CHECK(launch_swiglu_forward(gate_up, y, n, f, stream_.get()));
    return {};
  }
  expected<void> swiglu_backward(const float* dy, const float* gate_up, float* dgate_up, std::int64_t n,
                                 std::int64_t f) override {
    constexpr std::string_view op = "swiglu_backward";
    FLEXSP_TRY(need(n >= 0 && f > 0, "n >= 0, f > 0", op));
    if (n == 0) return {};
    FLEXSP_TRY(need(dy && gate_up && dgate_up, "null pointer", op));
    FLEXSP_TRY(current());
    FLEXSP_CUDA_CHECK(launch_swiglu_backward(dy, gate_up, dgate_up, n, f, stream_.get()));
    return {};
  }
  expected<void> gelu_forward(const float* x, float* y, std::int64_t count) override {
    FLEXSP_TRY(need_count(count, "count", "gelu_forward"));
    if (count == 0) return {};
    FLEXSP_TRY(need(x && y, "null pointer", "gelu_forward"));
    FLEXSP_TRY(current());
    FLEXSP_CUDA_CHECK(launch_gelu_forward(x, y, sz(count), stream_.get()));
    return {};
  }
  expected<void> gelu_backward(const float* dy, const float* x, float* dx, std::int64_t count) override {
    FLEXSP_TRY(need_count(count, "count", "gelu_backward"));
    if (count == 0) return {};
    FLEXSP_TRY(need(dy && x && dx, "null pointer", "gelu_backward"));
    FLEXSP_TRY(current());
    FLEXSP_CUDA_CHECK(launch_gelu_backward(dy, x, dx, sz(count), stream_.get()));
    return {};
  }
  expected<void> residual_forward(const float* a, const float* b, float* out, std::int64_t count) override {
    FLEXSP_TRY(need_count(count, "count", "residual_forward"));
    if (count == 0) return {};
    FLEXSP_TRY(need(a && b && out, "null pointer", "residual_forward"));
    FLEXSP_TRY(current());
    FLEXSP_CUDA_CHECK(launch_add(a, b, out, sz(count), stream_.get()));
    return {};
  }
  expected<void> residual_backward(const float* dout, float* da, float* db, std::int64_t count) override {
    FLEXSP_TRY(need_count(count, "count", "residual_backward"));
    if (count == 0) return {};
    FLEXSP_TRY(need(dout && da && db, "null pointer", "residual_backward"));
    FLEXSP_TRY(need(da != db, "da and db must not alias", "residual_backward"));
    FLEXSP_TRY(current());
    FLEXSP_CUDA_CHECK(launch_accumulate2(dout, da, db, sz(count), stream_.get()));
    return {};
  }
  expected<void> axpy(float alpha, const float* x, float* y, std::int64_t count) override {
    FLEXSP_TRY(need_count(count, "count", "axpy"));
    if (count == 0) return {};
    FLEXSP_TRY(need(x && y, "null pointer", "axpy"));
    FLEXSP_TRY(current());
    FLEXSP_CUDA_CHECK(launch_axpy(alpha, x, y, sz(count), stream_.get()));
    return {};
  }
  expected<void> scale(float* x, float factor, std::int64_t count) override {
    FLEXSP_TRY(need_count(count, "count", "scale"));
    if (count == 0) return {};
    FLEXSP_TRY(need(x != nullptr, "null pointer", "scale"));
    FLEXSP_TRY(current());
    FLEXSP_CUDA_CHECK(launch_scale(x, factor, sz(count), stream_.get()));
    return {};
  }
  expected<void> to_bf16(const float* x, std::uint16_t* y, std::int64_t count) override {
    FLEXSP_TRY(need_count(count, "count", "to_bf16"));
    if (count == 0) return {};
    FLEXSP_TRY(need(x && y, "null pointer", "to_bf16"));
    FLEXSP_TRY(current());
    FLEXSP_CUDA_CHECK(launch_to_bf16(x, y, sz(count), stream_.get()));
    return {};
  }
  expected<void> from_bf16(const std::uint16_t* x, float* y, std::int64_t count) override {
    FLEXSP_TRY(need_count(count, "count", "from_bf16"));
    if (count == 0) return {};
    FLEXSP_TRY(need(x && y, "null pointer", "from_bf16"));
    FLEXSP_TRY(current());
    FLEXSP_CUDA_CHECK(launch_from_bf16(x, y, sz(count), stream_.get()));
    return {};
  }

  expected<double> cross_entropy(const float* logits, const std::int32_t* targets, float* dlogits, std::int64_t n,
                                 std::int64_t vocab, float scale) override {
    constexpr std::string_view op = "cross_entropy";
    FLEXSP_TRY(need(n >= 0 && n <= INT32_MAX && vocab > 0, "n in [0, 2^31), vocab > 0", op));
    if (n == 0) return 0.0;
    FLEXSP_TRY(need(logits && targets, "null logits or targets", op));
    FLEXSP_TRY(current());
    const std::int32_t none = INT32_MAX;
    FLEXSP_CUDA_CHECK(::cudaMemcpyAsync(flag_.data(), &none, sizeof none, cudaMemcpyHostToDevice, stream_.get()));
    FLEXSP_CUDA_CHECK(::cudaMemsetAsync(scalar_.data(), 0, sizeof(double), stream_.get()));
    FLEXSP_CUDA_CHECK(launch_cross_entropy(logits, targets, dlogits, n, vocab, scale, scalar_.data(), flag_.data(),
                                           stream_.get()));
    std::int32_t bad = none;
    double loss = 0;
    FLEXSP_CUDA_CHECK(::cudaMemcpyAsync(&bad, flag_.data(), sizeof bad, cudaMemcpyDeviceToHost, stream_.get()));
    FLEXSP_CUDA_CHECK(::cudaMemcpyAsync(&loss, scalar_.data(), sizeof loss, cudaMemcpyDeviceToHost, stream_.get()));
    FLEXSP_CUDA_CHECK(::cudaStreamSynchronize(stream_.get()));
    if (bad != none) {
      std::int32_t tgt = 0;
      FLEXSP_CUDA_CHECK(::cudaMemcpy(&tgt, targets + bad, sizeof tgt, cudaMemcpyDeviceToHost));
      return make_error(errc::invalid_argument, "target id {} at index {} outside vocabulary [0, {})", tgt, bad, vocab);
    }
    return loss;
  }

  expected<void> adamw_update(float* param, const float* grad, float* m, float* v, std::int64_t count,
                              std::int64_t step, const adamw_params& p) override {
    constexpr std::string_view op = "adamw_update";
    FLEXSP_TRY(need(count >= 0 && step >= 1, "count >= 0 and step >= 1", op));
    if (count == 0) return {};
    FLEXSP_TRY(need(param && grad && m && v, "null pointer", op));
    FLEXSP_TRY(current());
    const double bc1 = 1.0 - std::pow(static_cast<double>(p.beta1), static_cast<double>(step));
    const double bc2 = 1.0 - std::pow(static_cast<double>(p.beta2), static_cast<double>(step));
    FLEXSP_CUDA_CHECK(launch_adamw(param, grad, m, v, sz(count), p.lr, p.beta1, p.beta2, p.eps, p.weight_decay,
                                   static_cast<float>(p.lr / bc1), static_cast<float>(std::sqrt(bc2)),
                                   stream_.get()));
    return {};
  }

  expected<double> sum_squares(const float* x, std::int64_t count) override {
    FLEXSP_TRY(need_count(count, "count", "sum_squares"));
    if (count == 0) return 0.0;
    FLEXSP_TRY(need(x != nullptr, "null pointer", "sum_squares"));
    FLEXSP_TRY(current());
    FLEXSP_CUDA_CHECK(::cudaMemsetAsync(scalar_.data(), 0, sizeof(double), stream_.get()));
    FLEXSP_CUDA_CHECK(launch_sum_squares(x, sz(count), scalar_.data(), stream_.get()));
    double s = 0;
    FLEXSP_CUDA_CHECK(::cudaMemcpyAsync(&s, scalar_.data(), sizeof s, cudaMemcpyDeviceToHost, stream_.get()));
    FLEXSP_CUDA_CHECK(::cudaStreamSynchronize(stream_.get()));
    return s;
  }

  expected<std::uint64_t> fingerprint(const float* x, std::int64_t count, std::uint64_t first_position) override {
    FLEXSP_TRY(need_count(count, "count", "fingerprint"));
    if (count == 0) return std::uint64_t{0};
    FLEXSP_TRY(need(x != nullptr, "null pointer", "fingerprint"));
    FLEXSP_TRY(current());
    static_assert(sizeof(unsigned long long) == sizeof(double));
    auto* out = reinterpret_cast<unsigned long long*>(scalar_.data());
    FLEXSP_CUDA_CHECK(::cudaMemsetAsync(out, 0, sizeof *out, stream_.get()));
    FLEXSP_CUDA_CHECK(launch_fingerprint(x, sz(count), first_position, out, stream_.get()));
    unsigned long long h = 0;
    FLEXSP_CUDA_CHECK(::cudaMemcpyAsync(&h, out, sizeof h, cudaMemcpyDeviceToHost, stream_.get()));
    FLEXSP_CUDA_CHECK(::cudaStreamSynchronize(stream_.get()));
    return static_cast<std::uint64_t>(h);
  }

  // ---- attention ----
  expected<void> can_implement(const gpu::attention_forward_args& a) const override {
    FLEXSP_TRY(check_attention_common(a, "attention forward"));
    if (a.cu_seqlens.back() > 0 && a.heads > 0 && (!a.q || !a.k || !a.v || !a.out || !a.lse))
      return make_error(errc::invalid_argument, "attention forward: null buffer with {} tokens", a.cu_seqlens.back());
    if (tile_count(a.cu_seqlens, kAttentionForwardTile) > static_cast<std::size_t>(INT32_MAX))
      return make_error(errc::invalid_argument, "attention forward: too many tiles");
    return {};
  }
  expected<void> can_implement(const gpu::attention_backward_args& a) const override {
    FLEXSP_TRY(check_attention_common(a, "attention backward"));
    if (a.cu_seqlens.back() > 0 && a.heads > 0 &&
        (!a.q || !a.k || !a.v || !a.out || !a.lse || !a.dout || !a.dq || !a.dk || !a.dv))
      return make_error(errc::invalid_argument, "attention backward: null buffer with {} tokens",
                        a.cu_seqlens.back());
    if (tile_count(a.cu_seqlens, kAttentionBackwardTile) > static_cast<std::size_t>(INT32_MAX))
      return make_error(errc::invalid_argument, "attention backward: too many tiles");
    return {};
  }

  // Workspace: [cu_seqlens int64] [schedule int32 pairs] ([delta float tokens*heads] backward).
  std::size_t workspace_size(const gpu::attention_forward_args& a) const override {
    return align256(a.cu_seqlens.size() * sizeof(std::int64_t)) +
           align256(2 * tile_count(a.cu_seqlens, kAttentionForwardTile) * sizeof(std::int32_t));
  }
  std::size_t workspace_size(const gpu::attention_backward_args& a) const override {
    const auto tokens = a.cu_seqlens.empty() ? 0 : sz(a.cu_seqlens.back());
    const auto rows = tokens * sz(std::max<std::int64_t>(a.heads, 0));
    return align256(a.cu_seqlens.size() * sizeof(std::int64_t)) +
           align256(2 * tile_count(a.cu_seqlens, kAttentionBackwardTile) * sizeof(std::int32_t)) +
           align256(rows * sizeof(float)) +
           (a.type == gpu::dtype::bf16 ? align256(rows * sz(std::max<std::int64_t>(a.head_dim, 0)) * sizeof(float)) : 0);
  }

  expected<void> run(const gpu::attention_forward_args& a, void* workspace) override {
    FLEXSP_TRY(can_implement(a));
    const auto tokens = a.cu_seqlens.back();
    if (tokens == 0 || a.heads == 0) return {};
    FLEXSP_TRY(need(workspace != nullptr, "null workspace", "attention forward"));
    FLEXSP_TRY(current());
    const auto schedule = tile_schedule(a.cu_seqlens, kAttentionForwardTile, true);
    auto* cu = static_cast<std::int64_t*>(workspace);
    auto* items = reinterpret_cast<std::int32_t*>(static_cast<char*>(workspace) +
                                                  align256(a.cu_seqlens.size() * sizeof(std::int64_t)));
    FLEXSP_TRY(upload(cu, a.cu_seqlens.data(), a.cu_seqlens.size_bytes()));
    FLEXSP_TRY(upload(items, schedule.data(), schedule.size() * sizeof(std::int32_t)));
    const int count = static_cast<int>(schedule.size() / 2), heads = static_cast<int>(a.heads),
              dh = static_cast<int>(a.head_dim);
    if (a.type == gpu::dtype::bf16) {
      using bf = std::uint16_t;
      FLEXSP_CUDA_CHECK(launch_attention_forward(static_cast<const bf*>(a.q), static_cast<const bf*>(a.k),
                                                 static_cast<const bf*>(a.v), static_cast<bf*>(a.out), a.lse, cu,
                                                 items, count, heads, dh, stream_.get()));
    } else {
      FLEXSP_CUDA_CHECK(launch_attention_forward(static_cast<const float*>(a.q), static_cast<const float*>(a.k),
                                                 static_cast<const float*>(a.v), static_cast<float*>(a.out), a.lse,
                                                 cu, items, count, heads, dh, stream_.get()));
    }
    return {};
  }

  expected<void> run(const gpu::attention_backward_args& a, void* workspace) override {
    FLEXSP_TRY(can_implement(a));
    const auto tokens = a.cu_seqlens.back();
    if (tokens == 0 || a.heads == 0) return {};
    FLEXSP_TRY(need(workspace != nullptr, "null workspace", "attention backward"));
    FLEXSP_TRY(current());
    const auto schedule = tile_schedule(a.cu_seqlens, kAttentionBackwardTile, false);
    char* base = static_cast<char*>(workspace);
    auto* cu = reinterpret_cast<std::int64_t*>(base);
    base += align256(a.cu_seqlens.size() * sizeof(std::int64_t));
    auto* items = reinterpret_cast<std::int32_t*>(base);
    base += align256(schedule.size() * sizeof(std::int32_t));
    auto* delta = reinterpret_cast<float*>(base);
    base += align256(sz(tokens * a.heads) * sizeof(float));
    FLEXSP_TRY(upload(cu, a.cu_seqlens.data(), a.cu_seqlens.size_bytes()));
    FLEXSP_TRY(upload(items, schedule.data(), schedule.size() * sizeof(std::int32_t)));
    const auto elems = sz(tokens * a.heads * a.head_dim);
    const int count = static_cast<int>(schedule.size() / 2), heads = static_cast<int>(a.heads),
              dh = static_cast<int>(a.head_dim);
    if (a.type == gpu::dtype::bf16) {
      // dQ accumulates in fp32 (atomics) in the workspace, then is rounded into a.dq.
      using bf = std::uint16_t;
      auto* dq32 = reinterpret_cast<float*>(base);
      FLEXSP_CUDA_CHECK(::cudaMemsetAsync(dq32, 0, elems * sizeof(float), stream_.get()));
      FLEXSP_CUDA_CHECK(launch_attention_row_dot(static_cast<const bf*>(a.out), static_cast<const bf*>(a.dout), delta,
                                                 tokens, heads, dh, stream_.get()));
      FLEXSP_CUDA_CHECK(launch_attention_backward(static_cast<const bf*>(a.q), static_cast<const bf*>(a.k),
                                                  static_cast<const bf*>(a.v), a.lse, delta,
                                                  static_cast<const bf*>(a.dout), dq32, static_cast<bf*>(a.dk),
                                                  static_cast<bf*>(a.dv), cu, items, count, heads, dh, stream_.get()));
      FLEXSP_CUDA_CHECK(launch_to_bf16(dq32, static_cast<bf*>(a.dq), elems, stream_.get()));
      return {};
    }
    FLEXSP_CUDA_CHECK(::cudaMemsetAsync(a.dq, 0, elems * sizeof(float), stream_.get()));
    FLEXSP_CUDA_CHECK(launch_attention_row_dot(static_cast<const float*>(a.out), static_cast<const float*>(a.dout),
                                               delta, tokens, heads, dh, stream_.get()));
    FLEXSP_CUDA_CHECK(launch_attention_backward(static_cast<const float*>(a.q), static_cast<const float*>(a.k),
                                                static_cast<const float*>(a.v), a.lse, delta,
                                                static_cast<const float*>(a.dout), static_cast<float*>(a.dq),
                                                static_cast<float*>(a.dk), static_cast<float*>(a.dv), cu, items, count,
                                                heads, dh, stream_.get()));
    return {};
  }

private:
  expected<void> current() const {
    FLEXSP_CUDA_CHECK(::cudaSetDevice(index_));
    return {};
  }
  // Queues a host -> device copy of a small host array that dies when the caller returns:
  // cudaMemcpyAsync from pageable memory has copied the source out when it returns.
  expected<void> upload(void* dst, const void* src, std::size_t bytes) {
    FLEXSP_CUDA_CHECK(::cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_.get()));
    return {};
  }

  int index_;
  std::string description_;
  cuda::stream stream_;
  const cublas_api* blas_;
  cublasHandle_t handle_;
  device_buffer<std::int32_t> flag_;   // first bad id index of embedding / cross-entropy
  device_buffer<double> scalar_;       // loss sum, sum of squares
  device_buffer<copy_block> blocks_;   // descriptors of copy_blocks, grown on demand
};

}  // namespace

expected<std::unique_ptr<gpu::device>> open_device(int index) {
  int count = 0;
  if (const auto rc = ::cudaGetDeviceCount(&count); rc != cudaSuccess) {
    ::cudaGetLastError();
    return make_error(errc::not_found, "no usable CUDA device: {}", ::cudaGetErrorString(rc));
  }
  if (index < 0 || index >= count)
    return make_error(errc::not_found, "CUDA device {} does not exist ({} visible)", index, count);
  FLEXSP_TRY_ASSIGN(const cublas_api* blas, load_cublas());
  FLEXSP_CUDA_CHECK(::cudaSetDevice(index));
  cudaDeviceProp prop{};
  FLEXSP_CUDA_CHECK(::cudaGetDeviceProperties(&prop, index));
  const auto smem_needed = std::max(attention_forward_smem(static_cast<int>(gpu::kMaxAttentionHeadDim)),
                                    attention_backward_smem(static_cast<int>(gpu::kMaxAttentionHeadDim)));
  if (prop.major < 8 || prop.sharedMemPerBlockOptin < smem_needed)
    return make_error(errc::unimplemented, "GPU {} ({}, sm_{}{}) is not supported: this build needs sm_80 or newer",
                      index, prop.name, prop.major, prop.minor);
  FLEXSP_TRY_ASSIGN(auto s, stream::create());
  FLEXSP_TRY_ASSIGN(auto flag, device_buffer<std::int32_t>::allocate(1));
  FLEXSP_TRY_ASSIGN(auto scalar, device_buffer<double>::allocate(1));
  cublasHandle_t handle = nullptr;
  FLEXSP_CUBLAS_CHECK(blas->create(&handle));
  auto dev = std::make_unique<cuda_device>(
      index,
      fmt::format("{} (sm_{}{}, {:.1f} GiB, {})", prop.name, prop.major, prop.minor,
                  static_cast<double>(prop.totalGlobalMem) / (1 << 30), blas->library),
      std::move(s), blas, handle, std::move(flag), std::move(scalar));
  FLEXSP_CUBLAS_CHECK(blas->set_stream(handle, static_cast<cudaStream_t>(dev->stream())));
  // Exact fp32 unless a GEMM asks for TF32 through its compute type.
  FLEXSP_CUBLAS_CHECK(blas->set_math_mode(handle, CUBLAS_DEFAULT_MATH));
  return std::unique_ptr<gpu::device>{std::move(dev)};
}

}  // namespace flexsp::kernels::cuda
