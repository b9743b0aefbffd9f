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

// Every rank's exchange plan run in one process, the all-to-all done by hand: the scatter puts
// each element where direct indexing says, and the gather brings every rank's input back.
TEST(UlyssesExchangePlan, ScatterLandsEveryElementAndGatherUndoesIt) {
  const std::vector<std::int64_t> lengths{1, 5, 100, 7, 0, 33};
  const int d = 3;
  const std::int64_t H = 5, Dh = 4, C = 3;  // 5 heads over 3 ranks: 2, 2, 1
  std::vector<ulysses_layout> L;
  for (int r = 0; r < d; ++r) L.push_back(ulysses_layout::make(lengths, d, r, H).value());
  const std::int64_t N = L[0].total_tokens();
  auto all_to_all = [&](const std::vector<std::vector<float>>& send, const auto& plans) {
    std::vector<std::vector<float>> recv(d);
    for (int h = 0; h < d; ++h)
      for (int t = 0; t < d; ++t) {
        std::int64_t off = 0;
        for (int k = 0; k < h; ++k) off += plans[t].send_counts[k];
        const auto& blk = send[t];
        recv[h].insert(recv[h].end(), blk.begin() + off, blk.begin() + off + plans[t].send_counts[h]);
      }
    return recv;
  };
  std::vector<ulysses_layout::exchange_plan> sp, gp;
  std::vector<std::vector<float>> src(d), send(d), mid(d), back(d);
  for (int r = 0; r < d; ++r) {
    sp.push_back(L[r].scatter_plan(C, Dh));
    gp.push_back(L[r].gather_plan(C, Dh));
    src[r].resize(static_cast<std::size_t>(L[r].local_tokens() * C * H * Dh));
    std::iota(src[r].begin(), src[r].end(), static_cast<float>(r * 1'000'000));
    send[r].resize(static_cast<std::size_t>(sp[r].send_total));
    copy_blocks(sp[r].pack, src[r].data(), send[r].data());
  }
  auto recv = all_to_all(send, sp);
  for (int r = 0; r < d; ++r) {
    ASSERT_EQ(static_cast<std::int64_t>(recv[r].size()), sp[r].recv_total);
    const auto hs = L[r].head_share(r);
    mid[r].assign(static_cast<std::size_t>(C * N * hs.size * Dh), -1.0f);
    copy_blocks(sp[r].unpack, recv[r].data(), mid[r].data());
    for (int t = 0; t < d; ++t) {
      const auto global = L[t].local_to_global();
      for (std::size_t tl = 0; tl < global.size(); ++tl)
        for (std::int64_t c = 0; c < C; ++c)
          for (std::int64_t j = 0; j < hs.size * Dh; ++j)
            ASSERT_EQ(mid[r][static_cast<std::size_t>((c * N + global[tl]) * hs.size * Dh + j)],
                      src[t][static_cast<std::size_t>((static_cast<std::int64_t>(tl) * C + c) * H * Dh +
                                                      hs.begin * Dh + j)])
                << "rank " << r << " from " << t << " token " << tl << " component " << c;
    }
  }
  for (int r = 0; r < d; ++r) {
    send[r].assign(static_cast<std::size_t>(gp[r].send_total), 0.0f);
    copy_blocks(gp[r].pack, mid[r].data(), send[r].data());
  }
  recv = all_to_all(send, gp);
  for (int r = 0; r < d; ++r) {
    back[r].assign(src[r].size(), -1.0f);
    copy_blocks(gp[r].unpack, recv[r].data(), back[r].data());
    EXPECT_EQ(back[r], src[r]) << "rank " << r;
  }
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
