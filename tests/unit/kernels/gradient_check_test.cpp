// Finite-difference checks of every kernel's backward pass: the loss is sum(out * r) for a fixed
// random r, so d loss / d out = r; central differences of the fp32 forward (accumulated in
// double) must match the analytic gradient within a tolerance fp32 differencing can meet.
#include <cmath>
#include <functional>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "flexsp/kernels/attention.hpp"
#include "flexsp/kernels/model.hpp"
#include "flexsp/kernels/ops.hpp"

namespace flexsp::kernels {
namespace {

std::vector<float> random_vector(std::size_t n, std::uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 rng{seed};
  std::normal_distribution<float> dist{0.0f, scale};
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

double dot(const std::vector<float>& a, const std::vector<float>& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += static_cast<double>(a[i]) * b[i];
  return s;
}

// Compares `analytic` with central differences of `loss` w.r.t. every element of `x`
// (or every `stride`-th one).
void expect_gradient(const char* what, std::vector<float>& x, const std::vector<float>& analytic,
                     const std::function<double()>& loss, float eps = 1e-2f, std::size_t stride = 1) {
  ASSERT_EQ(x.size(), analytic.size()) << what;
  int bad = 0;
  for (std::size_t i = 0; i < x.size(); i += stride) {
    const float saved = x[i];
    x[i] = saved + eps;
    const double up = loss();
    x[i] = saved - eps;
    const double down = loss();
    x[i] = saved;
    const double numeric = (up - down) / (2.0 * eps);
    const double tol = 2e-3 + 2e-2 * std::abs(numeric);
    if (std::abs(numeric - analytic[i]) > tol && bad++ < 5)
      ADD_FAILURE() << what << "[" << i << "]: analytic " << analytic[i] << " numeric " << numeric;
  }
  EXPECT_EQ(bad, 0) << what;
}

TEST(GradientCheck, LinearMatchesFiniteDifferences) {
  const std::int64_t n = 5, in = 7, out = 6;
  auto x = random_vector(n * in, 1), w = random_vector(in * out, 2), b = random_vector(out, 3);
  const auto r = random_vector(n * out, 4);
  auto loss = [&] {
    std::vector<float> y(n * out);
    linear_forward(x, w, b, y, n, in, out);
    return dot(y, r);
  };
  std::vector<float> dx(x.size()), dw(w.size()), db(b.size());
  linear_backward(r, x, w, dx, dw, db, n, in, out);
  expect_gradient("dx", x, dx, loss);
  expect_gradient("dw", w, dw, loss);
  expect_gradient("db", b, db, loss);
}

TEST(GradientCheck, RmsNormMatchesFiniteDifferences) {
  const std::int64_t n = 4, d = 9;
  auto x = random_vector(n * d, 15), g = random_vector(d, 16);
  const auto r = random_vector(n * d, 17);
  std::vector<float> rstd(n);
  auto loss = [&] {
    std::vector<float> y(n * d);
    rmsnorm_forward(x, g, y, rstd, d, 1e-5f);
    return dot(y, r);
  };
  loss();
  std::vector<float> dx(x.size()), dg(d);
  rmsnorm_backward(r, x, g, rstd, dx, dg, d);
  expect_gradient("dx", x, dx, loss);
  expect_gradient("dgamma", g, dg, loss);
}

TEST(GradientCheck, SwiGluMatchesFiniteDifferences) {
  const std::int64_t n = 3, f = 5;
  auto gu = random_vector(n * 2 * f, 18);
  const auto r = random_vector(n * f, 19);
  auto loss = [&] {
    std::vector<float> y(n * f);
    swiglu_forward(gu, y, f);
    return dot(y, r);
  };
  std::vector<float> dgu(gu.size());
  swiglu_backward(r, gu, dgu, f);
  expect_gradient("dgate_up", gu, dgu, loss);
}

TEST(Rope, RotatesPairsByPositionAndInvertsExactlyEnough) {
  // 2 rows, 3 heads of 4 (2 rotated), row stride 14 (2 floats past the heads untouched).
  const std::int64_t heads = 3, rotated = 2, dh = 4, stride = 14;
  const std::vector<std::int32_t> positions{0, 7};
  auto x = random_vector(2 * stride, 20);
  const auto orig = x;
  rope(x, positions, rotated, stride, dh, 10000.0f, false);
  for (std::int64_t i = 0; i < stride; ++i) EXPECT_FLOAT_EQ(x[i], orig[i]) << "position 0 is the identity";
  for (std::int64_t i = rotated * dh; i < stride; ++i) EXPECT_EQ(x[stride + i], orig[stride + i]) << "not rotated";
  // Pair (0, 2) of head 0 at position 7 turns by 7 radians (frequency 1), pair (1, 3) by 7e-2.
  const float a = orig[stride + 0], b = orig[stride + 2];
  EXPECT_NEAR(x[stride + 0], a * std::cos(7.0f) - b * std::sin(7.0f), 1e-6);
  EXPECT_NEAR(x[stride + 2], b * std::cos(7.0f) + a * std::sin(7.0f), 1e-6);
  const float f1 = 1.0f / std::pow(10000.0f, 0.5f);
  EXPECT_NEAR(x[stride + 1], orig[stride + 1] * std::cos(7 * f1) - orig[stride + 3] * std::sin(7 * f1), 1e-6);
  // A rotation keeps norms, and the inverse undoes it (what the backward pass relies on).
  rope(x, positions, rotated, stride, dh, 10000.0f, true);
  for (std::size_t i = 0; i < x.size(); ++i) EXPECT_NEAR(x[i], orig[i], 1e-6) << i;
  (void)heads;
}

TEST(GradientCheck, LayerNormMatchesFiniteDifferences) {
  const std::int64_t n = 4, d = 9;
  auto x = random_vector(n * d, 5), g = random_vector(d, 6), b = random_vector(d, 7);
  const auto r = random_vector(n * d, 8);
  std::vector<float> mean(n), rstd(n);
  auto loss = [&] {
    std::vector<float> y(n * d);
    layernorm_forward(x, g, b, y, mean, rstd, d);
    return dot(y, r);
  };
  loss();
  std::vector<float> dx(x.size()), dg(d), db(d);
  layernorm_backward(r, x, g, mean, rstd, dx, dg, db, d);
  expect_gradient("dx", x, dx, loss, 1e-3f);
  expect_gradient("dgamma", g, dg, loss, 1e-3f);
  expect_gradient("dbeta", b, db, loss, 1e-3f);
}

TEST(GradientCheck, GeluMatchesFiniteDifferences) {
  auto x = random_vector(40, 9, 2.0f);
  const auto r = random_vector(40, 10);
  auto loss = [&] {
    std::vector<float> y(x.size());
    gelu_forward(x, y);
    return dot(y, r);
  };
  std::vector<float> dx(x.size());
  gelu_backward(r, x, dx);
  expect_gradient("dx", x, dx, loss, 1e-3f);
}

TEST(GradientCheck, ResidualAddMatchesFiniteDifferences) {
  auto a = random_vector(12, 11), b = random_vector(12, 12);
  const auto r = random_vector(12, 13);
  auto loss = [&] {
    std::vector<float> y(a.size());
    residual_forward(a, b, y);
    return dot(y, r);
  };
  std::vector<float> da(a.size()), db(b.size());
  residual_backward(r, da, db);
  expect_gradient("da", a, da, loss);
  expect_gradient("db", b, db, loss);
}

TEST(GradientCheck, EmbeddingMatchesFiniteDifferences) {
  const std::int64_t vocab = 6, max_pos = 8, d = 3;
  const std::vector<std::int32_t> tokens{1, 4, 1, 0, 5}, positions{0, 1, 2, 0, 7};
  auto wte = random_vector(vocab * d, 14), wpe = random_vector(max_pos * d, 15);
  const auto r = random_vector(tokens.size() * d, 16);
  auto loss = [&] {
    std::vector<float> y(tokens.size() * d);
    EXPECT_TRUE(embedding_forward(tokens, positions, wte, wpe, y, d));
    return dot(y, r);
  };
  std::vector<float> dwte(wte.size()), dwpe(wpe.size());
  embedding_backward(tokens, positions, r, dwte, dwpe, d);
  expect_gradient("dwte", wte, dwte, loss);
  expect_gradient("dwpe", wpe, dwpe, loss);
}

TEST(GradientCheck, EmbeddingRejectsOutOfRangeIds) {
  std::vector<float> wte(4 * 2), wpe(3 * 2), y(2);
  const std::vector<std::int32_t> bad_token{4}, ok_pos{0}, ok_token{1}, bad_pos{3};
  auto r = embedding_forward(bad_token, ok_pos, wte, wpe, y, 2);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().kind(), errc::invalid_argument);
  EXPECT_FALSE(embedding_forward(ok_token, bad_pos, wte, wpe, y, 2));
}

TEST(GradientCheck, CrossEntropyMatchesFiniteDifferences) {
  const std::int64_t n = 4, vocab = 7;
  auto logits = random_vector(n * vocab, 17, 2.0f);
  const std::vector<std::int32_t> targets{0, 6, 3, 3};
  const float scale = 0.25f;
  auto loss = [&] { return scale * cross_entropy_forward_backward(logits, targets, {}, vocab, scale).value(); };
  std::vector<float> dlogits(logits.size());
  ASSERT_TRUE(cross_entropy_forward_backward(logits, targets, dlogits, vocab, scale));
  expect_gradient("dlogits", logits, dlogits, loss, 1e-3f);
}

TEST(GradientCheck, CrossEntropyRejectsBadTarget) {
  std::vector<float> logits(3);
  const std::vector<std::int32_t> t{3};
  auto r = cross_entropy_forward_backward(logits, t, {}, 3, 1.0f);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().kind(), errc::invalid_argument);
}

TEST(GradientCheck, VarlenCausalAttentionMatchesFiniteDifferences) {
  // 130 crosses two query/key tile boundaries; 1 and 5 are shorter than a tile.
  const std::vector<std::int64_t> cu{0, 1, 6, 136};
  const std::int64_t H = 2, Dh = 4, N = cu.back();
  auto q = random_vector(N * H * Dh, 18), k = random_vector(N * H * Dh, 19), v = random_vector(N * H * Dh, 20);
  const auto r = random_vector(N * H * Dh, 21);
  std::vector<float> out(N * H * Dh), lse(N * H);
  attention::forward_args fa{cu, H, Dh, q.data(), k.data(), v.data(), out.data(), lse.data()};
  std::vector<float> ws(attention::workspace_size(fa));
  auto loss = [&] {
    attention::run(fa, ws);
    return dot(out, r);
  };
  loss();
  std::vector<float> dq(q.size()), dk(k.size()), dv(v.size());
  attention::backward_args ba{cu, H, Dh, q.data(), k.data(), v.data(), out.data(), lse.data(), r.data(),
                              dq.data(), dk.data(), dv.data()};
  ASSERT_TRUE(attention::can_implement(ba));
  std::vector<float> bws(attention::workspace_size(ba));
  attention::run(ba, bws);
  expect_gradient("dq", q, dq, loss, 1e-2f, 3);
  expect_gradient("dk", k, dk, loss, 1e-2f, 3);
  expect_gradient("dv", v, dv, loss, 1e-2f, 3);
}

void check_whole_model(const model_config& cfg) {
  auto mdl = model::create(cfg, 7).value();
  // Larger init than GPT-2's 0.02 so every path carries a measurable gradient.
  {
    std::mt19937_64 rng{3};
    std::normal_distribution<float> dist{0.0f, 0.3f};
    for (auto& p : mdl.host_params()) p += dist(rng);
  }
  const std::vector<std::int64_t> lengths{3, 70};
  std::vector<std::vector<std::int32_t>> seqs;
  std::mt19937_64 rng{5};
  for (auto L : lengths) {
    std::vector<std::int32_t> s(L + 1);
    for (auto& t : s) t = static_cast<std::int32_t>(rng() % cfg.vocab);
    seqs.push_back(s);
  }
  auto layout = ulysses_layout::make(lengths, 1, 0, cfg.heads).value();
  auto in = shard_inputs(layout, seqs).value();
  auto comm = make_local_communicator();
  const float scale = 1.0f / 73.0f;
  ASSERT_TRUE(mdl.zero_grads());
  ASSERT_TRUE(mdl.forward_backward(*comm, layout, in, scale));
  std::vector<float> analytic(mdl.host_grads().begin(), mdl.host_grads().end());
  std::vector<float> params(mdl.host_params().begin(), mdl.host_params().end());
  auto loss = [&] {
    std::copy(params.begin(), params.end(), mdl.host_params().begin());
    return scale * mdl.forward_backward(*comm, layout, in, scale, {.backward = false}).value().loss_sum;
  };
  // Every parameter tensor, a handful of elements each.
  for (const auto& p : mdl.parameters()) {
    std::vector<float> sub_x, sub_g;
    const auto n = numel_of(p.shape);
    const std::int64_t step = std::max<std::int64_t>(1, n / 6);
    std::vector<std::int64_t> idx;
    for (std::int64_t i = 0; i < n; i += step) idx.push_back(p.offset + i);
    for (auto i : idx) {
      const float saved = params[i];
      const float eps = 1e-2f;
      params[i] = saved + eps;
      const double up = loss();
      params[i] = saved - eps;
      const double down = loss();
      params[i] = saved;
      const double numeric = (up - down) / (2.0 * eps);
      EXPECT_NEAR(analytic[i], numeric, 1e-3 + 3e-2 * std::abs(numeric)) << p.name << " element " << i - p.offset;
    }
  }
}

TEST(GradientCheck, WholeModelMatchesFiniteDifferences) {
  check_whole_model({.layers = 2, .d_model = 8, .heads = 2, .vocab = 11, .max_positions = 80});
}

TEST(GradientCheck, WholeLlamaModelWithGroupedQueryAttentionMatchesFiniteDifferences) {
  check_whole_model({.family = model_family::llama, .layers = 2, .d_model = 16, .heads = 4, .vocab = 11,
                     .max_positions = 80, .kv_heads = 2, .ffn = 12});
}

TEST(AdamW, MatchesHandComputedUpdate) {
  std::vector<float> p{1.0f, -2.0f}, g{0.5f, 0.1f}, m(2), v(2);
  adamw_params hp{.lr = 0.1f, .beta1 = 0.9f, .beta2 = 0.99f, .eps = 1e-8f, .weight_decay = 0.01f};
  adamw_update(p, g, m, v, 1, hp);
  // Step 1: m_hat = g, v_hat = g^2, so the update is lr * sign(g) after decay.
  EXPECT_NEAR(p[0], 1.0f - 0.1f * 0.01f * 1.0f - 0.1f, 1e-6);
  EXPECT_NEAR(p[1], -2.0f + 0.1f * 0.01f * 2.0f - 0.1f, 1e-6);
  adamw_update(p, g, m, v, 2, hp);
  const double m2 = 0.9 * 0.05 + 0.1 * 0.5, v2 = 0.99 * 0.0025 + 0.01 * 0.25;
  const double upd = 0.1 * (m2 / (1 - 0.81)) / (std::sqrt(v2 / (1 - 0.9801)) + 1e-8);
  EXPECT_NEAR(p[0], (0.899f - 0.1f * 0.01f * 0.899f) - upd, 1e-5);
}

TEST(GradClip, ScalesToTheMaximumNormAndReportsTheOriginal) {
  std::vector<float> g{3.0f, 4.0f};
  EXPECT_NEAR(clip_grad_norm(g, 1.0), 5.0, 1e-9);
  EXPECT_NEAR(l2_norm(g), 1.0, 1e-5);
  std::vector<float> small{0.3f, 0.4f};
  clip_grad_norm(small, 1.0);
  EXPECT_FLOAT_EQ(small[0], 0.3f);
}

}  // namespace
}  // namespace flexsp::kernels
