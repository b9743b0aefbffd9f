#include "flexsp/kernels/attention.hpp"

#include <cmath>
#include <random>
#include <string_view>
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

TEST(VarlenAttention, WorkspaceIsLinearInTokensNeverQuadratic) {
  // K and V (and dK, dV in backward) are copied head-major; the rest is a few tiles per thread.
  const std::vector<std::int64_t> short_cu{0, 16}, long_cu{0, 32768};
  const std::int64_t H = 8, Dh = 32;
  attention::forward_args a{short_cu, H, Dh, nullptr, nullptr, nullptr, nullptr, nullptr, 1};
  attention::forward_args b{long_cu, H, Dh, nullptr, nullptr, nullptr, nullptr, nullptr, 1};
  EXPECT_EQ(attention::workspace_size(b) - attention::workspace_size(a), 2 * (32768 - 16) * H * Dh);
  EXPECT_LT(attention::workspace_size(a), 32768);  // a few tiles beyond the copies
  attention::backward_args c{long_cu, H, Dh}, d{short_cu, H, Dh};
  c.threads = d.threads = 1;
  EXPECT_EQ(attention::workspace_size(c) - attention::workspace_size(d), 4 * (32768 - 16) * H * Dh);
  EXPECT_LT(attention::workspace_size(d), 65536);  // 32768^2 scores would be 1e9 floats
}

// dQ, dK, dV of sum(O * dO) from the full causal probability matrix, in double.
struct naive_grads {
  std::vector<float> dq, dk, dv;
};
naive_grads naive_backward(const std::vector<std::int64_t>& cu, std::int64_t H, std::int64_t Dh,
                           const std::vector<float>& q, const std::vector<float>& k, const std::vector<float>& v,
                           const std::vector<float>& dout) {
  naive_grads g{std::vector<float>(q.size()), std::vector<float>(q.size()), std::vector<float>(q.size())};
  std::vector<double> dq(q.size()), dk(q.size()), dv(q.size());
  const double scale = 1.0 / std::sqrt(static_cast<double>(Dh));
  auto at = [&](std::int64_t t, std::int64_t h, std::int64_t e) { return static_cast<std::size_t>((t * H + h) * Dh + e); };
  for (std::size_t s = 0; s + 1 < cu.size(); ++s)
    for (std::int64_t h = 0; h < H; ++h)
      for (std::int64_t i = cu[s]; i < cu[s + 1]; ++i) {
        std::vector<double> p, dp;
        double mx = -1e300, sum = 0, delta = 0;
        for (std::int64_t j = cu[s]; j <= i; ++j) {
          double d = 0;
          for (std::int64_t e = 0; e < Dh; ++e) d += double{q[at(i, h, e)]} * k[at(j, h, e)];
          p.push_back(d * scale);
          mx = std::max(mx, p.back());
        }
        for (auto& x : p) sum += (x = std::exp(x - mx));
        for (auto& x : p) x /= sum;
        for (std::int64_t j = cu[s]; j <= i; ++j) {
          double d = 0;
          for (std::int64_t e = 0; e < Dh; ++e) d += double{dout[at(i, h, e)]} * v[at(j, h, e)];
          dp.push_back(d);
          delta += p[j - cu[s]] * d;
        }
        for (std::int64_t j = cu[s]; j <= i; ++j) {
          const double pj = p[j - cu[s]], ds = pj * (dp[j - cu[s]] - delta) * scale;
          for (std::int64_t e = 0; e < Dh; ++e) {
            dv[at(j, h, e)] += pj * dout[at(i, h, e)];
            dq[at(i, h, e)] += ds * k[at(j, h, e)];
            dk[at(j, h, e)] += ds * q[at(i, h, e)];
          }
        }
      }
  for (std::size_t i = 0; i < q.size(); ++i) {
    g.dq[i] = static_cast<float>(dq[i]);
    g.dk[i] = static_cast<float>(dk[i]);
    g.dv[i] = static_cast<float>(dv[i]);
  }
  return g;
}

