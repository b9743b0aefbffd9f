#include "flexsp/actors/step_protocol.hpp"

#include <gtest/gtest.h>

namespace flexsp::actors {
namespace {

training_batch make_batch(std::vector<std::int64_t> lengths) {
  training_batch b;
  b.lengths = lengths;
  for (std::size_t s = 0; s < lengths.size(); ++s) {
    std::vector<std::int32_t> ids;
    for (std::int64_t i = 0; i <= lengths[s]; ++i) ids.push_back(static_cast<std::int32_t>(100 * s + i));
    b.tokens.push_back(ids);
  }
  return b;
}

scheduler::sp_group group(std::vector<int> devices, std::vector<int> seqs, double ms = 1) {
  scheduler::sp_group g;
  g.degree = static_cast<int>(devices.size());
  g.devices = std::move(devices);
  g.sequences = std::move(seqs);
  g.predicted_ms = ms;
  return g;
}

TEST(SlicePlan, GivesEveryDeviceEveryMicroBatchWithItsGroupMappedToJobDevices) {
  // World of job devices 3, 5, 8, 9 (after a loss and a join); plan positions 0..3.
  const std::vector<std::uint32_t> world{3, 5, 8, 9};
  auto b = make_batch({4, 2, 7});
  scheduler::plan p;
  p.micro_batches.push_back({{group({0, 2}, {2}, 5.0), group({1}, {0, 1})}, 5.0});
  p.micro_batches.push_back({{group({3}, {})}, 0.0});
  step_header h{"j", 12, 4, 7, -1, false};
  auto parts = slice_plan(p, world, b, h);
  ASSERT_TRUE(parts) << parts.error().to_string();
  ASSERT_EQ(parts->size(), 4u);
  for (const auto& [d, sp] : *parts) {
    EXPECT_EQ(sp.step, 12u);
    EXPECT_EQ(sp.attempt, 7u);
    EXPECT_EQ(sp.epoch, 4u);
    EXPECT_EQ(sp.world, world);
    EXPECT_EQ(sp.global_tokens, 13u);
    ASSERT_EQ(sp.micro_batches.size(), 2u);
    EXPECT_TRUE(sp.micro_batches[1].group.empty()) << "empty groups do not run";
  }
  const auto& a = parts->at(3).micro_batches[0];
  EXPECT_EQ(a.group, (std::vector<std::uint32_t>{3, 8}));
  EXPECT_EQ(a.lengths, (std::vector<std::uint32_t>{7}));
  ASSERT_EQ(a.tokens.size(), 8u);
  EXPECT_EQ(a.tokens.front(), 200);
  EXPECT_EQ(parts->at(8).micro_batches[0].group, a.group);
  const auto& c = parts->at(5).micro_batches[0];
  EXPECT_EQ(c.group, (std::vector<std::uint32_t>{5}));
  EXPECT_EQ(c.lengths, (std::vector<std::uint32_t>{4, 2}));
  EXPECT_EQ(c.tokens.size(), 5u + 3u);
  EXPECT_TRUE(parts->at(9).micro_batches[0].group.empty());
}

TEST(SlicePlan, RejectsDevicesAndSequencesOutsideTheStep) {
  auto b = make_batch({4});
  scheduler::plan p;
  p.micro_batches.push_back({{group({0, 4}, {0})}, 1.0});
  EXPECT_FALSE(slice_plan(p, {0, 1}, b, {}));
  scheduler::plan q;
  q.micro_batches.push_back({{group({0}, {3})}, 1.0});
  EXPECT_FALSE(slice_plan(q, {0, 1}, b, {}));
  scheduler::plan r;
  r.micro_batches.push_back({{group({0}, {0}), group({0, 1}, {0})}, 1.0});
  EXPECT_FALSE(slice_plan(r, {0, 1}, b, {})) << "a device in two groups of one micro-batch";
}

grad_ready ready(std::uint32_t device, std::uint64_t step, std::uint64_t attempt, std::uint64_t checksum) {
  grad_ready g;
  g.step = step;
  g.attempt = attempt;
  g.device = device;
  g.checksum = checksum;
  return g;
}

TEST(CommitTracker, CommitsOnlyWhenEveryMemberIsReadyWithTheSameChecksum) {
  commit_tracker t;
  t.start(5, 2, {0, 1, 2});
  using o = commit_tracker::outcome;
  EXPECT_EQ(t.on_ready(ready(0, 5, 2, 42)), o::pending);
  EXPECT_EQ(t.on_ready(ready(0, 5, 2, 42)), o::ignored) << "duplicates do not count twice";
  EXPECT_EQ(t.on_ready(ready(1, 5, 2, 42)), o::pending);
  EXPECT_EQ(t.on_ready(ready(2, 5, 2, 42)), o::commit);
}

TEST(CommitTracker, IgnoresReportsOfAbortedAttemptsOtherStepsAndStrangers) {
  commit_tracker t;
  t.start(5, 3, {0, 1});
  using o = commit_tracker::outcome;
  EXPECT_EQ(t.on_ready(ready(0, 5, 2, 1)), o::ignored);
  EXPECT_EQ(t.on_ready(ready(0, 4, 3, 1)), o::ignored);
  EXPECT_EQ(t.on_ready(ready(7, 5, 3, 1)), o::ignored);
  EXPECT_TRUE(t.concerns(step_failed{"", 5, 3, 1, "x"}));
  EXPECT_FALSE(t.concerns(step_failed{"", 5, 2, 1, "x"}));
  EXPECT_EQ(t.on_ready(ready(0, 5, 3, 1)), o::pending);
  EXPECT_EQ(t.on_ready(ready(1, 5, 3, 1)), o::commit);
  t.reset();
  EXPECT_EQ(t.on_ready(ready(1, 5, 3, 1)), o::ignored) << "nothing commits twice";
}

TEST(CommitTracker, ReportsAChecksumMismatchNamingTheDevices) {
  commit_tracker t;
  t.start(1, 1, {0, 1});
  EXPECT_EQ(t.on_ready(ready(0, 1, 1, 0xaa)), commit_tracker::outcome::pending);
  EXPECT_EQ(t.on_ready(ready(1, 1, 1, 0xbb)), commit_tracker::outcome::mismatch);
  EXPECT_NE(t.mismatch_detail().find("device 1"), std::string::npos);
}

}  // namespace
}  // namespace flexsp::actors
