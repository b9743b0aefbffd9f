// Every GPU kernel, forward and backward, against its CPU reference on random inputs with odd
// sizes. Label `gpu`; each test skips (with the reason) when the build or machine has no GPU.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "flexsp/kernels/attention.hpp"
#include "flexsp/kernels/device_backend.hpp"
#include "flexsp/kernels/data.hpp"
#include "flexsp/kernels/gloo_communicator.hpp"
#include "flexsp/kernels/gpu.hpp"
#include "flexsp/kernels/model.hpp"
#include "flexsp/kernels/model.hpp"
#include "flexsp/kernels/ops.hpp"

namespace flexsp::kernels {
namespace {

std::vector<float> random_vector(std::size_t n, std::uint64_t seed, float stddev = 1.0f) {
  std::mt19937_64 rng{seed};
  std::normal_distribution<float> dist{0.0f, stddev};
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

std::vector<std::int32_t> random_ids(std::size_t n, std::int32_t bound, std::uint64_t seed) {
  std::mt19937_64 rng{seed};
  std::uniform_int_distribution<std::int32_t> dist{0, bound - 1};
  std::vector<std::int32_t> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

// |got - want| <= atol + rtol * |want| for every element; reports the first mismatch.
::testing::AssertionResult all_close(const std::vector<float>& got, const std::vector<float>& want, float atol,
                                     float rtol = 1e-4f) {
  if (got.size() != want.size())
    return ::testing::AssertionFailure() << "sizes " << got.size() << " vs " << want.size();
  for (std::size_t i = 0; i < got.size(); ++i)
    if (!(std::abs(got[i] - want[i]) <= atol + rtol * std::abs(want[i])))
      return ::testing::AssertionFailure() << "element " << i << ": gpu " << got[i] << " cpu " << want[i];
  return ::testing::AssertionSuccess();
}

class GpuKernels : public ::testing::Test {
protected:
  void SetUp() override {
    auto dev = gpu::open_device(0);
    if (!dev) GTEST_SKIP() << "no GPU to test on: " << dev.error().to_string();
    dev_ = std::move(*dev);
  }

  // Device copy of a host vector; kept alive until the test ends.
  template <class T>
  T* upload(const std::vector<T>& host) {
    auto b = dev_->allocate(std::max<std::size_t>(1, host.size() * sizeof(T)));
    EXPECT_TRUE(b) << b.error().to_string();
    auto r = dev_->copy_to_device(b->get(), host.data(), host.size() * sizeof(T));
    EXPECT_TRUE(r) << r.error().to_string();
    keep_.push_back(std::move(*b));
    return keep_.back().as<T>();
  }
  template <class T>
  std::vector<T> download(const T* ptr, std::size_t n) {
    std::vector<T> host(n);
    auto r = dev_->copy_to_host(host.data(), ptr, n * sizeof(T));
    EXPECT_TRUE(r) << r.error().to_string();
    return host;
  }

  std::shared_ptr<gpu::device> dev_;
  std::vector<gpu::buffer> keep_;
};

#define ASSERT_OK(expr)                                   \
  do {                                                    \
    auto&& ok_ = (expr);                                  \
    ASSERT_TRUE(ok_) << #expr ": " << ok_.error().to_string(); \
  } while (0)

// The device's ledger counts what allocate() hands out, and its capacity is what the GPU could
// hold for it: its own allocations plus the free memory, at least what is allocated.
TEST_F(GpuKernels, MemoryLedgerCountsAllocationsAndTheCapacityCoversThem) {
  const auto before = dev_->memory();
  {
    auto a = dev_->allocate(1 << 20);
    ASSERT_TRUE(a) << a.error().to_string();
    const auto during = dev_->memory();
    EXPECT_EQ(during.in_use, before.in_use + (1u << 20));
    EXPECT_GE(during.peak, during.in_use);
    EXPECT_GE(during.capacity, during.in_use);
    EXPECT_GT(during.capacity, 0u);
  }
  EXPECT_EQ(dev_->memory().in_use, before.in_use);
  dev_->reset_peak_memory();
  EXPECT_EQ(dev_->memory().peak, before.in_use);
}

TEST_F(GpuKernels, EmbeddingForwardAndBackwardMatchTheCpu) {
  const std::int64_t n = 77, d = 45, vocab = 31, max_pos = 50;
  const auto tokens = random_ids(n, vocab, 1), positions = random_ids(n, max_pos, 2);
  const auto wte = random_vector(vocab * d, 3), wpe = random_vector(max_pos * d, 4), dout = random_vector(n * d, 5);
  std::vector<float> out(n * d), dwte(vocab * d, 0.5f), dwpe(max_pos * d, -0.25f);
  ASSERT_OK(embedding_forward(tokens, positions, wte, wpe, out, d));
  auto* g_out = upload(std::vector<float>(n * d));
  auto* g_tok = upload(tokens);
  auto* g_pos = upload(positions);
  ASSERT_OK(dev_->embedding_forward(g_tok, g_pos, upload(wte), upload(wpe), g_out, n, d, vocab, max_pos));
  EXPECT_TRUE(all_close(download(g_out, out.size()), out, 0.0f, 0.0f));
  auto* g_dwte = upload(dwte);
  auto* g_dwpe = upload(dwpe);
  embedding_backward(tokens, positions, dout, dwte, dwpe, d);
  ASSERT_OK(dev_->embedding_backward(g_tok, g_pos, upload(dout), g_dwte, g_dwpe, n, d));
  EXPECT_TRUE(all_close(download(g_dwte, dwte.size()), dwte, 1e-5f));
  EXPECT_TRUE(all_close(download(g_dwpe, dwpe.size()), dwpe, 1e-5f));
}

TEST_F(GpuKernels, EmbeddingRejectsAnOutOfRangeTokenNamingItsIndex) {
  std::vector<std::int32_t> tokens{1, 2, 40, 3}, positions{0, 1, 2, 3};
  auto* out = upload(std::vector<float>(4 * 8));
  auto r = dev_->embedding_forward(upload(tokens), upload(positions), upload(random_vector(10 * 8, 1)),
                                   upload(random_vector(16 * 8, 2)), out, 4, 8, 10, 16);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().kind(), errc::invalid_argument);
  EXPECT_NE(r.error().message().find("index 2"), std::string::npos) << r.error().message();
}

TEST_F(GpuKernels, LayerNormForwardAndBackwardMatchTheCpu) {
  for (const auto& [n, d] : {std::pair<std::int64_t, std::int64_t>{37, 97}, {1, 1}, {300, 256}, {5, 1031}}) {
    const auto x = random_vector(n * d, 10 + n, 2.0f), gamma = random_vector(d, 11), beta = random_vector(d, 12);
    const auto dy = random_vector(n * d, 13);
    std::vector<float> y(n * d), mean(n), rstd(n), dx(n * d), dgamma(d, 0.1f), dbeta(d, 0.2f);
    layernorm_forward(x, gamma, beta, y, mean, rstd, d);
    layernorm_backward(dy, x, gamma, mean, rstd, dx, dgamma, dbeta, d);
    auto* gx = upload(x);
    auto* gg = upload(gamma);
    auto* gy = upload(std::vector<float>(n * d));
    auto* gm = upload(std::vector<float>(n));
    auto* gr = upload(std::vector<float>(n));
    auto* gdx = upload(std::vector<float>(n * d));
    auto* gdg = upload(std::vector<float>(d, 0.1f));
    auto* gdb = upload(std::vector<float>(d, 0.2f));
    ASSERT_OK(dev_->layernorm_forward(gx, gg, upload(beta), gy, gm, gr, n, d));
    ASSERT_OK(dev_->layernorm_backward(upload(dy), gx, gg, gm, gr, gdx, gdg, gdb, n, d));
    EXPECT_TRUE(all_close(download(gy, y.size()), y, 2e-5f)) << "n=" << n << " d=" << d;
    EXPECT_TRUE(all_close(download(gm, mean.size()), mean, 2e-5f));
    EXPECT_TRUE(all_close(download(gr, rstd.size()), rstd, 2e-5f, 1e-4f));
    EXPECT_TRUE(all_close(download(gdx, dx.size()), dx, 1e-4f, 1e-3f)) << "n=" << n << " d=" << d;
    EXPECT_TRUE(all_close(download(gdg, dgamma.size()), dgamma, 1e-3f, 1e-4f));
    EXPECT_TRUE(all_close(download(gdb, dbeta.size()), dbeta, 1e-3f, 1e-4f));
  }
}

TEST_F(GpuKernels, RmsNormRopeAndSwiGluMatchTheCpu) {
  // RMSNorm forward and backward.
  for (const auto& [n, d] : {std::pair<std::int64_t, std::int64_t>{37, 97}, {1, 1}, {5, 1031}}) {
    const auto x = random_vector(n * d, 20 + n, 2.0f), gamma = random_vector(d, 21), dy = random_vector(n * d, 22);
    std::vector<float> y(n * d), rstd(n), dx(n * d), dgamma(d, 0.1f);
    rmsnorm_forward(x, gamma, y, rstd, d, 1e-5f);
    rmsnorm_backward(dy, x, gamma, rstd, dx, dgamma, d);
    auto* gx = upload(x);
    auto* gg = upload(gamma);
    auto* gy = upload(std::vector<float>(n * d));
    auto* gr = upload(std::vector<float>(n));
    auto* gdx = upload(std::vector<float>(n * d));
    auto* gdg = upload(std::vector<float>(d, 0.1f));
    ASSERT_OK(dev_->rmsnorm_forward(gx, gg, gy, gr, n, d, 1e-5f));
    ASSERT_OK(dev_->rmsnorm_backward(upload(dy), gx, gg, gr, gdx, gdg, n, d));
    EXPECT_TRUE(all_close(download(gy, y.size()), y, 2e-5f)) << "n=" << n << " d=" << d;
    EXPECT_TRUE(all_close(download(gr, rstd.size()), rstd, 2e-5f, 1e-4f));
    EXPECT_TRUE(all_close(download(gdx, dx.size()), dx, 1e-4f, 1e-3f)) << "n=" << n << " d=" << d;
    EXPECT_TRUE(all_close(download(gdg, dgamma.size()), dgamma, 1e-3f, 1e-4f));
  }
  // Rotary embedding of the Q and K heads of a [n, (4 + 2 * 2) * 8] projection, and back.
  const std::int64_t n = 19, dh = 8, heads = 6, stride = 8 * dh;
  std::vector<std::int32_t> positions(n);
  for (std::int64_t t = 0; t < n; ++t) positions[static_cast<std::size_t>(t)] = static_cast<std::int32_t>((t * 37) % 300);
  const auto x = random_vector(n * stride, 23);
  auto rotated = x;
  rope(rotated, positions, heads, stride, dh, 10000.0f, false);
  auto* gx = upload(x);
  auto* gp = upload(positions);
  ASSERT_OK(dev_->rope(gx, gp, n, heads, stride, dh, 10000.0f, false));
  EXPECT_TRUE(all_close(download(gx, x.size()), rotated, 1e-5f, 1e-4f));
  ASSERT_OK(dev_->rope(gx, gp, n, heads, stride, dh, 10000.0f, true));
  EXPECT_TRUE(all_close(download(gx, x.size()), x, 1e-5f, 1e-4f)) << "the inverse rotation restores the input";
  EXPECT_EQ(dev_->rope(gx, gp, n, heads, stride, 7, 10000.0f, false).error().kind(), errc::invalid_argument);
  // SwiGLU forward and backward.
  const std::int64_t rows = 23, f = 301;
  const auto gu = random_vector(rows * 2 * f, 24, 2.0f), dy = random_vector(rows * f, 25);
  std::vector<float> y(rows * f), dgu(rows * 2 * f);
  swiglu_forward(gu, y, f);
  swiglu_backward(dy, gu, dgu, f);
  auto* ggu = upload(gu);
  auto* gy = upload(std::vector<float>(rows * f));
  auto* gdgu = upload(std::vector<float>(rows * 2 * f));
  ASSERT_OK(dev_->swiglu_forward(ggu, gy, rows, f));
  ASSERT_OK(dev_->swiglu_backward(upload(dy), ggu, gdgu, rows, f));
  EXPECT_TRUE(all_close(download(gy, y.size()), y, 1e-5f, 1e-5f));
  EXPECT_TRUE(all_close(download(gdgu, dgu.size()), dgu, 1e-5f, 1e-5f));
}

TEST_F(GpuKernels, GemmMatchesTheCpuForEveryTransposeCombination) {
  const std::int64_t m = 33, n = 47, k = 29;
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      const std::int64_t lda = (ta ? m : k) + 3, ldb = (tb ? k : n) + 1, ldc = n + 2;
      const auto a = random_vector((ta ? k : m) * lda, 21), b = random_vector((tb ? n : k) * ldb, 22);
      auto c = random_vector(m * ldc, 23);
      auto* gc = upload(c);
      gemm(ta, tb, m, n, k, 0.75f, a.data(), lda, b.data(), ldb, 0.5f, c.data(), ldc);
      ASSERT_OK(dev_->gemm({.trans_a = ta, .trans_b = tb, .m = m, .n = n, .k = k, .alpha = 0.75f, .a = upload(a),
                            .lda = lda, .b = upload(b), .ldb = ldb, .beta = 0.5f, .c = gc, .ldc = ldc}));
      EXPECT_TRUE(all_close(download(gc, c.size()), c, 1e-4f)) << "trans_a=" << ta << " trans_b=" << tb;
    }
}

TEST_F(GpuKernels, Bf16AndTf32GemmsStayWithinTheirPrecision) {
  const std::int64_t m = 64, n = 80, k = 96;
  const auto a = random_vector(m * k, 31), b = random_vector(k * n, 32);
  std::vector<float> ref(m * n);
  gemm(false, false, m, n, k, 1.0f, a.data(), k, b.data(), n, 0.0f, ref.data(), n);
  auto* ga = upload(a);
  auto* gb = upload(b);
  auto* gc = upload(std::vector<float>(m * n));
  ASSERT_OK(dev_->gemm({.m = m, .n = n, .k = k, .a = ga, .lda = k, .b = gb, .ldb = n, .c = gc, .ldc = n,
                        .math = gpu::gemm_math::tf32}));
  EXPECT_TRUE(all_close(download(gc, ref.size()), ref, 0.05f, 0.01f));  // 10-bit mantissa inputs, k = 96
  auto a16 = dev_->allocate(m * k * 2), b16 = dev_->allocate(k * n * 2), c16 = dev_->allocate(m * n * 2);
  ASSERT_TRUE(a16 && b16 && c16);
  ASSERT_OK(dev_->to_bf16(ga, a16->as<std::uint16_t>(), m * k));
  ASSERT_OK(dev_->to_bf16(gb, b16->as<std::uint16_t>(), k * n));
  ASSERT_OK(dev_->gemm({.m = m, .n = n, .k = k, .a = a16->get(), .lda = k, .b = b16->get(), .ldb = n,
                        .c = c16->get(), .ldc = n, .type = gpu::dtype::bf16}));
  ASSERT_OK(dev_->from_bf16(c16->as<std::uint16_t>(), gc, m * n));
  EXPECT_TRUE(all_close(download(gc, ref.size()), ref, 0.3f, 0.02f));  // 8-bit mantissa in and out
}

TEST_F(GpuKernels, GemmRejectsBadLeadingDimensionsBeforeLaunching) {
  float* p = upload(std::vector<float>(64));
  auto r = dev_->can_implement(gpu::gemm_args{.m = 4, .n = 5, .k = 6, .a = p, .lda = 5, .b = p, .ldb = 5, .c = p,
                                              .ldc = 5});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().kind(), errc::invalid_argument);
  EXPECT_NE(r.error().message().find("lda"), std::string::npos) << r.error().message();
}

TEST_F(GpuKernels, LinearForwardAndBackwardMatchTheCpu) {
  const std::int64_t n = 33, in = 45, out = 71;
  const auto x = random_vector(n * in, 41), w = random_vector(in * out, 42, 0.1f), b = random_vector(out, 43);
  const auto dy = random_vector(n * out, 44);
  std::vector<float> y(n * out), dx(n * in), dw(in * out, 0.5f), db(out, 0.25f);
  linear_forward(x, w, b, y, n, in, out);
  linear_backward(dy, x, w, dx, dw, db, n, in, out);
  auto* gx = upload(x);
  auto* gw = upload(w);
  auto* gy = upload(std::vector<float>(n * out));
  auto* gdx = upload(std::vector<float>(n * in));
  auto* gdw = upload(std::vector<float>(in * out, 0.5f));
  auto* gdb = upload(std::vector<float>(out, 0.25f));
  ASSERT_OK(dev_->linear_forward(gx, gw, upload(b), gy, n, in, out));
  ASSERT_OK(dev_->linear_backward(upload(dy), gx, gw, gdx, gdw, gdb, n, in, out));
  EXPECT_TRUE(all_close(download(gy, y.size()), y, 1e-4f));
  EXPECT_TRUE(all_close(download(gdx, dx.size()), dx, 1e-4f));
  EXPECT_TRUE(all_close(download(gdw, dw.size()), dw, 1e-4f));
  EXPECT_TRUE(all_close(download(gdb, db.size()), db, 1e-4f));
}

TEST_F(GpuKernels, GeluAndResidualMatchTheCpu) {
  const std::size_t n = 100'003;
  const auto x = random_vector(n, 51, 3.0f), dy = random_vector(n, 52), other = random_vector(n, 53);
  std::vector<float> y(n), dx(n), sum(n), da(n, 1.0f), db(n, -1.0f);
  gelu_forward(x, y);
  gelu_backward(dy, x, dx);
  residual_forward(x, other, sum);
  residual_backward(dy, da, db);
  auto* gx = upload(x);
  auto* gdy = upload(dy);
  auto* gy = upload(std::vector<float>(n));
  auto* gdx = upload(std::vector<float>(n));
  auto* gs = upload(std::vector<float>(n));
  auto* gda = upload(std::vector<float>(n, 1.0f));
  auto* gdb = upload(std::vector<float>(n, -1.0f));
  const auto count = static_cast<std::int64_t>(n);
  ASSERT_OK(dev_->gelu_forward(gx, gy, count));
  ASSERT_OK(dev_->gelu_backward(gdy, gx, gdx, count));
  ASSERT_OK(dev_->residual_forward(gx, upload(other), gs, count));
  ASSERT_OK(dev_->residual_backward(gdy, gda, gdb, count));
  EXPECT_TRUE(all_close(download(gy, n), y, 1e-6f, 1e-5f));
  EXPECT_TRUE(all_close(download(gdx, n), dx, 1e-5f, 1e-5f));
  EXPECT_TRUE(all_close(download(gs, n), sum, 0.0f, 0.0f));
  EXPECT_TRUE(all_close(download(gda, n), da, 0.0f, 0.0f));
  EXPECT_TRUE(all_close(download(gdb, n), db, 0.0f, 0.0f));
}

TEST_F(GpuKernels, CrossEntropyMatchesTheCpuAndNamesABadTarget) {
  const std::int64_t n = 29, vocab = 1003;
  const auto logits = random_vector(n * vocab, 61, 3.0f);
  auto targets = random_ids(n, static_cast<std::int32_t>(vocab), 62);
  std::vector<float> dlogits(n * vocab);
  auto ref = cross_entropy_forward_backward(logits, targets, dlogits, vocab, 1.0f / 57.0f);
  ASSERT_TRUE(ref);
  auto* gl = upload(logits);
  auto* gd = upload(std::vector<float>(n * vocab));
  auto loss = dev_->cross_entropy(gl, upload(targets), gd, n, vocab, 1.0f / 57.0f);
  ASSERT_TRUE(loss) << loss.error().to_string();
  EXPECT_NEAR(*loss, *ref, 1e-6 * std::abs(*ref) + 1e-6);
  EXPECT_TRUE(all_close(download(gd, dlogits.size()), dlogits, 1e-7f, 1e-5f));
  targets[17] = static_cast<std::int32_t>(vocab);
  auto bad = dev_->cross_entropy(gl, upload(targets), nullptr, n, vocab, 1.0f);
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().kind(), errc::invalid_argument);
  EXPECT_NE(bad.error().message().find("index 17"), std::string::npos) << bad.error().message();
}

