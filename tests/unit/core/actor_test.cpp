// Core actor behaviour: tell, ask, ordering, lifecycle, stop modes, dead letters. Runs on the
// deterministic scheduler (execution_mode::manual) with a manual clock unless a test needs
// real threads.

#include "flexsp/core/actor_system.hpp"

#include <gtest/gtest.h>

#include <latch>
#include <stdexcept>
#include <string>
#include <unordered_set>
#include <vector>

namespace flexsp::core {
namespace {

using namespace std::chrono_literals;

struct add {
  int n;
};
struct get_total {};
struct fail_now {};
struct checked_div {
  int divisor;
};
struct reject_input {};
struct unrelated {};

struct journal {
  std::vector<std::string> events;
};

class counter : public actor<counter> {
public:
  explicit counter(journal* j = nullptr) : journal_{j} {}
  void handle(const add& m) {
    total_ += m.n;
    seen_.push_back(m.n);
  }
  int handle(get_total) { return total_; }
  void handle(fail_now) { throw std::runtime_error{"boom"}; }
  expected<int> handle(const checked_div& m) {
    if (m.divisor == 0) return make_error(errc::invalid_argument, "divisor is zero");
    return total_ / m.divisor;
  }
  int handle(reject_input) {
    FLEXSP_EXPECTS(total_ > 1000, "total {} too small", total_);
    return 0;
  }
  std::vector<int> handle(const std::string&) { return seen_; }

  void on_start() override { note("start"); }
  void on_stop(exit_reason r) override { note(std::string{"stop:"} + std::string{to_string(r)}); }

private:
  void note(std::string e) {
    if (journal_) journal_->events.push_back(std::move(e));
  }
  journal* journal_;
  int total_ = 0;
  std::vector<int> seen_;
};

// Sending a type an actor has no handler for does not compile.
static_assert(handles<counter, add>);
static_assert(!handles<counter, unrelated>);
template <class Ref, class M>
concept can_tell = requires(const Ref& r, M m) { r.tell(std::move(m)); };
template <class Ref, class M>
concept can_ask = requires(const Ref& r, M m) { r.ask(std::move(m), 1s); };
static_assert(can_tell<actor_ref<counter>, add> && can_ask<actor_ref<counter>, get_total>);
static_assert(!can_tell<actor_ref<counter>, unrelated>);
static_assert(!can_ask<actor_ref<counter>, unrelated>);
static_assert(!can_tell<any_ref, add>);
static_assert(std::is_same_v<reply_t<counter, get_total>, int>);
static_assert(std::is_same_v<reply_t<counter, checked_div>, int>);
static_assert(std::is_same_v<reply_t<counter, add>, void>);
static_assert(sizeof(actor_ref<counter>) == sizeof(void*));

actor_system_config manual_config() {
  actor_system_config cfg;
  cfg.mode = execution_mode::manual;
  cfg.clock = std::make_shared<manual_clock>();
  return cfg;
}

template <class R>
expected<R> settle(actor_system& sys, pending<R>& p) {
  sys.run();
  EXPECT_TRUE(p.ready());
  return p.get();
}

TEST(Actor, TellDeliversMessagesInSendOrder) {
  actor_system sys{manual_config()};
  auto c = sys.spawn<counter>();
  for (int i = 0; i < 100; ++i) c.tell(add{i});
  auto seen = c.ask(std::string{"seen"}, 1s);
  auto r = settle(sys, seen);
  ASSERT_TRUE(r);
  ASSERT_EQ(r->size(), 100u);
  for (int i = 0; i < 100; ++i) EXPECT_EQ((*r)[static_cast<std::size_t>(i)], i);
}

TEST(Actor, AskYieldsTheHandlersReturnValue) {
  actor_system sys{manual_config()};
  auto c = sys.spawn<counter>();
  c.tell(add{40});
  c.tell(add{2});
  auto total = c.ask(get_total{}, 1s);
  EXPECT_FALSE(total.ready());
  auto r = settle(sys, total);
  ASSERT_TRUE(r);
  EXPECT_EQ(*r, 42);
}

TEST(Actor, AskPassesTheHandlersErrorThrough) {
  actor_system sys{manual_config()};
  auto c = sys.spawn<counter>();
  c.tell(add{10});
  auto ok = c.ask(checked_div{5}, 1s);
  auto bad = c.ask(checked_div{0}, 1s);
  sys.run();
  EXPECT_EQ(ok.get().value(), 2);
  auto r = bad.get();
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().kind(), errc::invalid_argument);
  EXPECT_EQ(r.error().message(), "divisor is zero");
}

TEST(Actor, AskFailsWithFailedWhenTheHandlerThrows) {
  actor_system sys{manual_config()};
  auto c = sys.spawn<counter>();
  auto r = c.ask(fail_now{}, 1s);
  auto out = settle(sys, r);
  ASSERT_FALSE(out);
  EXPECT_EQ(out.error().kind(), errc::failed);
  EXPECT_NE(out.error().message().find("boom"), std::string::npos);
}

TEST(Actor, AskFailsWithInvalidArgumentWhenTheHandlerRejectsItsInput) {
  actor_system sys{manual_config()};
  auto c = sys.spawn<counter>(spawn_options{.restart = {.max_restarts = 1}});
  auto r = c.ask(reject_input{}, 1s);
  auto out = settle(sys, r);
  ASSERT_FALSE(out);
  EXPECT_EQ(out.error().kind(), errc::invalid_argument);
  EXPECT_NE(out.error().message().find("too small"), std::string::npos);
}

TEST(Actor, AskTimesOutWhenNoReplyArrivesBeforeTheDeadline) {
  auto cfg = manual_config();
  auto clk = cfg.clock;
  actor_system sys{cfg};
  auto c = sys.spawn<counter>();
  auto r = c.ask(get_total{}, 100ms);  // never handled: we do not run the scheduler
  clk->advance(99ms);
  EXPECT_FALSE(r.ready());
  clk->advance(1ms);
  ASSERT_TRUE(r.ready());
  auto out = r.get();
  ASSERT_FALSE(out);
  EXPECT_EQ(out.error().kind(), errc::timeout);
  sys.run();  // the late reply is dropped quietly
}

TEST(Actor, AskTimesOutOnTheSteadyClockWhileTheActorIsBusy) {
  actor_system sys{actor_system_config{.workers = 2}};
  struct blocker : actor<blocker> {
    explicit blocker(std::latch* l) : release_{l} {}
    void handle(int) { release_->wait(); }
    int handle(get_total) { return 1; }
    std::latch* release_;
  };
  std::latch release{1};
  auto b = sys.spawn<blocker>(&release);
  b.tell(0);
  auto r = b.ask(get_total{}, 20ms).get();
  release.count_down();
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().kind(), errc::timeout);
}

