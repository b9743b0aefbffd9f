// Timers: the timer service on a manual clock, and actor timers (send_after / send_every).

#include "flexsp/core/actor_system.hpp"
#include "flexsp/core/timer.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <latch>
#include <vector>

namespace flexsp::core {
namespace {

using namespace std::chrono_literals;

TEST(TimerService, FiresInDeadlineOrderWhenTheManualClockAdvances) {
  manual_clock clk;
  timer_service timers{clk};
  std::vector<int> fired;
  const auto t0 = clk.now();
  timers.schedule(t0 + 30ms, 0ms, [&fired] { return fired.push_back(3), false; });
  timers.schedule(t0 + 10ms, 0ms, [&fired] { return fired.push_back(1), false; });
  auto h = timers.schedule(t0 + 20ms, 0ms, [&fired] { return fired.push_back(2), false; });
  clk.advance(15ms);
  EXPECT_EQ(fired, (std::vector<int>{1}));
  EXPECT_TRUE(h.active());
  clk.advance(100ms);
  EXPECT_EQ(fired, (std::vector<int>{1, 2, 3}));
  EXPECT_FALSE(h.active());
}

TEST(TimerService, CallbacksSeeTheirDeadlineAsTheCurrentTime) {
  manual_clock clk;
  timer_service timers{clk};
  std::vector<duration> seen;
  const auto t0 = clk.now();
  timers.schedule(t0 + 10ms, 10ms, [&] { return seen.push_back(clk.now() - t0), true; });
  clk.advance(35ms);
  EXPECT_EQ(seen, (std::vector<duration>{10ms, 20ms, 30ms}));
  EXPECT_EQ(clk.now() - t0, 35ms);
}

TEST(TimerService, CancelledTimersNeverFire) {
  manual_clock clk;
  timer_service timers{clk};
  int fired = 0;
  auto once = timers.schedule_after(10ms, [&fired] { return ++fired, false; });
  auto periodic = timers.schedule(clk.now() + 5ms, 5ms, [&fired] { return ++fired, true; });
  once.cancel();
  clk.advance(12ms);
  EXPECT_EQ(fired, 2);  // periodic at 5 and 10
  periodic.cancel();
  periodic.cancel();
  EXPECT_FALSE(periodic.active());
  clk.advance(1s);
  EXPECT_EQ(fired, 2);
}

TEST(TimerService, FiresOnTheSteadyClockWithoutHelp) {
  steady_clock_source clk;
  timer_service timers{clk};
  std::latch fired{3};
  std::atomic<int> fires{0};
  // A latch must never count below zero (its wait() would then never return), so only the
  // first three firings count it down; the timer itself keeps firing until stop().
  timers.schedule(clk.now() + 1ms, 1ms, [&fired, &fires] {
    if (fires.fetch_add(1) < 3) fired.count_down();
    return true;
  });
  fired.wait();  // returns only if the timer thread fired three times
  timers.stop();
  EXPECT_EQ(timers.pending(), 0u);
}

TEST(TimerService, StopDropsPendingTimers) {
  manual_clock clk;
  timer_service timers{clk};
  int fired = 0;
  auto h = timers.schedule_after(1ms, [&fired] { return ++fired, false; });
  timers.stop();
  EXPECT_FALSE(h.active());
  clk.advance(1s);
  EXPECT_EQ(fired, 0);
  EXPECT_FALSE(timers.schedule_after(1ms, [] { return false; }).active());
}

struct tick {};
struct start_ticking {
  duration period;
};
struct stop_ticking {};
struct arm_timeout {
  duration after;
};
struct timed_out {};
struct get_state {};
struct ticks_and_timeouts {
  int ticks;
  int timeouts;
};

class ticker : public actor<ticker> {
public:
  void handle(const start_ticking& m) { periodic_ = send_every(m.period, tick{}); }
  void handle(stop_ticking) { periodic_.cancel(); }
  void handle(tick) { ++ticks_; }
  void handle(const arm_timeout& m) { timeout_ = send_after(m.after, timed_out{}); }
  void handle(timed_out) { ++timeouts_; }
  void handle(int) { timeout_.cancel(); }
  ticks_and_timeouts handle(get_state) { return {ticks_, timeouts_}; }

private:
  timer_handle periodic_;
  timer_handle timeout_;
  int ticks_ = 0;
  int timeouts_ = 0;
};

struct ticker_fixture : ::testing::Test {
  std::shared_ptr<manual_clock> clk = std::make_shared<manual_clock>();
  actor_system sys{actor_system_config{.mode = execution_mode::manual, .clock = clk}};
  actor_ref<ticker> t = sys.spawn<ticker>();

  ticks_and_timeouts state() {
    auto p = t.ask(get_state{}, 1s);
    sys.run();
    return p.get().value();
  }
};

using ActorTimer = ticker_fixture;

TEST_F(ActorTimer, SendEveryDeliversOneMessagePerPeriod) {
  t.tell(start_ticking{100ms});
  sys.run();
  clk->advance(99ms);
  sys.run();
  EXPECT_EQ(state().ticks, 0);
  clk->advance(1ms);
  sys.run();
  EXPECT_EQ(state().ticks, 1);
  clk->advance(450ms);
  sys.run();
  EXPECT_EQ(state().ticks, 5);
}

TEST_F(ActorTimer, CancellingAPeriodicTimerStopsIt) {
  t.tell(start_ticking{10ms});
  sys.run();
  clk->advance(30ms);
  t.tell(stop_ticking{});
  sys.run();
  clk->advance(1s);
  sys.run();
  EXPECT_EQ(state().ticks, 3);
}

TEST_F(ActorTimer, SendAfterFiresOnceAtItsDeadline) {
  t.tell(arm_timeout{50ms});
  sys.run();
  clk->advance(49ms);
  sys.run();
  EXPECT_EQ(state().timeouts, 0);
  clk->advance(1s);
  sys.run();
  EXPECT_EQ(state().timeouts, 1);
}

TEST_F(ActorTimer, ACancelledTimeoutNeverFires) {
  t.tell(arm_timeout{50ms});
  sys.run();
  clk->advance(20ms);
  t.tell(0);  // the awaited event arrived: cancel
  sys.run();
  clk->advance(1s);
  sys.run();
  EXPECT_EQ(state().timeouts, 0);
}

TEST_F(ActorTimer, TimersStopWhenTheActorTerminates) {
  t.tell(start_ticking{10ms});
  sys.run();
  t.stop();
  sys.run();
  EXPECT_EQ(sys.timers().pending(), 1u);
  clk->advance(1s);
  EXPECT_EQ(sys.stats().dead_letters, 0u);
  EXPECT_EQ(sys.timers().pending(), 0u);
}

}  // namespace
}  // namespace flexsp::core
