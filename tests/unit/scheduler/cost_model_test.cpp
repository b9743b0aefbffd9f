#include <cmath>

#include <gtest/gtest.h>

#include "flexsp/scheduler/cost_model.hpp"
#include "flexsp/scheduler/profile.hpp"

namespace flexsp::scheduler {
namespace {

cost_model gpt7b(int n = 64) { return cost_model{*builtin_profile("gpt-7b"), n}; }

TEST(CostModel, ReproducesTheHandComputedTimeOfA32kSequenceAtDegree8) {
  const auto m = gpt7b();
  // (5.128e-6 * 32768^2 + 0.1839576 * 32768) / 8 = 1441.8 ms; V = 65536 MB over 8 * 96.5 GB/s = 84.9 ms
  EXPECT_NEAR(m.compute_ms(8, 32768), 1441.8, 0.05);
  EXPECT_NEAR(m.comm_ms(8, 32768), 84.9, 0.05);
  EXPECT_NEAR(m.comm_volume_mb(32768), 65536.0, 1e-9);
  const std::int64_t one[] = {32768};
  EXPECT_NEAR(m.group_time_ms(8, one), 629.3563 + 1441.8 + 84.9, 0.1);
}

TEST(CostModel, DegreeOneHasNoCommunicationAndAnEmptyGroupCostsNothing) {
  const auto m = gpt7b();
  EXPECT_EQ(m.comm_ms(1, 100000), 0.0);
  EXPECT_EQ(m.group_time_ms(4, {}), 0.0);
}

TEST(CostModel, GroupTimeIsBeta1PlusTheSumOfSequenceCosts) {
  const auto m = gpt7b();
  const std::int64_t lens[] = {1000, 2000, 30000};
  double expect = 629.3563;
  for (auto s : lens) expect += m.seq_cost_ms(16, s);
  EXPECT_NEAR(m.group_time_ms(16, lens), expect, 1e-9);
  EXPECT_NEAR(m.seq_cost_ms(16, 2000), (5.128e-6 * 2000.0 * 2000 + 0.1839576 * 2000) / 16 + 4000.0 / (16 * 10.33), 1e-9);
}

TEST(CostModel, MemoryFollowsZero3ModelStatesOverAllDevices) {
  const auto m = gpt7b();
  EXPECT_NEAR(m.model_states_mb(), 7.8498687744 * 16 * 1024 / 64, 1e-9);
  EXPECT_NEAR(m.group_memory_mb(8, 32768), 4.480441895 * 32768 / 8 + m.model_states_mb(), 1e-9);
}

TEST(CostModel, TokenCapacityIsTheLargestCountWithinTheLimit) {
  const auto m = gpt7b();
  const double limit = 30 * 1024.0;
  for (int d : {1, 2, 4, 8, 16, 32, 64}) {
    const auto cap = m.token_capacity(d);
    EXPECT_LE(m.group_memory_mb(d, cap), limit) << d;
    EXPECT_GT(m.group_memory_mb(d, cap + 1), limit) << d;
  }
}

TEST(CostModel, MinimumDegreeIsTheSmallestThatHoldsTheSequence) {
  const auto m = gpt7b();
  const auto degrees = allowed_degrees(64, false);
  EXPECT_EQ(m.min_degree(100, degrees), 1);
  EXPECT_EQ(m.min_degree(m.token_capacity(1) + 1, degrees), 2);
  EXPECT_EQ(m.min_degree(384000, degrees), 64);
  EXPECT_EQ(m.min_degree(1'000'000, degrees), 0);
}

TEST(CostModel, BandwidthComesFromTheTableAndInterpolatesBetweenDegrees) {
  const auto m = gpt7b();
  EXPECT_DOUBLE_EQ(m.bandwidth_gbps(8), 96.5);
  EXPECT_DOUBLE_EQ(m.bandwidth_gbps(64), 4.87);
  const double bw3 = m.bandwidth_gbps(3);
  EXPECT_LT(bw3, 119.54);
  EXPECT_GT(bw3, 104.07);
  EXPECT_NEAR(m.bandwidth_gbps(12), 96.5 + (std::log2(12.0) - 3) * (10.33 - 96.5), 1e-9);
}

TEST(CostModel, AllowedDegreesArePowersOfTwoUnlessAnyDegreeIsAsked) {
  EXPECT_EQ(allowed_degrees(63, false), (std::vector<int>{1, 2, 4, 8, 16, 32}));
  EXPECT_EQ(allowed_degrees(5, true), (std::vector<int>{1, 2, 3, 4, 5}));
}

TEST(Profile, BuiltinsCarryThePublishedConstants) {
  auto p13 = builtin_profile("gpt-13b");
  ASSERT_TRUE(p13);
  EXPECT_EQ(p13->hidden, 5120);
  EXPECT_EQ(p13->layers, 40);
  EXPECT_DOUBLE_EQ(p13->beta1, 1132.5632);
  auto p30 = builtin_profile("gpt-30b");
  ASSERT_TRUE(p30);
  EXPECT_DOUBLE_EQ(p30->alpha1, 15.4262e-6);
  EXPECT_DOUBLE_EQ(p30->bandwidth_gbps.at(16), 10.33);
}

TEST(Profile, UnknownNameListsTheBuiltins) {
  auto p = load_profile("gpt-1t");
  ASSERT_FALSE(p);
  EXPECT_NE(p.error().message().find("gpt-7b"), std::string::npos) << p.error().message();
}

TEST(Profile, JsonRoundTripsEveryField) {
  auto p = *builtin_profile("gpt-13b");
  p.mem_limit_gb = 28;
  p.devices_per_node = 4;
  auto back = profile_from_json(profile_to_json(p));
  ASSERT_TRUE(back) << back.error().message();
  EXPECT_EQ(back->name, "gpt-13b");
  EXPECT_DOUBLE_EQ(back->alpha2, p.alpha2);
  EXPECT_DOUBLE_EQ(back->mem_limit_gb, 28);
  EXPECT_EQ(back->devices_per_node, 4);
  EXPECT_EQ(back->bandwidth_gbps, p.bandwidth_gbps);
}

TEST(Profile, JsonErrorsNameTheMissingOrBadField) {
  auto missing = profile_from_json(R"({"alpha1": 1e-6, "alpha2": 0.1, "beta1": 1, "act_per_token_mb": 1,
                                       "hidden": 8, "layers": 2, "params_b": 1})");
  ASSERT_FALSE(missing);
  EXPECT_NE(missing.error().message().find("bandwidth_gbps"), std::string::npos) << missing.error().message();
  auto negative = profile_from_json(R"({"alpha1": -1, "alpha2": 0.1, "beta1": 1, "act_per_token_mb": 1,
                                        "hidden": 8, "layers": 2, "params_b": 1, "bandwidth_gbps": {"2": 10}})");
  ASSERT_FALSE(negative);
  EXPECT_NE(negative.error().message().find("alpha1"), std::string::npos) << negative.error().message();
  auto garbage = profile_from_json("{not json");
  ASSERT_FALSE(garbage);
  EXPECT_EQ(garbage.error().kind(), errc::invalid_argument);
}

}  // namespace
}  // namespace flexsp::scheduler