TEST_F(GpuKernels, AdamwAndSumOfSquaresMatchTheCpu) {
  const std::size_t n = 4099;
  auto param = random_vector(n, 71), m = std::vector<float>(n), v = std::vector<float>(n);
  auto* gp = upload(param);
  auto* gm = upload(m);
  auto* gv = upload(v);
  const adamw_params hp{.lr = 1e-2f, .weight_decay = 0.1f};
  for (std::int64_t step = 1; step <= 3; ++step) {
    const auto grad = random_vector(n, 80 + static_cast<std::uint64_t>(step));
    adamw_update(param, grad, m, v, step, hp);
    ASSERT_OK(dev_->adamw_update(gp, upload(grad), gm, gv, static_cast<std::int64_t>(n), step, hp));
  }
  EXPECT_TRUE(all_close(download(gp, n), param, 1e-6f, 1e-5f));
  EXPECT_TRUE(all_close(download(gm, n), m, 1e-7f, 1e-5f));
  EXPECT_TRUE(all_close(download(gv, n), v, 1e-7f, 1e-5f));
  const double norm = l2_norm(param);
  auto ss = dev_->sum_squares(gp, static_cast<std::int64_t>(n));
  ASSERT_TRUE(ss) << ss.error().to_string();
  EXPECT_NEAR(std::sqrt(*ss), norm, 1e-5 * norm);
}

