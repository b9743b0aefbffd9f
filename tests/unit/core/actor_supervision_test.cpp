// Monitoring, linking and restart policies, on the deterministic scheduler.

#include "flexsp/core/actor_system.hpp"

#include <gtest/gtest.h>

#include <stdexcept>
#include <string>
#include <vector>

namespace flexsp::core {
namespace {

using namespace std::chrono_literals;

struct crash {};
struct bump {};
struct get_count {};
struct please_quit {};

struct restart_log {
  int constructed = 0;
  int restarts = 0;
  std::vector<std::string> causes;
};

class fragile : public actor<fragile> {
public:
  explicit fragile(restart_log* log) : log_{log} { ++log_->constructed; }
  void handle(crash) { throw std::runtime_error{"fragile crashed"}; }
  void handle(bump) { ++count_; }
  int handle(get_count) { return count_; }
  void handle(please_quit) { quit(); }
  void on_restart(const error& cause) override {
    ++log_->restarts;
    log_->causes.push_back(cause.message());
  }

private:
  restart_log* log_;
  int count_ = 0;
};

struct watch {
  any_ref target;
};

class watcher : public actor<watcher> {
public:
  explicit watcher(std::vector<down_msg>* downs) : downs_{downs} {}
  void handle(const watch& w) { monitor(w.target); }
  void handle(const any_ref& unwatch) { demonitor(unwatch); }
  void on_down(const down_msg& m) override { downs_->push_back(m); }

private:
  std::vector<down_msg>* downs_;
};

actor_system_config manual_config(std::shared_ptr<manual_clock> clk = std::make_shared<manual_clock>()) {
  actor_system_config cfg;
  cfg.mode = execution_mode::manual;
  cfg.clock = std::move(clk);
  return cfg;
}

TEST(Monitor, FiresOncePerDeathWithTheReason) {
  actor_system sys{manual_config()};
  restart_log log;
  std::vector<down_msg> downs;
  auto w = sys.spawn<watcher>(&downs);
  auto normal = sys.spawn<fragile>(&log);
  auto failed = sys.spawn<fragile>(&log);
  auto killed = sys.spawn<fragile>(&log);
  for (const any_ref& t : {any_ref{normal}, any_ref{failed}, any_ref{killed}}) w.tell(watch{t});
  w.tell(watch{normal});  // a second registration: a second notice
  sys.run();
  normal.tell(please_quit{});
  failed.tell(crash{});
  killed.kill();
  sys.run();
  normal.stop();
  killed.kill();
  sys.run();
  ASSERT_EQ(downs.size(), 4u);
  auto count = [&downs](const any_ref& who, exit_reason why) {
    return std::count_if(downs.begin(), downs.end(),
                         [&](const down_msg& d) { return d.source == who && d.reason == why; });
  };
  EXPECT_EQ(count(normal, exit_reason::normal), 2);
  EXPECT_EQ(count(failed, exit_reason::exception), 1);
  EXPECT_EQ(count(killed, exit_reason::killed), 1);
  for (auto& d : downs) {
    if (d.reason == exit_reason::exception) {
      EXPECT_NE(d.what.find("fragile crashed"), std::string::npos);
    }
  }
}

TEST(Monitor, WatchingAnAlreadyDeadActorFiresAtOnce) {
  actor_system sys{manual_config()};
  restart_log log;
  std::vector<down_msg> downs;
  auto t = sys.spawn<fragile>(&log);
  t.kill();
  sys.run();
  auto w = sys.spawn<watcher>(&downs);
  w.tell(watch{t});
  sys.run();
  ASSERT_EQ(downs.size(), 1u);
  EXPECT_EQ(downs[0].reason, exit_reason::killed);

  int callbacks = 0;
  sys.monitor(t, [&callbacks](const down_msg& d) {
    EXPECT_EQ(d.reason, exit_reason::killed);
    ++callbacks;
  });
  EXPECT_EQ(callbacks, 1);
}

TEST(Monitor, DemonitorSuppressesTheNotice) {
  actor_system sys{manual_config()};
  restart_log log;
  std::vector<down_msg> downs;
  auto t = sys.spawn<fragile>(&log);
  auto w = sys.spawn<watcher>(&downs);
  w.tell(watch{t});
  sys.run();
  w.tell(any_ref{t});
  sys.run();
  t.stop();
  sys.run();
  EXPECT_TRUE(downs.empty());
}

TEST(Monitor, AnActorWithoutOnDownSendsTheNoticeToDeadLetters) {
  actor_system sys{manual_config()};
  restart_log log;
  std::vector<dead_letter> dead;
  sys.on_dead_letter([&dead](const dead_letter& d) { dead.push_back(d); });
  struct careless : actor<careless> {
    void handle(const watch& w) { monitor(w.target); }
  };
  auto t = sys.spawn<fragile>(&log);
  auto c = sys.spawn<careless>();
  c.tell(watch{t});
  sys.run();
  t.stop();
  sys.run();
  ASSERT_EQ(dead.size(), 1u);
  EXPECT_EQ(dead[0].reason, dead_letter_reason::unhandled);
  EXPECT_EQ(dead[0].target_id, c.id());
  EXPECT_NE(dead[0].message_type.find("down_msg"), std::string_view::npos);
}

struct link_to {
  any_ref other;
};

class partner : public actor<partner> {
public:
  explicit partner(bool trap = false, std::vector<exit_msg>* trapped = nullptr) : trap_{trap}, trapped_{trapped} {}
  void handle(const link_to& l) { link(l.other); }
  void handle(crash) { throw std::runtime_error{"partner crashed"}; }
  void on_exit(const exit_msg& m) override {
    if (trap_)
      trapped_->push_back(m);
    else
      actor_base::on_exit(m);
  }

private:
  bool trap_;
  std::vector<exit_msg>* trapped_;
};

TEST(Link, AnAbnormalExitTakesTheLinkedActorDown) {
  actor_system sys{manual_config()};
  auto a = sys.spawn<partner>();
  auto b = sys.spawn<partner>();
  std::vector<exit_reason> reasons;
  sys.monitor(b, [&reasons](const down_msg& d) { reasons.push_back(d.reason); });
  a.tell(link_to{b});
  sys.run();
  a.tell(crash{});
  sys.run();
  EXPECT_FALSE(a.alive());
  EXPECT_FALSE(b.alive());
  EXPECT_EQ(reasons, (std::vector<exit_reason>{exit_reason::linked}));
}

TEST(Link, ANormalExitLeavesTheLinkedActorRunning) {
  actor_system sys{manual_config()};
  auto a = sys.spawn<partner>();
  auto b = sys.spawn<partner>();
  a.tell(link_to{b});
  sys.run();
  a.stop();
  sys.run();
  EXPECT_FALSE(a.alive());
  EXPECT_TRUE(b.alive());
}

TEST(Link, AnActorThatTrapsExitsSurvivesItsPartner) {
  actor_system sys{manual_config()};
  std::vector<exit_msg> trapped;
  auto a = sys.spawn<partner>();
  auto b = sys.spawn<partner>(true, &trapped);
  b.tell(link_to{a});
  sys.run();
  a.kill();
  sys.run();
  EXPECT_TRUE(b.alive());
  ASSERT_EQ(trapped.size(), 1u);
  EXPECT_EQ(trapped[0].source, a);
  EXPECT_EQ(trapped[0].reason, exit_reason::killed);
}

TEST(Supervision, ARestartGivesAFreshInstanceAndCallsOnRestart) {
  actor_system sys{manual_config()};
  restart_log log;
  std::vector<down_msg> downs;
  auto f = sys.spawn<fragile>(spawn_options{.restart = {.max_restarts = 3, .window = 10s}}, &log);
  auto w = sys.spawn<watcher>(&downs);
  w.tell(watch{f});
  f.tell(bump{});
  f.tell(bump{});
  auto before = f.ask(get_count{}, 1s);
  f.tell(crash{});
  f.tell(bump{});  // handled by the fresh instance
  auto after = f.ask(get_count{}, 1s);
  sys.run();
  EXPECT_EQ(before.get().value(), 2);
  EXPECT_EQ(after.get().value(), 1);
  EXPECT_TRUE(f.alive());
  EXPECT_EQ(log.constructed, 2);
  EXPECT_EQ(log.restarts, 1);
  ASSERT_EQ(log.causes.size(), 1u);
  EXPECT_NE(log.causes[0].find("fragile crashed"), std::string::npos);
  EXPECT_TRUE(downs.empty());  // a restart is not a death
  EXPECT_EQ(sys.stats().restarts, 1u);
}

TEST(Supervision, ExhaustingTheRestartPolicyTerminatesWithException) {
  actor_system sys{manual_config()};
  restart_log log;
  std::vector<down_msg> downs;
  auto f = sys.spawn<fragile>(spawn_options{.restart = {.max_restarts = 2, .window = 10s}}, &log);
  auto w = sys.spawn<watcher>(&downs);
  w.tell(watch{f});
  sys.run();
  f.tell(crash{});
  f.tell(crash{});
  sys.run();
  EXPECT_TRUE(f.alive());
  f.tell(crash{});
  sys.run();
  EXPECT_FALSE(f.alive());
  EXPECT_EQ(log.restarts, 2);
  ASSERT_EQ(downs.size(), 1u);
  EXPECT_EQ(downs[0].reason, exit_reason::exception);
}

TEST(Supervision, FailuresOlderThanTheWindowAreForgotten) {
  auto clk = std::make_shared<manual_clock>();
  actor_system sys{manual_config(clk)};
  restart_log log;
  auto f = sys.spawn<fragile>(spawn_options{.restart = {.max_restarts = 1, .window = 1s}}, &log);
  for (int i = 0; i < 5; ++i) {
    f.tell(crash{});
    sys.run();
    EXPECT_TRUE(f.alive()) << "failure " << i;
    clk->advance(1s);
  }
  EXPECT_EQ(log.restarts, 5);
  f.tell(crash{});
  f.tell(crash{});  // two within one window: the second exhausts the policy
  sys.run();
  EXPECT_FALSE(f.alive());
}

TEST(Supervision, RepliesToARequestOfAReplacedInstanceAreDropped) {
  actor_system sys{manual_config()};
  restart_log log;
  auto server = sys.spawn<fragile>(&log);
  struct asker : actor<asker> {
    asker(actor_ref<fragile> s, int* replies) : server_{std::move(s)}, replies_{replies} {}
    void handle(bump) {
      request(server_, get_count{}, 1s, [this](expected<int>) { ++*replies_; });
    }
    void handle(crash) { throw std::runtime_error{"asker crashed"}; }
    actor_ref<fragile> server_;
    int* replies_;
  };
  int replies = 0;
  auto a = sys.spawn<asker>(spawn_options{.restart = {.max_restarts = 1}}, server, &replies);
  sys.run();
  a.tell(bump{});
  a.tell(crash{});
  EXPECT_TRUE(sys.step());  // a: bump -> request queued at server
  EXPECT_TRUE(sys.step());  // a: crash -> restart
  sys.run();                // server replies; the reply targets the old instance
  EXPECT_EQ(replies, 0);
  a.tell(bump{});
  sys.run();
  EXPECT_EQ(replies, 1);
}

class fails_to_start : public actor<fails_to_start> {
public:
  explicit fails_to_start(int* starts) : starts_{starts} {}
  void on_start() override {
    if (++*starts_ <= 2) throw std::runtime_error{"cannot start yet"};
  }
  int handle(get_count) { return *starts_; }

private:
  int* starts_;
};

TEST(Supervision, AnExceptionInOnStartCountsAsAFailure) {
  actor_system sys{manual_config()};
  int starts = 0;
  auto f = sys.spawn<fails_to_start>(spawn_options{.restart = {.max_restarts = 5}}, &starts);
  auto r = f.ask(get_count{}, 1s);
  sys.run();
  EXPECT_EQ(r.get().value(), 3);  // two failed starts, restarted (on_restart -> on_start) twice
  int starts2 = 0;
  auto g = sys.spawn<fails_to_start>(&starts2);
  std::vector<exit_reason> reasons;
  sys.monitor(g, [&reasons](const down_msg& d) { reasons.push_back(d.reason); });
  sys.run();
  EXPECT_EQ(reasons, (std::vector<exit_reason>{exit_reason::exception}));
}

struct arm {};
struct ping_timer {};
class timed_fragile : public actor<timed_fragile> {
public:
  explicit timed_fragile(int* pings) : pings_{pings} {}
  void handle(arm) { send_every(std::chrono::milliseconds{10}, ping_timer{}); }
  void handle(ping_timer) { ++*pings_; }
  void handle(crash) { throw std::runtime_error{"crash"}; }

private:
  int* pings_;
};

TEST(Supervision, ARestartCancelsTheTimersOfTheOldInstance) {
  auto clk = std::make_shared<manual_clock>();
  actor_system sys{manual_config(clk)};
  int pings = 0;
  auto f = sys.spawn<timed_fragile>(spawn_options{.restart = {.max_restarts = 1}}, &pings);
  f.tell(arm{});
  sys.run();
  clk->advance(std::chrono::milliseconds{20});
  sys.run();
  EXPECT_EQ(pings, 2);
  f.tell(crash{});
  sys.run();
  clk->advance(std::chrono::seconds{1});
  sys.run();
  EXPECT_EQ(pings, 2);
  EXPECT_TRUE(f.alive());
}

TEST(ActorApi, MisuseIsAPreconditionErrorNotACrash) {
  actor_system sys{manual_config()};
  actor_ref<fragile> empty;
  EXPECT_THROW(empty.tell(bump{}), precondition_error);
  EXPECT_THROW((void)empty.ask(get_count{}, 1s), precondition_error);
  struct eager : actor<eager> {
    eager() { (void)address(); }  // no actor services in the constructor
    void handle(bump) {}
  };
  EXPECT_THROW(sys.spawn<eager>(), precondition_error);
  restart_log log;
  struct move_only_arg : actor<move_only_arg> {
    explicit move_only_arg(std::unique_ptr<int> p) : p_{std::move(p)} {}
    void handle(bump) {}
    std::unique_ptr<int> p_;
  };
  EXPECT_THROW(sys.spawn<move_only_arg>(spawn_options{.restart = {.max_restarts = 1}}, std::make_unique<int>(1)),
               precondition_error);
  EXPECT_TRUE(sys.spawn<move_only_arg>(std::make_unique<int>(1)).alive());
}

}  // namespace
}  // namespace flexsp::core