TEST(Actor, AskToADeadActorFailsWithDisconnected) {
  actor_system sys{manual_config()};
  auto c = sys.spawn<counter>();
  c.stop();
  sys.run();
  EXPECT_FALSE(c.alive());
  auto r = c.ask(get_total{}, 1s);
  ASSERT_TRUE(r.ready());  // fails at once, no timeout needed
  auto out = r.get();
  ASSERT_FALSE(out);
  EXPECT_EQ(out.error().kind(), errc::disconnected);
}

TEST(Actor, AskQueuedAtAnActorThatIsKilledFailsWithDisconnected) {
  actor_system sys{manual_config()};
  auto c = sys.spawn<counter>();
  auto r = c.ask(get_total{}, 1s);
  c.kill();
  auto out = settle(sys, r);
  ASSERT_FALSE(out);
  EXPECT_EQ(out.error().kind(), errc::disconnected);
}

TEST(Actor, HooksRunOnStartBeforeTheFirstMessageAndOnStopOnce) {
  journal j;
  actor_system sys{manual_config()};
  auto c = sys.spawn<counter>(&j);
  c.tell(add{1});
  c.stop();
  c.stop();
  sys.run();
  EXPECT_EQ(j.events, (std::vector<std::string>{"start", "stop:normal"}));
}

TEST(Actor, DrainingStopHandlesEverythingSentBeforeItAndDeadLettersTheRest) {
  actor_system sys{manual_config()};
  std::vector<std::string> dead;
  sys.on_dead_letter([&dead](const dead_letter& d) { dead.emplace_back(d.message_type); });
  auto c = sys.spawn<counter>();
  int total = -1;
  sys.monitor(c, [](const down_msg&) {});
  c.tell(add{1});
  c.tell(add{2});
  auto before = c.ask(get_total{}, 1s);
  c.stop(stop_mode::drain);
  c.tell(add{3});
  sys.run();
  total = before.get().value();
  EXPECT_EQ(total, 3);
  ASSERT_EQ(dead.size(), 1u);
  EXPECT_NE(dead[0].find("add"), std::string::npos);
  EXPECT_EQ(sys.stats().dead_letters, 1u);
}

