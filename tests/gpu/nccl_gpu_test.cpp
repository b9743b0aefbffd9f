// The NCCL backend on a group of one (the sanity check a single GPU allows): every collective
// on device and host buffers, against the result the local communicator defines, and abort.
// With two or more GPUs, also groups of one rank (thread) per GPU: every collective against its
// definition, abort from another thread, and a peer that aborts.
#include <atomic>
#include <chrono>
#include <functional>
#include <numeric>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "flexsp/kernels/gpu.hpp"
#include "flexsp/kernels/nccl_collectives.hpp"
#include "flexsp/kernels/rendezvous_store.hpp"

namespace flexsp::kernels {
namespace {

class NcclOneRank : public ::testing::Test {
protected:
  void SetUp() override {
    auto dev = gpu::open_device(0);
    if (!dev) GTEST_SKIP() << "no GPU to test on: " << dev.error().to_string();
    dev_ = std::move(*dev);
    const auto nccl = query_nccl();
    if (!nccl.available) GTEST_SKIP() << "NCCL unavailable: " << nccl.reason;
    auto comm = make_nccl_communicator(store_, "nccl-test/e0/d0", 0, 1, 0, nccl_options{});
    ASSERT_TRUE(comm) << comm.error().to_string();
    comm_ = std::move(*comm);
  }

  memory_store store_;
  std::unique_ptr<gpu::device> dev_;
  std::unique_ptr<communicator> comm_;
};

TEST_F(NcclOneRank, ReportsALoadedLibraryNewEnoughForTheBackend) {
  const auto s = query_nccl();
  EXPECT_GE(s.version, kNcclRequiredVersion);
  EXPECT_FALSE(s.library.empty());
  EXPECT_EQ(comm_->rank(), 0);
  EXPECT_EQ(comm_->size(), 1);
}

TEST_F(NcclOneRank, CollectivesOnHostBuffersGiveTheSingleRankResults) {
  std::vector<float> data(1001);
  std::iota(data.begin(), data.end(), 1.0f);
  const auto original = data;
  ASSERT_TRUE(comm_->all_reduce_sum(data));
  EXPECT_EQ(data, original);
  std::vector<float> gathered(data.size());
  ASSERT_TRUE(comm_->all_gather(data, gathered));
  EXPECT_EQ(gathered, original);
  ASSERT_TRUE(comm_->broadcast(data, 0));
  EXPECT_EQ(data, original);
  std::vector<float> recv(600);
  const std::vector<std::int64_t> counts{600};
  ASSERT_TRUE(comm_->all_to_all_v(data, counts, recv, counts));
  EXPECT_TRUE(std::equal(recv.begin(), recv.end(), original.begin()));
  EXPECT_TRUE(comm_->barrier());
}

TEST_F(NcclOneRank, CollectivesOnDeviceBuffersWorkInPlace) {
  std::vector<float> host(4097);
  std::iota(host.begin(), host.end(), -5.0f);
  auto a = dev_->allocate(host.size() * sizeof(float));
  auto b = dev_->allocate(host.size() * sizeof(float));
  ASSERT_TRUE(a && b);
  ASSERT_TRUE(dev_->copy_to_device(a->get(), host.data(), host.size() * sizeof(float)));
  std::span<float> da{a->as<float>(), host.size()}, db{b->as<float>(), host.size()};
  ASSERT_TRUE(comm_->all_reduce_sum(da));
  const std::vector<std::int64_t> counts{static_cast<std::int64_t>(host.size())};
  ASSERT_TRUE(comm_->all_to_all_v(da, counts, db, counts));
  std::vector<float> back(host.size());
  ASSERT_TRUE(dev_->copy_to_host(back.data(), db.data(), host.size() * sizeof(float)));
  EXPECT_EQ(back, host);
}

TEST_F(NcclOneRank, AbortPoisonsTheCommunicatorAndLaterCallsAreCancelled) {
  comm_->abort();
  EXPECT_TRUE(comm_->poisoned());
  std::vector<float> data(8, 1.0f);
  auto r = comm_->all_reduce_sum(data);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().kind(), errc::cancelled);
  comm_->abort();  // idempotent
}

TEST_F(NcclOneRank, RejectsInconsistentCountsWithoutPoisoning) {
  std::vector<float> data(8), recv(8);
  const std::vector<std::int64_t> too_many{9}, ok{8};
  auto r = comm_->all_to_all_v(data, too_many, recv, ok);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().kind(), errc::invalid_argument);
  EXPECT_FALSE(comm_->poisoned());
}

