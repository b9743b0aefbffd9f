#include "flexsp/kernels/ulysses.hpp"

#include <numeric>
#include <thread>

#include <gtest/gtest.h>

#include "flexsp/kernels/gloo_communicator.hpp"

namespace flexsp::kernels {
namespace {

TEST(SplitEvenly, SpreadsTheRemainderOverTheFirstParts) {
  EXPECT_EQ(split_evenly(10, 4, 0).size, 3);
  EXPECT_EQ(split_evenly(10, 4, 1).begin, 3);
  EXPECT_EQ(split_evenly(10, 4, 2).size, 2);
  EXPECT_EQ(split_evenly(10, 4, 3).begin, 8);
  EXPECT_EQ(split_evenly(1, 3, 2).size, 0);
}

TEST(UlyssesLayout, SharesCoverEverySequenceContiguously) {
  const std::vector<std::int64_t> lengths{1, 5, 100, 513, 2047};
  for (int d : {1, 2, 3, 4, 8}) {
    std::int64_t total = 0;
    for (int r = 0; r < d; ++r) {
      auto l = ulysses_layout::make(lengths, d, r, 6).value();
      total += l.local_tokens();
      auto g = l.local_to_global();
      auto pos = l.local_positions();
      ASSERT_EQ(g.size(), pos.size());
      for (std::size_t i = 1; i < g.size(); ++i) EXPECT_LT(g[i - 1], g[i]);
    }
    EXPECT_EQ(total, 1 + 5 + 100 + 513 + 2047) << "degree " << d;
  }
  auto l = ulysses_layout::make(lengths, 8, 7, 6).value();
  EXPECT_EQ(l.token_share(0, 7).size, 0);  // a rank may hold no token of a short sequence
  EXPECT_EQ(l.head_share(7).size, 0);      // and no head when heads < degree
  EXPECT_EQ(l.head_share(0).size, 1);
}

TEST(UlyssesLayout, RejectsBadRankAndHeads) {
  EXPECT_FALSE(ulysses_layout::make({4}, 2, 2, 4));
  EXPECT_FALSE(ulysses_layout::make({4}, 0, 0, 4));
  EXPECT_FALSE(ulysses_layout::make({4}, 2, 0, 0));
  EXPECT_FALSE(ulysses_layout::make({-1}, 1, 0, 1));
}

TEST(ShardInputs, ShiftsTargetsByOneAndChecksSizes) {
  auto l = ulysses_layout::make({4}, 2, 1, 1).value();
  std::vector<std::vector<std::int32_t>> seqs{{10, 11, 12, 13, 14}};
  auto in = shard_inputs(l, seqs).value();
  EXPECT_EQ(in.tokens, (std::vector<std::int32_t>{12, 13}));
  EXPECT_EQ(in.targets, (std::vector<std::int32_t>{13, 14}));
  EXPECT_EQ(in.positions, (std::vector<std::int32_t>{2, 3}));
  std::vector<std::vector<std::int32_t>> bad{{1, 2}};
  EXPECT_FALSE(shard_inputs(l, bad));
}

// Each value encodes (global token, component, head, element), so a misplaced block shows.
float code(std::int64_t g, std::int64_t c, std::int64_t h, std::int64_t e) {
  return static_cast<float>(g * 1000 + c * 100 + h * 10 + e);
}

TEST(UlyssesExchange, ScatterHeadsThenGatherHeadsRoundTripsOverGlooThreads) {
  const std::vector<std::int64_t> lengths{1, 5, 7};
  const std::int64_t H = 5, Dh = 2, C = 3;
  for (int d : {2, 3}) {
    memory_store store;
    std::vector<std::thread> threads;
    std::vector<int> failures(d, 0);
    for (int r = 0; r < d; ++r) {
      threads.emplace_back([&, r] {
        gloo_options opt;
        opt.timeout = std::chrono::seconds{20};
        auto comm = make_gloo_communicator(store, "roundtrip" + std::to_string(d), r, d, opt);
        if (!comm) {
          failures[r] = 1;
          return;
        }
        auto l = ulysses_layout::make(lengths, d, r, H).value();
        const auto g = l.local_to_global();
        std::vector<float> src(l.local_tokens() * C * H * Dh);
        for (std::size_t t = 0; t < g.size(); ++t)
          for (std::int64_t c = 0; c < C; ++c)
            for (std::int64_t h = 0; h < H; ++h)
              for (std::int64_t e = 0; e < Dh; ++e) src[((t * C + c) * H + h) * Dh + e] = code(g[t], c, h, e);
        const auto hs = l.head_share(r);
        std::vector<float> mid(C * l.total_tokens() * hs.size * Dh), back(src.size()), scratch;
        if (!l.scatter_heads(**comm, src, mid, C, Dh, scratch)) failures[r] = 2;
        for (std::int64_t c = 0; c < C; ++c)
          for (std::int64_t t = 0; t < l.total_tokens(); ++t)
            for (std::int64_t h = 0; h < hs.size; ++h)
              for (std::int64_t e = 0; e < Dh; ++e)
                if (mid[((c * l.total_tokens() + t) * hs.size + h) * Dh + e] != code(t, c, hs.begin + h, e))
                  failures[r] = 3;
        if (!l.gather_heads(**comm, mid, back, C, Dh, scratch)) failures[r] = 4;
        if (back != src) failures[r] = 5;
      });
    }
    for (auto& t : threads) t.join();
    for (int r = 0; r < d; ++r) EXPECT_EQ(failures[r], 0) << "degree " << d << " rank " << r;
  }
}

}  // namespace
}  // namespace flexsp::kernels
