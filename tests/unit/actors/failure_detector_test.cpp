// The head's failure detector, driven with explicit time: no sockets, no sleeps.
#include <gtest/gtest.h>

#include <map>

#include "flexsp/actors/failure_detector.hpp"

namespace {

using namespace flexsp::actors;
using namespace std::chrono_literals;
using time_point = failure_detector::time_point;
using std::chrono::milliseconds;

failure_detector_settings settings(milliseconds interval, milliseconds timeout) {
  failure_detector_settings s;
  s.interval = interval;
  s.timeout = timeout;
  return s;
}

/// Ticks the detector every tick period from `from` to `to`; returns when (and why) `node` was
/// first reported, or nothing.
struct run_result {
  std::optional<milliseconds> at;
  std::string reason;
};
run_result tick_until(failure_detector& d, time_point start, time_point from, time_point to, std::uint64_t node) {
  for (auto t = from; t <= to; t += d.settings().tick_period)
    for (auto& s : d.tick(t))
      if (s.node == node) return {std::chrono::duration_cast<milliseconds>(t - start), s.reason};
  return {};
}

TEST(FailureDetector, ASilentNodeIsLostAtTheTimeoutAtTheLatest) {
  failure_detector d{settings(100ms, 500ms)};
  const time_point t0{};
  d.add(1, t0);
  // Jittery heartbeats (60-140 ms apart) for 5 s: never suspected.
  auto t = t0;
  auto next_tick = t0;
  for (int i = 0; i < 50; ++i) {
    t += milliseconds{i % 2 ? 140 : 60};
    for (; next_tick < t; next_tick += d.settings().tick_period) ASSERT_TRUE(d.tick(next_tick).empty()) << "beat " << i;
    d.heartbeat(1, t);
  }
  const auto r = tick_until(d, t, next_tick, t + 2s, 1);
  ASSERT_TRUE(r.at) << "a silent node must be lost";
  EXPECT_LE(*r.at, 500ms + d.settings().tick_period) << "the timeout bounds detection";
  EXPECT_NE(r.reason.find("no heartbeat for"), std::string::npos) << r.reason;
}

TEST(FailureDetector, RegularHeartbeatsMakeAHungNodeSuspectBeforeTheTimeout) {
  failure_detector d{settings(500ms, 3000ms)};
  const time_point t0{};
  d.add(1, t0);
  auto t = t0;
  for (int i = 0; i < 20; ++i) {
    t += 500ms;
    d.heartbeat(1, t);
  }
  const auto r = tick_until(d, t, t, t + 5s, 1);
  ASSERT_TRUE(r.at);
  EXPECT_LT(*r.at, 3000ms) << r.reason;
  EXPECT_GT(*r.at, 2000ms) << "the acceptable pause (half the timeout) comes first";
  EXPECT_NE(r.reason.find("phi"), std::string::npos) << r.reason;
}

TEST(FailureDetector, JitteryHeartbeatsGetMoreSlackThanRegularOnes) {
  failure_detector d{settings(500ms, 3000ms)};
  const time_point t0{};
  d.add(1, t0);  // regular
  d.add(2, t0);  // jittery: the same mean gap, 100 or 900 ms
  auto regular = t0, jittery = t0;
  for (int i = 0; i < 40; ++i) {
    regular += 500ms;
    d.heartbeat(1, regular);
    jittery += milliseconds{i % 2 ? 900 : 100};
    d.heartbeat(2, jittery);
  }
  ASSERT_EQ(regular, jittery);
  const auto later = regular + 2600ms;
  EXPECT_GT(d.phi(1, later), d.phi(2, later) + 5.0);
  const auto r1 = tick_until(d, regular, regular, regular + 5s, 1);
  ASSERT_TRUE(r1.at);
  EXPECT_LT(*r1.at, 3000ms);
}

TEST(FailureDetector, TheDetectorsOwnStallIsNotCountedAsAnyonesSilence) {
  failure_detector d{settings(100ms, 500ms)};
  const time_point t0{};
  d.add(1, t0);
  auto t = t0;
  for (int i = 0; i < 10; ++i) {
    t += 100ms;
    d.heartbeat(1, t);
    EXPECT_TRUE(d.tick(t).empty());
  }
  // This process stops for 2 s (SIGSTOP, a VM pause, starvation): its next tick is late.
  t += 2000ms;
  EXPECT_TRUE(d.tick(t).empty()) << "silence caused by our own stall loses nobody";
  EXPECT_GE(d.stalled_total(), 1800ms);
  // The node's heartbeats resume: still a member.
  for (int i = 0; i < 5; ++i) {
    t += 100ms;
    d.heartbeat(1, t);
    EXPECT_TRUE(d.tick(t).empty());
  }
  // A node that really went silent is still found, within the timeout.
  const auto r = tick_until(d, t, t + d.settings().tick_period, t + 2s, 1);
  ASSERT_TRUE(r.at);
  EXPECT_LE(*r.at, 500ms + d.settings().tick_period);
}

TEST(FailureDetector, ANodeSilentOnlyBecauseTheDetectorStalledSurvivesWithoutAnyHeartbeat) {
  failure_detector d{settings(100ms, 500ms)};
  const time_point t0{};
  d.add(1, t0);
  EXPECT_TRUE(d.tick(t0 + 25ms).empty());
  EXPECT_TRUE(d.tick(t0 + 3025ms).empty());
  // Its heartbeats get a fresh window after the stall (the acceptable pause, below the timeout).
  EXPECT_TRUE(d.tick(t0 + 3050ms).empty());
}

TEST(FailureDetector, ANodeInTheDetectorsOwnProcessIsNeverLostToSilence) {
  failure_detector d{settings(100ms, 500ms)};
  const time_point t0{};
  d.add(1, t0, /*exempt=*/true);
  d.add(2, t0);
  for (auto t = t0; t < t0 + 10s; t += 25ms)
    for (auto& s : d.tick(t)) EXPECT_EQ(s.node, 2u);
  EXPECT_EQ(d.phi(1, t0 + 1h), 0.0);
}

TEST(FailureDetector, EachNodeIsReportedOnceAndUnknownHeartbeatsAreIgnored) {
  failure_detector d{settings(100ms, 500ms)};
  const time_point t0{};
  d.add(1, t0);
  d.heartbeat(7, t0 + 50ms);  // never added
  int reports = 0;
  for (auto t = t0; t < t0 + 5s; t += 25ms) reports += static_cast<int>(d.tick(t).size());
  EXPECT_EQ(reports, 1);
  d.remove(1);
  EXPECT_EQ(d.phi(1, t0 + 1h), 0.0);
}

}  // namespace