class NcclRanks : public ::testing::Test {
protected:
  void SetUp() override {
    const auto nccl = query_nccl();
    if (!nccl.available) GTEST_SKIP() << "NCCL unavailable: " << nccl.reason;
    std::string why;
    for (int i = 0; i < 4; ++i) {
      auto dev = gpu::open_device(i);
      if (!dev) {
        why = dev.error().to_string();
        break;
      }
      devs_.push_back(std::move(*dev));
    }
    if (devs_.size() < 2)
      GTEST_SKIP() << "a group of ranks needs two GPUs; " << devs_.size() << " usable (" << why << ")";
  }

  int size() const { return static_cast<int>(devs_.size()); }

  /// Runs body(rank, communicator, device) on one thread per GPU, all in group `key`.
  void run(const std::string& key, const std::function<void(int, communicator&, gpu::device&)>& body,
           nccl_options options = {}) {
    std::vector<std::thread> threads;
    for (int r = 0; r < size(); ++r)
      threads.emplace_back([&, r] {
        auto comm = make_nccl_communicator(store_, key, r, size(), r, options);
        ASSERT_TRUE(comm) << "rank " << r << ": " << comm.error().to_string();
        body(r, **comm, *devs_[static_cast<std::size_t>(r)]);
      });
    for (auto& t : threads) t.join();
  }

  memory_store store_;
  std::vector<std::unique_ptr<gpu::device>> devs_;
};

// Device memory holding a copy of `host`, and the way back.
gpu::buffer on_device(gpu::device& dev, const std::vector<float>& host) {
  auto b = dev.allocate(std::max<std::size_t>(1, host.size()) * sizeof(float));
  if (!b) {
    ADD_FAILURE() << b.error().to_string();
    return {};
  }
  if (!host.empty()) {
    EXPECT_TRUE(dev.copy_to_device(b->get(), host.data(), host.size() * sizeof(float)));
  }
  return std::move(*b);
}
std::vector<float> back(gpu::device& dev, const gpu::buffer& b, std::size_t count) {
  std::vector<float> out(count);
  if (count) {
    EXPECT_TRUE(dev.copy_to_host(out.data(), b.get(), count * sizeof(float)));
  }
  return out;
}