TEST(Actor, DiscardingStopDropsQueuedMessagesToDeadLetters) {
  actor_system sys{manual_config()};
  std::vector<dead_letter_reason> reasons;
  sys.on_dead_letter([&reasons](const dead_letter& d) { reasons.push_back(d.reason); });
  auto c = sys.spawn<counter>();
  sys.run();
  c.tell(add{1});
  c.tell(add{2});
  auto pending_total = c.ask(get_total{}, 1s);
  c.stop(stop_mode::discard);
  sys.run();
  EXPECT_EQ(reasons.size(), 3u);
  for (auto r : reasons) EXPECT_EQ(r, dead_letter_reason::actor_terminated);
  auto r = pending_total.get();
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().kind(), errc::disconnected);
}

TEST(Actor, MessagesToADeadActorGoToTheDeadLetterLog) {
  actor_system sys{manual_config()};
  std::vector<dead_letter> dead;
  sys.on_dead_letter([&dead](const dead_letter& d) { dead.push_back(d); });
  auto c = sys.spawn<counter>(spawn_options{.name = "acc"});
  c.kill();
  sys.run();
  auto r = c.try_tell(add{1});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().kind(), errc::disconnected);
  ASSERT_EQ(dead.size(), 1u);
  EXPECT_EQ(dead[0].target_id, c.id());
  EXPECT_EQ(dead[0].target_name, "acc");
  EXPECT_EQ(dead[0].reason, dead_letter_reason::actor_terminated);
}

TEST(Actor, ReferencesAreCheapToCopyAndCompareByIdentity) {
  actor_system sys{manual_config()};
  auto a = sys.spawn<counter>();
  auto b = sys.spawn<counter>();
  auto a2 = a;
  any_ref untyped = a;
  EXPECT_EQ(a, a2);
  EXPECT_EQ(untyped, a);
  EXPECT_NE(a, b);
  EXPECT_NE(a.id(), b.id());
  EXPECT_TRUE(a < b || b < a);
  std::unordered_set<any_ref> set{a, a2, b};
  EXPECT_EQ(set.size(), 2u);
  EXPECT_FALSE(any_ref{}.valid());
  EXPECT_EQ(any_ref{}.id(), 0u);
}

TEST(Actor, AnExceptionInAHandlerTerminatesOnlyThatActor) {
  actor_system sys{manual_config()};
  journal j;
  auto bad = sys.spawn<counter>(&j);
  auto good = sys.spawn<counter>();
  bad.tell(fail_now{});
  bad.tell(add{1});  // never handled
  good.tell(add{5});
  auto total = good.ask(get_total{}, 1s);
  sys.run();
  EXPECT_FALSE(bad.alive());
  EXPECT_TRUE(good.alive());
  EXPECT_EQ(total.get().value(), 5);
  EXPECT_EQ(j.events.back(), "stop:exception");
}

TEST(Actor, ManualSchedulerInterleavesReadyActorsInFifoOrder) {
  actor_system sys{manual_config()};
  std::vector<std::string> order;
  struct recorder : actor<recorder> {
    recorder(std::vector<std::string>* o, std::string n) : out_{o}, name_{std::move(n)} {}
    void handle(int i) { out_->push_back(name_ + std::to_string(i)); }
    std::vector<std::string>* out_;
    std::string name_;
  };
  auto a = sys.spawn<recorder>(&order, "a");
  auto b = sys.spawn<recorder>(&order, "b");
  a.tell(1);
  a.tell(2);
  b.tell(1);
  EXPECT_TRUE(sys.step());  // a: start
  EXPECT_TRUE(sys.step());  // b: start
  EXPECT_TRUE(sys.step());  // a: 1
  EXPECT_EQ(order, (std::vector<std::string>{"a1"}));
  EXPECT_TRUE(sys.step());  // b: 1
  EXPECT_TRUE(sys.step());  // a: 2
  EXPECT_EQ(order, (std::vector<std::string>{"a1", "b1", "a2"}));
  sys.run();
  EXPECT_FALSE(sys.step());
}

struct ask_it {
  int n;
};
struct result_was {
  int value;
  errc kind;
  bool ok;
};

class client : public actor<client> {
public:
  explicit client(actor_ref<counter> server) : server_{std::move(server)} {}
  void handle(const ask_it& m) {
    request(server_, checked_div{m.n}, 1s, [this](expected<int> r) {
      // Runs as a message of this actor: state access is safe.
      results_.push_back(r ? result_was{*r, errc::failed, true} : result_was{0, r.error().kind(), false});
    });
  }
  std::size_t handle(get_total) { return results_.size(); }
  std::vector<result_was> results_;
  std::vector<result_was> handle(const std::string&) { return results_; }

private:
  actor_ref<counter> server_;
};

