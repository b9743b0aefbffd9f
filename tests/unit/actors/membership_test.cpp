#include <gtest/gtest.h>

#include "flexsp/actors/head.hpp"
#include "flexsp/actors/membership.hpp"

namespace {

using namespace flexsp;
using namespace flexsp::actors;
using namespace std::chrono_literals;
using time_point = membership_table::time_point;

TEST(Membership, EveryJoinAndLossRaisesTheEpochByOne) {
  membership_table t;
  const time_point t0{};
  auto a = t.join("127.0.0.1:1", {{device_kind::cpu, 0}}, 10, t0);
  auto b = t.join("127.0.0.1:2", {{device_kind::cpu, 0}}, 11, t0);
  EXPECT_EQ(a.epoch, 1u);
  EXPECT_EQ(b.epoch, 2u);
  EXPECT_NE(a.node.id, b.node.id);
  auto lost = t.lose(a.node.id, "test");
  ASSERT_TRUE(lost);
  EXPECT_EQ(lost->epoch, 3u);
  EXPECT_EQ(lost->kind, membership_event::kind_t::lost);
  EXPECT_EQ(t.epoch(), 3u);
  EXPECT_EQ(t.alive_count(), 1u);
}

TEST(Membership, ANodeIsLostExactlyOnce) {
  membership_table t;
  auto a = t.join("x:1", {}, 1, time_point{});
  EXPECT_TRUE(t.lose(a.node.id, "closed"));
  EXPECT_FALSE(t.lose(a.node.id, "closed again"));
  EXPECT_EQ(t.epoch(), 2u);
  EXPECT_FALSE(t.heartbeat(a.node.id, time_point{} + 2h)) << "a lost node cannot be revived by a heartbeat";
  EXPECT_FALSE(t.lose(999, "unknown"));
}

TEST(Membership, AReturningProcessJoinsUnderANewId) {
  membership_table t;
  auto a = t.join("x:1", {}, 7, time_point{});
  ASSERT_TRUE(t.lose(a.node.id, "timeout"));
  auto again = t.join("x:1", {}, 7, time_point{});
  EXPECT_NE(again.node.id, a.node.id);
  EXPECT_EQ(again.epoch, 3u);
  EXPECT_EQ(t.find(a.node.id)->state, node_state::dead);
}

TEST(Membership, ARestoredTableContinuesItsEpochsAndIds) {
  membership_table before;
  auto a = before.join("x:1", {{device_kind::cpu, 0}}, 7, time_point{});
  auto b = before.join("x:2", {{device_kind::cpu, 0}}, 8, time_point{});
  ASSERT_TRUE(before.lose(a.node.id, "gone"));

  // A restarted head gets the alive nodes back, at the same ids and epoch.
  membership_table after;
  ASSERT_TRUE(after.restore({b.node}, before.epoch(), before.next_id(), time_point{} + 1h));
  EXPECT_EQ(after.epoch(), 3u);
  EXPECT_TRUE(after.heartbeat(b.node.id, time_point{} + 1h + 1s)) << "a restored node heartbeats as before";
  auto c = after.join("x:3", {}, 9, time_point{} + 1h);
  EXPECT_EQ(c.epoch, 4u);
  EXPECT_GT(c.node.id, b.node.id) << "ids are never reused";
  EXPECT_FALSE(after.restore({}, 1, 1, time_point{})) << "only into an empty table";

  membership_table bad;
  EXPECT_FALSE(bad.restore({b.node}, before.epoch(), b.node.id, time_point{})) << "an id at or past next_id";
}

TEST(Membership, ForgetsTheOldestDeadNodesBeyondTheBound) {
  membership_table t;
  t.max_dead = 2;
  std::vector<std::uint64_t> ids;
  for (int i = 0; i < 4; ++i) ids.push_back(t.join("x:" + std::to_string(i), {}, 1, time_point{}).node.id);
  for (auto id : ids) ASSERT_TRUE(t.lose(id, "gone"));
  EXPECT_EQ(t.nodes().size(), 2u);
  EXPECT_EQ(t.find(ids[0]), nullptr);
  EXPECT_NE(t.find(ids[3]), nullptr);
}

TEST(DeviceSpec, ParsesCpuCountsCudaListsAndAll) {
  auto cpu = parse_devices("cpu:3", 0);
  ASSERT_TRUE(cpu);
  ASSERT_EQ(cpu->size(), 3u);
  EXPECT_EQ((*cpu)[2].to_string(), "cpu:2");
  auto list = parse_devices("cuda:0,2", 4);
  ASSERT_TRUE(list);
  EXPECT_EQ((*list)[1].to_string(), "cuda:2");
  auto all = parse_devices("cuda:all", 2);
  ASSERT_TRUE(all);
  EXPECT_EQ(all->size(), 2u);
  auto mixed = parse_devices("cpu:1+cuda:1", 2);
  ASSERT_TRUE(mixed);
  EXPECT_EQ(mixed->size(), 2u);
}

TEST(DeviceSpec, AutoIsEveryGpuOrOneCpu) {
  auto gpus = parse_devices("auto", 3);
  ASSERT_TRUE(gpus);
  ASSERT_EQ(gpus->size(), 3u);
  EXPECT_EQ((*gpus)[2].to_string(), "cuda:2");
  auto cpu = parse_devices("auto", 0);
  ASSERT_TRUE(cpu);
  ASSERT_EQ(cpu->size(), 1u);
  EXPECT_EQ((*cpu)[0].kind, device_kind::cpu);
}

TEST(DeviceSpec, TheDescriptionIsNotPartOfTheIdentity) {
  EXPECT_EQ((device_id{device_kind::cuda, 1, "NVIDIA H200"}), (device_id{device_kind::cuda, 1}));
  EXPECT_NE((device_id{device_kind::cuda, 1}), (device_id{device_kind::cpu, 1}));
}

TEST(DeviceSpec, NamesWhatIsWrong) {
  for (const char* bad : {"", "gpu:1", "cpu:0", "cpu:x", "cuda:all", "cuda:5", "cuda:", "cpu:2+cpu:1", "cpu"}) {
    auto r = parse_devices(bad, bad == std::string_view{"cuda:5"} ? 2 : 0);
    ASSERT_FALSE(r) << bad;
    EXPECT_EQ(r.error().kind(), errc::invalid_argument);
  }
  EXPECT_NE(parse_devices("gpu:1", 0).error().message().find("gpu"), std::string::npos);
}

TEST(FailureDetectorConfig, RequiresTheTimeoutToExceedTheInterval) {
  failure_detector_config c{500ms, 400ms};
  EXPECT_FALSE(c.validate());
  c.failure_timeout = 3000ms;
  EXPECT_TRUE(c.validate());
}

}  // namespace