TEST_F(NcclRanks, EveryCollectiveMatchesItsDefinitionOnDeviceAndHostBuffers) {
  const int n = size();
  run("nccl-ranks/e0/all", [n](int r, communicator& c, gpu::device& dev) {
    EXPECT_EQ(c.rank(), r);
    EXPECT_EQ(c.size(), n);
    // all-reduce, device buffer, in place
    std::vector<float> x(1001);
    for (std::size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(r * 1000 + static_cast<int>(i));
    auto dx = on_device(dev, x);
    ASSERT_TRUE(c.all_reduce_sum({dx.as<float>(), x.size()}));
    const auto sum = back(dev, dx, x.size());
    for (std::size_t i = 0; i < x.size(); ++i)
      ASSERT_EQ(sum[i], static_cast<float>(n * static_cast<int>(i) + 1000 * n * (n - 1) / 2)) << "rank " << r << " i " << i;
    // all-gather, host buffers
    std::vector<float> part(37), all(37 * static_cast<std::size_t>(n));
    for (std::size_t i = 0; i < part.size(); ++i) part[i] = static_cast<float>(r * 100 + static_cast<int>(i));
    ASSERT_TRUE(c.all_gather(part, all));
    for (int p = 0; p < n; ++p)
      for (int i = 0; i < 37; ++i) ASSERT_EQ(all[static_cast<std::size_t>(p * 37 + i)], static_cast<float>(p * 100 + i));
    // reduce-scatter, device buffers: rank r gets chunk r of the sum
    std::vector<float> whole(29 * static_cast<std::size_t>(n)), chunk(29);
    for (std::size_t i = 0; i < whole.size(); ++i) whole[i] = static_cast<float>(r * 1000 + static_cast<int>(i));
    auto dwhole = on_device(dev, whole);
    auto dchunk = on_device(dev, chunk);
    ASSERT_TRUE(c.reduce_scatter_sum({dwhole.as<float>(), whole.size()}, {dchunk.as<float>(), chunk.size()}));
    const auto mine = back(dev, dchunk, chunk.size());
    for (int i = 0; i < 29; ++i)
      ASSERT_EQ(mine[static_cast<std::size_t>(i)], static_cast<float>(n * (r * 29 + i) + 1000 * n * (n - 1) / 2))
          << "rank " << r << " i " << i;
    // broadcast from the last rank, device buffer
    std::vector<float> b(513, static_cast<float>(r));
    auto db = on_device(dev, b);
    ASSERT_TRUE(c.broadcast({db.as<float>(), b.size()}, n - 1));
    for (float v : back(dev, db, b.size())) ASSERT_EQ(v, static_cast<float>(n - 1));
    // all-to-all-v with uneven and zero counts, device buffers: rank r sends (r + p) % 3 * 50
    // floats to p, each naming sender, receiver and index
    std::vector<std::int64_t> sc(static_cast<std::size_t>(n)), rc(static_cast<std::size_t>(n));
    std::vector<float> send;
    for (int p = 0; p < n; ++p) {
      sc[static_cast<std::size_t>(p)] = (r + p) % 3 * 50;
      rc[static_cast<std::size_t>(p)] = (p + r) % 3 * 50;
      for (int i = 0; i < sc[static_cast<std::size_t>(p)]; ++i) send.push_back(static_cast<float>(r * 10000 + p * 100 + i % 100));
    }
    const auto recv_total = static_cast<std::size_t>(std::accumulate(rc.begin(), rc.end(), std::int64_t{0}));
    auto ds = on_device(dev, send);
    auto dr = on_device(dev, std::vector<float>(recv_total, -1.0f));
    ASSERT_TRUE(c.all_to_all_v({ds.as<float>(), send.size()}, sc, {dr.as<float>(), recv_total}, rc));
    const auto got = back(dev, dr, recv_total);
    std::size_t k = 0;
    for (int p = 0; p < n; ++p)
      for (int i = 0; i < rc[static_cast<std::size_t>(p)]; ++i, ++k)
        ASSERT_EQ(got[k], static_cast<float>(p * 10000 + r * 100 + i % 100)) << "rank " << r << " from " << p;
    EXPECT_TRUE(c.barrier());
  });
}

TEST_F(NcclRanks, AbortFromAnotherThreadUnblocksARankWhosePeersNeverJoin) {
  std::atomic<bool> done{false};
  run("nccl-ranks/e0/abort", [&](int r, communicator& c, gpu::device&) {
    if (r != 0) {
      while (!done) std::this_thread::sleep_for(std::chrono::milliseconds{10});
      c.abort();
      return;
    }
    std::thread aborter{[&c] {
      std::this_thread::sleep_for(std::chrono::milliseconds{300});
      c.abort();
    }};
    std::vector<float> v(64, 1.0f);
    const auto start = std::chrono::steady_clock::now();
    auto res = c.all_reduce_sum(v);  // the others never call it; the 60 s timeout is far away
    const auto waited = std::chrono::steady_clock::now() - start;
    aborter.join();
    done = true;
    ASSERT_FALSE(res);
    EXPECT_EQ(res.error().kind(), errc::cancelled) << res.error().to_string();
    EXPECT_LT(waited, std::chrono::seconds{10});
    EXPECT_TRUE(c.poisoned());
  }, nccl_options{.timeout = std::chrono::seconds{60}});
}

TEST_F(NcclRanks, APeerThatIsGoneFailsTheCollectiveWithinTheTimeout) {
  run("nccl-ranks/e0/gone", [&](int r, communicator& c, gpu::device&) {
    if (r != 0) {
      c.abort();  // this rank's device is lost
      return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds{100});
    std::vector<float> v(64, 1.0f);
    const auto start = std::chrono::steady_clock::now();
    auto res = c.all_reduce_sum(v);
    ASSERT_FALSE(res);
    EXPECT_TRUE(res.error().kind() == errc::disconnected || res.error().kind() == errc::timeout)
        << res.error().to_string();
    EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds{10});
    EXPECT_TRUE(c.poisoned());
  }, nccl_options{.timeout = std::chrono::seconds{2}});
}

// The cache's bookkeeping (groups of one are local, no GPU needed) is a unit test:
// tests/unit/kernels/collectives_test.cpp.

TEST(NcclFactory, MakesAGroupOfOneOrSaysWhyItCannot) {
  memory_store store;
  auto r = make_nccl_communicator(store, "g", 0, 1, 0, nccl_options{});
  if (r) {  // available: the factory made a working group of one
    EXPECT_EQ((*r)->size(), 1);
    EXPECT_TRUE((*r)->barrier());
    return;
  }
  EXPECT_TRUE(r.error().kind() == errc::unimplemented || r.error().kind() == errc::not_found)
      << r.error().to_string();
  EXPECT_FALSE(r.error().message().empty());
}

}  // namespace
}  // namespace flexsp::kernels