TEST_F(GpuKernels, CopyBlocksMatchesTheHostAndChecksItsBlocks) {
  const auto src = random_vector(10'000, 93);
  const std::vector<row_block> blocks{{0, 0, 40, 12, 100, 12},   // strided rows into a dense block
                                      {7, 1200, 1, 1, 1, 3000},  // one long row
                                      {9000, 5000, 3, 5, 300, 2}, {0, 9999, 0, 0, 0, 0}};  // empty block
  std::vector<float> want(10'000, 0.0f);
  copy_blocks(blocks, src.data(), want.data());
  auto* gs = upload(src);
  auto* gd = upload(std::vector<float>(10'000, 0.0f));
  ASSERT_OK(dev_->copy_blocks(gd, gs, blocks));
  EXPECT_EQ(download(gd, want.size()), want);
  const std::vector<row_block> negative{{0, 0, 1, 1, -1, 1}}, narrow{{0, 0, 1, 4, 2, 3}};
  EXPECT_EQ(dev_->copy_blocks(gd, gs, negative).error().kind(), errc::invalid_argument);
  EXPECT_EQ(dev_->copy_blocks(gd, gs, narrow).error().kind(), errc::invalid_argument);
  EXPECT_EQ(dev_->copy_blocks(nullptr, gs, blocks).error().kind(), errc::invalid_argument);
}

TEST_F(GpuKernels, FingerprintEqualsTheHostOneBitForBit) {
  const std::size_t n = 300'001;  // several blocks and a partial one
  auto x = random_vector(n, 91);
  auto* gx = upload(x);
  for (std::uint64_t first : {std::uint64_t{0}, std::uint64_t{12345}}) {
    auto h = dev_->fingerprint(gx, static_cast<std::int64_t>(n), first);
    ASSERT_TRUE(h) << h.error().to_string();
    EXPECT_EQ(*h, fingerprint(x, first));
  }
  auto part = dev_->fingerprint(gx + 1000, 5000, 1000);
  ASSERT_TRUE(part);
  EXPECT_EQ(*part, fingerprint(std::span<const float>{x}.subspan(1000, 5000), 1000));
  EXPECT_EQ(dev_->fingerprint(gx, 0, 0).value(), 0u);
  EXPECT_FALSE(dev_->fingerprint(nullptr, 3, 0));
}

// ---- attention -----------------------------------------------------------------------

struct attention_case {
  std::vector<std::int64_t> lengths;
  std::int64_t heads, head_dim;
};

std::vector<std::int64_t> prefix_sums(const std::vector<std::int64_t>& lengths) {
  std::vector<std::int64_t> cu{0};
  for (auto l : lengths) cu.push_back(cu.back() + l);
  return cu;
}

// The CPU kernels' forward and backward: the reference of the GPU attention tests.
struct attention_reference {
  std::vector<float> out, lse, dq, dk, dv;
};
attention_reference cpu_attention(const std::vector<std::int64_t>& cu, std::int64_t H, std::int64_t Dh,
                                  const std::vector<float>& q, const std::vector<float>& k, const std::vector<float>& v,
                                  const std::vector<float>& dout) {
  const auto E = q.size();
  attention_reference r{std::vector<float>(E), std::vector<float>(static_cast<std::size_t>(cu.back() * H)),
                        std::vector<float>(E), std::vector<float>(E), std::vector<float>(E)};
  attention::forward_args fa{cu, H, Dh, q.data(), k.data(), v.data(), r.out.data(), r.lse.data()};
  std::vector<float> ws(attention::workspace_size(fa));
  attention::run(fa, ws);
  attention::backward_args ba{cu, H, Dh, q.data(), k.data(), v.data(), r.out.data(), r.lse.data(), dout.data(),
                              r.dq.data(), r.dk.data(), r.dv.data()};
  ws.resize(attention::workspace_size(ba));
  attention::run(ba, ws);
  return r;
}

TEST_F(GpuKernels, VarlenCausalAttentionForwardAndBackwardMatchTheCpu) {
  const std::vector<attention_case> cases{
      {{1, 17, 64, 65, 0, 130, 7, 200}, 3, 32},  // tile edges, an empty sequence, one-token sequence
      {{33, 31, 97}, 2, 24},                     // head_dim not a multiple of 16
      {{300, 5}, 1, 64},
      {{129, 1}, 2, 128},  // the largest head_dim
      {{70}, 1, 1},
  };
  for (const auto& tc : cases) {
    const auto cu = prefix_sums(tc.lengths);
    const std::int64_t N = cu.back(), H = tc.heads, Dh = tc.head_dim;
    const auto q = random_vector(N * H * Dh, 91), k = random_vector(N * H * Dh, 92), v = random_vector(N * H * Dh, 93);
    const auto dout = random_vector(N * H * Dh, 94);
    const auto [out, lse, dq, dk, dv] = cpu_attention(cu, H, Dh, q, k, v, dout);

    auto* gq = upload(q);
    auto* gk = upload(k);
    auto* gv = upload(v);
    auto* gout = upload(std::vector<float>(out.size()));
    auto* glse = upload(std::vector<float>(lse.size()));
    auto* gdq = upload(std::vector<float>(out.size(), 7.0f));  // overwritten, whatever it held
    auto* gdk = upload(std::vector<float>(out.size(), 7.0f));
    auto* gdv = upload(std::vector<float>(out.size(), 7.0f));
    gpu::attention_forward_args gfa{cu, H, Dh, gq, gk, gv, gout, glse};
    ASSERT_OK(dev_->can_implement(gfa));
    auto fws = dev_->allocate(dev_->workspace_size(gfa));
    ASSERT_TRUE(fws);
    ASSERT_OK(dev_->run(gfa, fws->get()));
    gpu::attention_backward_args gba{cu, H, Dh, gq, gk, gv, gout, glse, upload(dout), gdq, gdk, gdv};
    ASSERT_OK(dev_->can_implement(gba));
    auto bws_dev = dev_->allocate(dev_->workspace_size(gba));
    ASSERT_TRUE(bws_dev);
    ASSERT_OK(dev_->run(gba, bws_dev->get()));
    const std::string where = "heads " + std::to_string(H) + " head_dim " + std::to_string(Dh);
    EXPECT_TRUE(all_close(download(gout, out.size()), out, 2e-5f, 1e-4f)) << where;
    EXPECT_TRUE(all_close(download(glse, lse.size()), lse, 2e-5f, 1e-5f)) << where;
    EXPECT_TRUE(all_close(download(gdq, dq.size()), dq, 1e-4f, 1e-3f)) << where;
    EXPECT_TRUE(all_close(download(gdk, dk.size()), dk, 1e-4f, 1e-3f)) << where;
    EXPECT_TRUE(all_close(download(gdv, dv.size()), dv, 1e-4f, 1e-3f)) << where;
  }
}

// Host bf16 (round to nearest even) and back, for the reference of the bf16 kernels.
std::vector<std::uint16_t> to_bf16_host(const std::vector<float>& x) {
  std::vector<std::uint16_t> out(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) {
    std::uint32_t bits;
    std::memcpy(&bits, &x[i], 4);
    out[i] = static_cast<std::uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
  }
  return out;
}
std::vector<float> from_bf16_host(const std::vector<std::uint16_t>& x) {
  std::vector<float> out(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) {
    const std::uint32_t bits = static_cast<std::uint32_t>(x[i]) << 16;
    std::memcpy(&out[i], &bits, 4);
  }
  return out;
}
// Largest |got - want| over the largest |want|.
double rel_to_max(const std::vector<float>& got, const std::vector<float>& want) {
  double diff = 0, scale = 1e-30;
  for (std::size_t i = 0; i < got.size(); ++i) {
    diff = std::max(diff, static_cast<double>(std::abs(got[i] - want[i])));
    scale = std::max(scale, static_cast<double>(std::abs(want[i])));
  }
  return diff / scale;
}

TEST_F(GpuKernels, Bf16AttentionMatchesTheCpuOnTheSameRoundedInputs) {
  const std::vector<attention_case> cases{
      {{1, 17, 64, 65, 0, 130, 7}, 3, 32},
      {{33, 97}, 2, 24},
      {{129, 1}, 2, 128},
  };
  for (const auto& tc : cases) {
    const auto cu = prefix_sums(tc.lengths);
    const std::int64_t N = cu.back(), H = tc.heads, Dh = tc.head_dim;
    const std::size_t E = static_cast<std::size_t>(N * H * Dh);
    const auto qb = to_bf16_host(random_vector(E, 95)), kb = to_bf16_host(random_vector(E, 96)),
               vb = to_bf16_host(random_vector(E, 97)), gb = to_bf16_host(random_vector(E, 98));
    const auto q = from_bf16_host(qb), k = from_bf16_host(kb), v = from_bf16_host(vb), dout = from_bf16_host(gb);
    const auto [out, lse, dq, dk, dv] = cpu_attention(cu, H, Dh, q, k, v, dout);

    auto* gq = upload(qb);
    auto* gk = upload(kb);
    auto* gv = upload(vb);
    auto* gout = upload(std::vector<std::uint16_t>(E));
    auto* glse = upload(std::vector<float>(lse.size()));
    auto* gdq = upload(std::vector<std::uint16_t>(E, 0x4000));  // overwritten, whatever it held
    auto* gdk = upload(std::vector<std::uint16_t>(E, 0x4000));
    auto* gdv = upload(std::vector<std::uint16_t>(E, 0x4000));
    gpu::attention_forward_args gfa{cu, H, Dh, gq, gk, gv, gout, glse, gpu::dtype::bf16};
    ASSERT_OK(dev_->can_implement(gfa));
    auto fws = dev_->allocate(dev_->workspace_size(gfa));
    ASSERT_TRUE(fws);
    ASSERT_OK(dev_->run(gfa, fws->get()));
    gpu::attention_backward_args gba{cu,          H,   Dh,  gq,  gk,  gv, gout, glse, upload(gb), gdq, gdk, gdv,
                                     gpu::dtype::bf16};
    ASSERT_OK(dev_->can_implement(gba));
    auto bws_dev = dev_->allocate(dev_->workspace_size(gba));
    ASSERT_TRUE(bws_dev);
    ASSERT_OK(dev_->run(gba, bws_dev->get()));
    const std::string where = "heads " + std::to_string(H) + " head_dim " + std::to_string(Dh);
    // Outputs are rounded to bf16 (relative step 2^-8); lse stays fp32.
    EXPECT_TRUE(all_close(from_bf16_host(download(gout, E)), out, 1e-2f, 8e-3f)) << where;
    EXPECT_TRUE(all_close(download(glse, lse.size()), lse, 2e-5f, 1e-5f)) << where;
    // Gradients: bf16 rounding of the stored results and of O inside delta = rowsum(O * dO).
    EXPECT_LT(rel_to_max(from_bf16_host(download(gdq, E)), dq), 2e-2) << where;
    EXPECT_LT(rel_to_max(from_bf16_host(download(gdk, E)), dk), 2e-2) << where;
    EXPECT_LT(rel_to_max(from_bf16_host(download(gdv, E)), dv), 1e-2) << where;
  }
}

TEST_F(GpuKernels, AttentionRejectsBadArgumentsBeforeLaunching) {
  const std::vector<std::int64_t> decreasing{0, 5, 3};
  float* p = upload(std::vector<float>(64));
  gpu::attention_forward_args a{decreasing, 1, 8, p, p, p, p, p};
  auto r = dev_->can_implement(a);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("decreases at index 2"), std::string::npos) << r.error().message();
  const std::vector<std::int64_t> cu{0, 4};
  gpu::attention_forward_args wide{cu, 1, gpu::kMaxAttentionHeadDim + 1, p, p, p, p, p};
  EXPECT_EQ(dev_->can_implement(wide).error().kind(), errc::invalid_argument);
  gpu::attention_backward_args missing{cu, 1, 8, p, p, p, p, p, p, p, nullptr, p};
  EXPECT_EQ(dev_->run(missing, p).error().kind(), errc::invalid_argument);
}

// ---- the whole model ---------------------------------------------------------------------

// Largest |a - b| relative to the largest |b| (gradients span many magnitudes; an element-wise
// relative bound would be dominated by near-zero entries).
double max_rel_diff(const std::vector<float>& a, std::span<const float> b) {
  double diff = 0, scale = 1e-30;
  for (std::size_t i = 0; i < a.size(); ++i) {
    diff = std::max(diff, static_cast<double>(std::abs(a[i] - b[i])));
    scale = std::max(scale, static_cast<double>(std::abs(b[i])));
  }
  return diff / scale;
}

TEST_F(GpuKernels, TrainingStepOfTheGptMatchesTheCpuModel) {
  const model_config cfg{.layers = 2, .d_model = 96, .heads = 3, .vocab = 67, .max_positions = 300};
  auto cpu = model::create(cfg, 5).value();
  auto replica = model::create(dev_, cfg, 5);
  ASSERT_TRUE(replica) << replica.error().to_string();
  const std::vector<std::int64_t> lengths{130, 1, 65, 17};
  const auto tokens = std::accumulate(lengths.begin(), lengths.end(), std::int64_t{0});
  auto layout = ulysses_layout::make(lengths, 1, 0, cfg.heads).value();
  auto in = shard_inputs(layout, synthetic_sequences(lengths, 3, cfg.vocab)).value();
  auto comm = make_local_communicator();
  const float scale = 1.0f / static_cast<float>(tokens);
  ASSERT_TRUE(cpu.zero_grads());
  auto ref = cpu.forward_backward(*comm, layout, in, scale);
  ASSERT_TRUE(ref) << ref.error().to_string();
  ASSERT_OK(replica->zero_grads());
  auto loss = replica->forward_backward(in, lengths, scale);
  ASSERT_TRUE(loss) << loss.error().to_string();
  EXPECT_NEAR(loss->loss_sum, ref->loss_sum, 1e-4 * std::abs(ref->loss_sum));
  std::vector<float> grads(cpu.host_grads().size());
  ASSERT_OK(replica->download_grads(grads));
  for (const auto& p : cpu.parameters()) {
    const auto off = static_cast<std::size_t>(p.offset), cnt = static_cast<std::size_t>(numel_of(p.shape));
    const std::vector<float> g(grads.begin() + static_cast<std::ptrdiff_t>(off),
                               grads.begin() + static_cast<std::ptrdiff_t>(off + cnt));
    EXPECT_LT(max_rel_diff(g, cpu.host_grads().subspan(off, cnt)), 1e-3) << p.name;
  }
  const std::vector<float> ref_grads(cpu.host_grads().begin(), cpu.host_grads().end());
  const adamw_params hp{};
  const double cpu_norm = cpu.optimizer_step(hp, 0.5).value();
  auto norm = replica->optimizer_step(hp, 0.5);
  ASSERT_TRUE(norm) << norm.error().to_string();
  EXPECT_NEAR(*norm, cpu_norm, 1e-3 * cpu_norm);
  std::vector<float> params(cpu.host_params().size());
  ASSERT_OK(replica->download_params(params));
  // Adam's first step moves each parameter by about lr * sign(grad): where a gradient is at the
  // rounding noise of its summation the sign may differ between CPU and GPU, so the update is
  // compared exactly only where the gradient is clearly non-zero; elsewhere it is bounded.
  float max_grad = 0;
  for (float g : ref_grads) max_grad = std::max(max_grad, std::abs(g));
  int mismatched = 0;
  for (std::size_t i = 0; i < params.size(); ++i) {
    const float diff = std::abs(params[i] - cpu.host_params()[i]);
    EXPECT_LE(diff, 2.5f * hp.lr) << "parameter " << i;
    if (std::abs(ref_grads[i]) > 1e-4f * max_grad && diff > 1e-6f + 1e-5f * std::abs(cpu.host_params()[i])) ++mismatched;
  }
  EXPECT_EQ(mismatched, 0);
  // The state round-trips through the host (checkpoints, a joining replica).
  EXPECT_EQ(replica->steps(), 1);
  std::vector<float> m(params.size()), v(params.size());
  ASSERT_OK(replica->download_moments(m, v));
  EXPECT_LT(max_rel_diff(v, cpu.host_second_moments()), 1e-3);
  auto fresh = model::create(dev_, cfg, 5);
  ASSERT_TRUE(fresh);
  ASSERT_OK(fresh->upload_state(params, m, v, replica->steps()));
  std::vector<float> back(params.size());
  ASSERT_OK(fresh->download_params(back));
  EXPECT_EQ(back, params);
  EXPECT_EQ(fresh->steps(), 1);
  EXPECT_EQ(fresh->upload_state(params, m, std::span<const float>{v}.first(3), 1).error().kind(),
            errc::invalid_argument);
}

TEST_F(GpuKernels, TrainingStepOfTheLlamaFamilyWithGroupedQueryAttentionMatchesTheCpuModel) {
  const model_config cfg{.family = model_family::llama, .layers = 2, .d_model = 96, .heads = 6, .vocab = 67,
                         .max_positions = 300, .kv_heads = 2, .ffn = 160};
  auto cpu = model::create(cfg, 5).value();
  auto gpu_model = model::create(dev_, cfg, 5);
  ASSERT_TRUE(gpu_model) << gpu_model.error().to_string();
  const std::vector<std::int64_t> lengths{130, 1, 65, 17};
  const auto tokens = std::accumulate(lengths.begin(), lengths.end(), std::int64_t{0});
  auto layout = ulysses_layout::make(lengths, 1, 0, cfg.heads).value();
  auto in = shard_inputs(layout, synthetic_sequences(lengths, 3, cfg.vocab)).value();
  auto comm = make_local_communicator();
  const float scale = 1.0f / static_cast<float>(tokens);
  auto ref = cpu.forward_backward(*comm, layout, in, scale);
  ASSERT_TRUE(ref) << ref.error().to_string();
  auto got = gpu_model->forward_backward(in, lengths, scale);
  ASSERT_TRUE(got) << got.error().to_string();
  EXPECT_NEAR(got->loss_sum, ref->loss_sum, 1e-4 * std::abs(ref->loss_sum));
  std::vector<float> grads(static_cast<std::size_t>(gpu_model->size()));
  ASSERT_OK(gpu_model->download_grads(grads));
  for (const auto& p : cpu.parameters()) {
    const auto off = static_cast<std::size_t>(p.offset), cnt = static_cast<std::size_t>(numel_of(p.shape));
    const std::vector<float> g(grads.begin() + static_cast<std::ptrdiff_t>(off),
                               grads.begin() + static_cast<std::ptrdiff_t>(off + cnt));
    EXPECT_LT(max_rel_diff(g, cpu.host_grads().subspan(off, cnt)), 1e-3) << p.name;
  }
}

TEST_F(GpuKernels, UlyssesGroupsOfAnyDegreeGiveTheSingleDeviceLossAndGradients) {
  // 3 heads: degree 2 splits them unevenly, degree 4 leaves a rank without heads.
  const model_config cfg{.layers = 1, .d_model = 48, .heads = 3, .vocab = 41, .max_positions = 200};
  const std::vector<std::int64_t> lengths{37, 5, 64, 1};
  const auto tokens = std::accumulate(lengths.begin(), lengths.end(), std::int64_t{0});
  const auto sequences = synthetic_sequences(lengths, 4, cfg.vocab);
  const float scale = 1.0f / static_cast<float>(tokens);
  auto cpu = model::create(cfg, 9).value();
  auto one = ulysses_layout::make(lengths, 1, 0, cfg.heads).value();
  auto local = make_local_communicator();
  auto ref = cpu.forward_backward(*local, one, shard_inputs(one, sequences).value(), scale);
  ASSERT_TRUE(ref) << ref.error().to_string();
  for (int degree : {2, 3, 4}) {
    memory_store store;
    std::vector<std::vector<float>> grads(static_cast<std::size_t>(degree));
    std::vector<double> losses(static_cast<std::size_t>(degree));
    std::vector<std::string> errors(static_cast<std::size_t>(degree));
    std::vector<std::thread> ranks;
    for (int r = 0; r < degree; ++r)
      ranks.emplace_back([&, r] {
        auto fail = [&](const error& e) { errors[static_cast<std::size_t>(r)] = e.to_string(); };
        auto dev = gpu::open_device(0);
        if (!dev) return fail(dev.error());
        auto replica = model::create(std::shared_ptr<gpu::device>{std::move(*dev)}, cfg, 9);
        if (!replica) return fail(replica.error());
        auto comm = make_gloo_communicator(store, "gpu-sp/" + std::to_string(degree), r, degree, gloo_options{});
        if (!comm) return fail(comm.error());
        auto layout = ulysses_layout::make(lengths, degree, r, cfg.heads).value();
        auto loss = replica->forward_backward(**comm, layout, shard_inputs(layout, sequences).value(), scale);
        if (!loss) return fail(loss.error());
        losses[static_cast<std::size_t>(r)] = loss->loss_sum;
        auto& g = grads[static_cast<std::size_t>(r)];
        g.resize(static_cast<std::size_t>(replica->size()));
        if (auto d = replica->download_grads(g); !d) fail(d.error());
      });
    for (auto& t : ranks) t.join();
    for (const auto& e : errors) ASSERT_TRUE(e.empty()) << "degree " << degree << ": " << e;
    EXPECT_NEAR(std::accumulate(losses.begin(), losses.end(), 0.0), ref->loss_sum, 1e-4 * ref->loss_sum)
        << "degree " << degree;
    std::vector<float> sum(grads[0].size(), 0.0f);
    for (const auto& g : grads)
      for (std::size_t i = 0; i < g.size(); ++i) sum[i] += g[i];
    for (const auto& p : cpu.parameters()) {
      const auto off = static_cast<std::size_t>(p.offset), cnt = static_cast<std::size_t>(numel_of(p.shape));
      const std::vector<float> g(sum.begin() + static_cast<std::ptrdiff_t>(off),
                                 sum.begin() + static_cast<std::ptrdiff_t>(off + cnt));
      EXPECT_LT(max_rel_diff(g, cpu.host_grads().subspan(off, cnt)), 1e-3) << p.name << " at degree " << degree;
    }
  }
}

// Sharded states on the GPU (ZeRO-3 over two ranks, Gloo through host copies): the same training
// as one CPU model, shards that move by transfer and by checkpoint bit for bit.
TEST_F(GpuKernels, ShardedStatesTrainLikeOneCpuModelAndMoveBitForBit) {
  const model_config cfg{.family = model_family::llama, .layers = 2, .d_model = 32, .heads = 4, .vocab = 37,
                         .max_positions = 64, .kv_heads = 2};
  const std::vector<std::vector<std::int64_t>> lengths{{29}, {17}};
  const adamw_params hyper{.lr = 1e-2f, .weight_decay = 0.1f};
  constexpr int kSteps = 3;
  // The CPU reference: both sequences as two micro-batches of one model.
  auto cpu = model::create(cfg, 4).value();
  for (int step = 0; step < kSteps; ++step) {
    ASSERT_OK(cpu.zero_grads());
    for (int r = 0; r < 2; ++r) {
      auto seqs = synthetic_sequences(lengths[static_cast<std::size_t>(r)], 10 * step + r, cfg.vocab);
      ASSERT_OK(cpu.forward_backward(shard_inputs(ulysses_layout::make(lengths[static_cast<std::size_t>(r)], 1, 0,
                                                                      cfg.heads).value(), seqs).value(),
                                     lengths[static_cast<std::size_t>(r)], 1.0f / 46));
    }
    ASSERT_OK(cpu.optimizer_step(hyper, 1.0));
  }
  memory_store store;
  const auto dir = std::filesystem::temp_directory_path() / fmt::format("flexsp-gpu-shards-{}", ::getpid());
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  std::vector<std::vector<float>> params(2), moved(2);
  std::vector<std::string> errors(2);
  std::vector<std::thread> ranks;
  for (int r = 0; r < 2; ++r)
    ranks.emplace_back([&, r] {
      auto fail = [&](const error& e) { errors[static_cast<std::size_t>(r)] = e.to_string(); };
      auto dev = gpu::open_device(0);
      if (!dev) return fail(dev.error());
      std::shared_ptr<device> gpu_dev{std::move(*dev)};
      auto m = model::create(gpu_dev, cfg, 4, {2, r});
      if (!m) return fail(m.error());
      auto shards = make_gloo_communicator(store, "gpu-shards", r, 2, gloo_options{});
      if (!shards) return fail(shards.error());
      auto world = make_gloo_communicator(store, "gpu-world", r, 2, gloo_options{});
      if (!world) return fail(world.error());
      auto local = make_local_communicator();
      forward_options opt;
      opt.shard_group = shards->get();
      for (int step = 0; step < kSteps; ++step) {
        if (auto z = m->zero_grads(); !z) return fail(z.error());
        const auto& len = lengths[static_cast<std::size_t>(r)];
        auto layout = ulysses_layout::make(len, 1, 0, cfg.heads).value();
        auto in = shard_inputs(layout, synthetic_sequences(len, 10 * step + r, cfg.vocab)).value();
        if (auto f = m->forward_backward(*local, layout, in, 1.0f / 46, opt); !f) return fail(f.error());
        auto norm = m->gradient_norm(shards->get());
        if (!norm) return fail(norm.error());
        if (auto o = m->optimizer_step(hyper, 1.0, *norm); !o) return fail(o.error());
      }
      auto& p = params[static_cast<std::size_t>(r)];
      p.resize(static_cast<std::size_t>(m->size()));
      if (auto d = m->download_params(p); !d) return fail(d.error());
      if (auto s = save_checkpoint(dir / shard_file_name(2, r), *m); !s) return fail(s.error());
      // Two shards become one whole model on rank 0 and one on rank 1, by transfer.
      auto whole = model::create(gpu_dev, cfg, 0, {1, 0}, true);
      if (!whole) return fail(whole.error());
      const int sources[2] = {0, 1};
      if (auto t = transfer_shards(**world, sources, &*m, *whole); !t) return fail(t.error());
      auto& w = moved[static_cast<std::size_t>(r)];
      w.resize(static_cast<std::size_t>(whole->size()));
      if (auto d = whole->download_params(w); !d) return fail(d.error());
    });
  for (auto& t : ranks) t.join();
  for (const auto& e : errors) ASSERT_TRUE(e.empty()) << e;
  // Shards assembled equal the CPU model's parameters to GPU rounding, and the transferred whole.
  const auto lay0 = shard_layout::of(cfg, 2, 0);
  std::vector<float> assembled(static_cast<std::size_t>(cfg.parameter_count()));
  for (int r = 0; r < 2; ++r)
    for (std::size_t u = 0; u < lay0.units(); ++u) {
      const auto range = lay0.range(u, r);
      for (auto e = range.begin; e < range.end; ++e)
        assembled[static_cast<std::size_t>(e)] =
            params[static_cast<std::size_t>(r)][static_cast<std::size_t>(lay0.local_offset(u) + e - range.begin)];
    }
  EXPECT_LT(max_rel_diff(assembled, cpu.host_params()), 1e-3);
  EXPECT_EQ(moved[0], assembled);
  EXPECT_EQ(moved[1], assembled);
  auto loaded = model::create(cfg, 0).value();
  ASSERT_OK(load_checkpoint(dir, loaded));
  EXPECT_EQ(std::vector<float>(loaded.host_params().begin(), loaded.host_params().end()), assembled);
  std::filesystem::remove_all(dir);
}

// ---- backend choice (meaningful with and without a GPU) ---------------------------------

TEST(DeviceBackend, AutomaticChoiceIsCudaExactlyWhenAGpuIsUsable) {
  auto choice = select_device_backend(backend_request::automatic);
  ASSERT_TRUE(choice) << choice.error().to_string();
  const bool usable = static_cast<bool>(gpu::open_device(0));
  EXPECT_EQ(choice->kind == backend_kind::cuda, usable) << choice->reason;
  EXPECT_EQ(choice->reason.rfind(std::string{to_string(choice->kind)} + ": ", 0), 0u) << choice->reason;
  auto forced = select_device_backend(backend_request::cuda);
  EXPECT_EQ(static_cast<bool>(forced), usable);
  if (!forced) {
    EXPECT_TRUE(forced.error().kind() == errc::unimplemented || forced.error().kind() == errc::not_found);
  }
  auto cpu = select_device_backend(backend_request::cpu);
  ASSERT_TRUE(cpu);
  EXPECT_EQ(cpu->kind, backend_kind::cpu);
  EXPECT_EQ(parse_backend_request("cuda").value(), backend_request::cuda);
  EXPECT_EQ(parse_backend_request("gpu").error().kind(), errc::invalid_argument);
}

}  // namespace
}  // namespace flexsp::kernels