namespace {
TEST(FailureDetector, ANodeRestoredAfterAHeadRestartHasItsGraceThenIsWatchedAsBefore) {
  failure_detector d{settings(100ms, 500ms)};
  const time_point t0{};
  d.add_returning(1, t0, 3000ms);
  d.add_returning(2, t0, 3000ms);
  // Node 1 reconnects after 2 s (its reconnect backoff), node 2 never does.
  EXPECT_FALSE(tick_until(d, t0, t0, t0 + 2000ms, 1).at) << "not suspected within the grace";
  d.heartbeat(1, t0 + 2000ms);
  // Then silence from both: node 2 is lost at the end of its grace, node 1 within the normal
  // timeout of its heartbeat.
  std::map<std::uint64_t, std::pair<milliseconds, std::string>> lost;
  for (auto t = t0 + 2000ms; t <= t0 + 4000ms; t += d.settings().tick_period)
    for (auto& s : d.tick(t)) lost[s.node] = {std::chrono::duration_cast<milliseconds>(t - t0), s.reason};
  ASSERT_EQ(lost.count(1), 1u);
  ASSERT_EQ(lost.count(2), 1u);
  EXPECT_EQ(lost[2].first, 3000ms);
  EXPECT_NE(lost[2].second.find("not heard from within 3000 ms of the head's restart"), std::string::npos)
      << lost[2].second;
  EXPECT_GT(lost[1].first, 2000ms);
  EXPECT_LE(lost[1].first, 2500ms);
}
}  // namespace
