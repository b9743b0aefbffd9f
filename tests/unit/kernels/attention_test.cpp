#include "flexsp/kernels/attention.hpp"

#include <cmath>
#include <random>
#include <vector>

#include <gtest/gtest.h>

namespace flexsp::kernels {
namespace {

std::vector<float> random_vector(std::size_t n, std::uint64_t seed) {
  std::mt19937_64 rng{seed};
  std::normal_distribution<float> dist;
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

// Materialises the full causal score matrix per sequence and head, in double.
std::vector<float> naive_attention(const std::vector<std::int64_t>& cu, std::int64_t H, std::int64_t Dh,
                                   const std::vector<float>& q, const std::vector<float>& k,
                                   const std::vector<float>& v) {
  std::vector<float> out(q.size());
  const double scale = 1.0 / std::sqrt(static_cast<double>(Dh));
  for (std::size_t s = 0; s + 1 < cu.size(); ++s)
    for (std::int64_t h = 0; h < H; ++h)
      for (std::int64_t i = cu[s]; i < cu[s + 1]; ++i) {
        std::vector<double> p;
        double mx = -1e300;
        for (std::int64_t j = cu[s]; j <= i; ++j) {
          double d = 0;
          for (std::int64_t e = 0; e < Dh; ++e) d += q[(i * H + h) * Dh + e] * k[(j * H + h) * Dh + e];
          p.push_back(d * scale);
          mx = std::max(mx, p.back());
        }
        double sum = 0;
        for (auto& x : p) sum += (x = std::exp(x - mx));
        for (std::int64_t e = 0; e < Dh; ++e) {
          double acc = 0;
          for (std::int64_t j = cu[s]; j <= i; ++j) acc += p[j - cu[s]] * v[(j * H + h) * Dh + e];
          out[(i * H + h) * Dh + e] = static_cast<float>(acc / sum);
        }
      }
  return out;
}

TEST(VarlenAttention, MatchesNaiveCausalAttentionPerSequence) {
  const std::vector<std::int64_t> cu{0, 1, 6, 206, 206, 270};  // includes an empty sequence
  const std::int64_t H = 3, Dh = 8, N = cu.back();
  auto q = random_vector(N * H * Dh, 1), k = random_vector(N * H * Dh, 2), v = random_vector(N * H * Dh, 3);
  std::vector<float> out(q.size()), lse(N * H);
  attention::forward_args fa{cu, H, Dh, q.data(), k.data(), v.data(), out.data(), lse.data()};
  ASSERT_TRUE(attention::can_implement(fa));
  std::vector<float> ws(attention::workspace_size(fa));
  attention::run(fa, ws);
  const auto ref = naive_attention(cu, H, Dh, q, k, v);
  for (std::size_t i = 0; i < out.size(); ++i) ASSERT_NEAR(out[i], ref[i], 1e-4) << "element " << i;
}

TEST(VarlenAttention, TokensDoNotAttendAcrossSequences) {
  const std::vector<std::int64_t> cu{0, 4, 8};
  const std::int64_t H = 1, Dh = 2, N = 8;
  auto q = random_vector(N * Dh, 4), k = random_vector(N * Dh, 5), v = random_vector(N * Dh, 6);
  std::vector<float> out(q.size()), lse(N), out2(q.size());
  attention::forward_args fa{cu, H, Dh, q.data(), k.data(), v.data(), out.data(), lse.data()};
  std::vector<float> ws(attention::workspace_size(fa));
  attention::run(fa, ws);
  for (std::int64_t i = 0; i < 4 * Dh; ++i) v[i] += 100.0f;  // change only sequence 0's values
  fa.out = out2.data();
  attention::run(fa, ws);
  for (std::int64_t i = 4 * Dh; i < N * Dh; ++i) EXPECT_EQ(out[i], out2[i]);
  EXPECT_NE(out[0], out2[0]);
}

TEST(VarlenAttention, WorkspaceDoesNotGrowWithSequenceLength) {
  const std::vector<std::int64_t> short_cu{0, 16}, long_cu{0, 32768};
  attention::forward_args a{short_cu, 8, 32, nullptr, nullptr, nullptr, nullptr, nullptr};
  attention::forward_args b{long_cu, 8, 32, nullptr, nullptr, nullptr, nullptr, nullptr};
  EXPECT_EQ(attention::workspace_size(a), attention::workspace_size(b));
  EXPECT_LT(attention::workspace_size(b), 32768);  // far below one L x L matrix (1e9 floats)
  attention::backward_args c{long_cu, 8, 32};
  EXPECT_LT(attention::workspace_size(c), 32768);
}

TEST(VarlenAttention, RunsAnEightThousandTokenSequenceWithFiniteOutput) {
  const std::vector<std::int64_t> cu{0, 8192};
  const std::int64_t H = 1, Dh = 8, N = 8192;
  auto q = random_vector(N * Dh, 7), k = random_vector(N * Dh, 8), v = random_vector(N * Dh, 9);
  std::vector<float> out(q.size()), lse(N);
  attention::forward_args fa{cu, H, Dh, q.data(), k.data(), v.data(), out.data(), lse.data()};
  std::vector<float> ws(attention::workspace_size(fa));
  attention::run(fa, ws);
  for (float x : out) ASSERT_TRUE(std::isfinite(x));
  // The last token averages 8192 values: its output is within the value range.
  EXPECT_LT(std::abs(out[(N - 1) * Dh]), 5.0f);
}

TEST(VarlenAttention, RejectsDecreasingSeqlens) {
  const std::vector<std::int64_t> cu{0, 5, 3};
  std::vector<float> buf(40);
  attention::forward_args fa{cu, 1, 8, buf.data(), buf.data(), buf.data(), buf.data(), buf.data()};
  auto r = attention::can_implement(fa);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().kind(), errc::invalid_argument);
}

}  // namespace
}  // namespace flexsp::kernels