// Every instruction-set variant this CPU runs, for head sizes that fill whole vectors, part of
// one, or several with a remainder, and sequences that end inside, on and just past a tile.
TEST(VarlenAttention, EveryCpuVariantMatchesTheNaiveForwardAndBackward) {
  const std::vector<std::int64_t> cu{0, 1, 64, 129, 129, 329};
  const std::int64_t H = 2, N = cu.back();
  for (std::int64_t Dh : {4, 8, 20, 32, 40, 64, 72, 128}) {
    auto q = random_vector(N * H * Dh, 11), k = random_vector(N * H * Dh, 12), v = random_vector(N * H * Dh, 13);
    auto dout = random_vector(N * H * Dh, 14);
    const auto ref = naive_attention(cu, H, Dh, q, k, v);
    const auto gref = naive_backward(cu, H, Dh, q, k, v, dout);
    for (std::string_view variant : attention::supported_variants()) {
      SCOPED_TRACE(testing::Message() << "variant " << variant << " head_dim " << Dh);
      std::vector<float> out(q.size()), lse(N * H), dq(q.size()), dk(q.size()), dv(q.size());
      attention::forward_args fa{cu, H, Dh, q.data(), k.data(), v.data(), out.data(), lse.data(), 2, variant};
      attention::backward_args ba{cu,        H,         Dh,        q.data(),  k.data(), v.data(), out.data(),
                                  lse.data(), dout.data(), dq.data(), dk.data(), dv.data(), 2,       variant};
      std::vector<float> ws(attention::workspace_size(fa)), bws(attention::workspace_size(ba));
      attention::run(fa, ws);
      attention::run(ba, bws);
      for (std::size_t i = 0; i < out.size(); ++i) {
        ASSERT_NEAR(out[i], ref[i], 1e-4) << "out " << i;
        ASSERT_NEAR(dq[i], gref.dq[i], 2e-4) << "dq " << i;
        ASSERT_NEAR(dk[i], gref.dk[i], 2e-4) << "dk " << i;
        ASSERT_NEAR(dv[i], gref.dv[i], 2e-4) << "dv " << i;
      }
    }
  }
}

// Work splits differently with the thread count (a head too long for one thread is split into
// key-tile and query-tile items): the bits stay the same.
class AttentionThreads : public ::testing::TestWithParam<std::vector<std::int64_t>> {};
INSTANTIATE_TEST_SUITE_P(Layouts, AttentionThreads,
                         ::testing::Values(std::vector<std::int64_t>{0, 300, 310, 500},  // balanced heads
                                           std::vector<std::int64_t>{0, 700},           // one long head
                                           std::vector<std::int64_t>{0, 650, 660, 700}));

TEST_P(AttentionThreads, ResultsDoNotDependOnTheThreadCount) {
  const std::vector<std::int64_t> cu = GetParam();
  const std::int64_t H = cu.size() == 2 ? 1 : 3, Dh = 32, N = cu.back();
  auto q = random_vector(N * H * Dh, 21), k = random_vector(N * H * Dh, 22), v = random_vector(N * H * Dh, 23);
  auto dout = random_vector(N * H * Dh, 24);
  std::vector<std::vector<float>> results;
  for (int threads : {1, 2, 3, 5}) {
    std::vector<float> out(q.size()), lse(N * H), dq(q.size()), dk(q.size()), dv(q.size());
    attention::forward_args fa{cu, H, Dh, q.data(), k.data(), v.data(), out.data(), lse.data(), threads};
    attention::backward_args ba{cu,        H,         Dh,        q.data(),  k.data(), v.data(), out.data(),
                                lse.data(), dout.data(), dq.data(), dk.data(), dv.data(), threads};
    std::vector<float> ws(attention::workspace_size(fa)), bws(attention::workspace_size(ba));
    attention::run(fa, ws);
    attention::run(ba, bws);
    out.insert(out.end(), dq.begin(), dq.end());
    out.insert(out.end(), dk.begin(), dk.end());
    out.insert(out.end(), dv.begin(), dv.end());
    results.push_back(out);
  }
  for (std::size_t i = 1; i < results.size(); ++i) EXPECT_EQ(results[0], results[i]) << "threads case " << i;
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
