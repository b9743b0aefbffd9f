// The NCCL backend on a group of one (the sanity check a single GPU allows): every collective
// on device and host buffers, against the result the local communicator defines, and abort.
#include <numeric>
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