TEST(Actor, RequestFromAnActorDeliversTheReplyAsAMessage) {
  actor_system sys{manual_config()};
  auto server = sys.spawn<counter>();
  server.tell(add{12});
  auto c = sys.spawn<client>(server);
  c.tell(ask_it{3});
  c.tell(ask_it{0});
  auto r = c.ask(std::string{}, 1s);
  sys.run();
  // The query was queued before the replies came back.
  EXPECT_TRUE(r.get().value().empty());
  auto r2 = c.ask(std::string{}, 1s);
  auto results = settle(sys, r2).value();
  ASSERT_EQ(results.size(), 2u);
  EXPECT_TRUE(results[0].ok);
  EXPECT_EQ(results[0].value, 4);
  EXPECT_FALSE(results[1].ok);
  EXPECT_EQ(results[1].kind, errc::invalid_argument);
}

struct total_at_least {
  int n;
};

class waiting_counter : public actor<waiting_counter> {
public:
  void handle(const add& m) {
    total_ += m.n;
    for (auto& w : waiters_)
      if (total_ >= w.first) w.second.deliver(total_);
    std::erase_if(waiters_, [this](const auto& w) { return total_ >= w.first; });
  }
  deferred<int> handle(const total_at_least& m) {
    if (m.n < 0) return respond_later<int>();  // dropped: the requester gets an error
    if (total_ >= m.n) {
      auto d = respond_later<int>();
      d.deliver(total_);
      return d;
    }
    waiters_.emplace_back(m.n, respond_later<int>());
    return waiters_.back().second;
  }

private:
  int total_ = 0;
  std::vector<std::pair<int, deferred<int>>> waiters_;
};
static_assert(std::is_same_v<reply_t<waiting_counter, total_at_least>, int>);

TEST(Actor, ADeferredReplyCompletesTheAskWhenDelivered) {
  actor_system sys{manual_config()};
  auto c = sys.spawn<waiting_counter>();
  auto at5 = c.ask(total_at_least{5}, 1s);
  auto at1 = c.ask(total_at_least{1}, 1s);
  sys.run();
  EXPECT_FALSE(at5.ready());
  c.tell(add{3});
  sys.run();
  EXPECT_FALSE(at5.ready());
  ASSERT_TRUE(at1.ready());
  EXPECT_EQ(at1.get().value(), 3);
  c.tell(add{3});
  sys.run();
  ASSERT_TRUE(at5.ready());
  EXPECT_EQ(at5.get().value(), 6);
  auto now = c.ask(total_at_least{2}, 1s);
  EXPECT_EQ(settle(sys, now).value(), 6);
}

TEST(Actor, ADroppedDeferredReplyFailsTheAsk) {
  actor_system sys{manual_config()};
  auto c = sys.spawn<waiting_counter>();
  auto dropped = c.ask(total_at_least{-1}, 1s);
  auto r = settle(sys, dropped);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().kind(), errc::failed);
  // A tell to a deferred handler is fine: there is nobody to reply to.
  c.tell(total_at_least{100});
  sys.run();
  EXPECT_TRUE(c.alive());
}

TEST(Actor, PendingDeferredRepliesFailWhenTheActorStops) {
  actor_system sys{manual_config()};
  auto c = sys.spawn<waiting_counter>();
  auto waiting = c.ask(total_at_least{10}, 1s);
  sys.run();
  c.stop();
  auto r = settle(sys, waiting);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().kind(), errc::failed);
}

TEST(Actor, SpawningAfterShutdownYieldsATerminatedActor) {
  actor_system sys{manual_config()};
  sys.shutdown();
  auto c = sys.spawn<counter>();
  EXPECT_FALSE(c.alive());
  auto r = c.ask(get_total{}, 1s);
  ASSERT_TRUE(r.ready());
  EXPECT_EQ(r.get().error().kind(), errc::disconnected);
}

TEST(Actor, InvalidConfigIsRejectedNamingTheField) {
  actor_system_config cfg;
  cfg.throughput = 0;
  auto v = cfg.validate();
  ASSERT_FALSE(v);
  EXPECT_NE(v.error().message().find("throughput"), std::string::npos);
  EXPECT_THROW(actor_system{cfg}, precondition_error);
}

}  // namespace
}  // namespace flexsp::core
