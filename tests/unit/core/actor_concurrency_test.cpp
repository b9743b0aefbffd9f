// Behaviour on the real worker pool: ordering under concurrent senders, bounded mailboxes,
// shutdown with busy actors, and a delivery stress test. No sleeps: completion is awaited
// with latches and replies.

#include "flexsp/core/actor_system.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <latch>
#include <memory>
#include <thread>
#include <vector>

namespace flexsp::core {
namespace {

using namespace std::chrono_literals;

#if defined(__SANITIZE_THREAD__)
constexpr bool kUnderTsan = true;
#else
constexpr bool kUnderTsan = false;
#endif

struct seq_msg {
  std::uint32_t sender;
  std::uint32_t seq;
};
struct report {};
struct order_report {
  std::uint64_t received;
  std::uint64_t violations;
};

class order_checker : public actor<order_checker> {
public:
  explicit order_checker(std::size_t senders) : next_(senders, 0) {}
  void handle(const seq_msg& m) {
    if (m.seq != next_[m.sender]) ++violations_;
    next_[m.sender] = m.seq + 1;
    ++received_;
  }
  order_report handle(report) { return {received_, violations_}; }

private:
  std::vector<std::uint32_t> next_;
  std::uint64_t received_ = 0;
  std::uint64_t violations_ = 0;
};

struct block_until_released {
  std::shared_ptr<std::latch> entered;
  std::shared_ptr<std::latch> release;
};
class blocker : public actor<blocker> {
public:
  void handle(const block_until_released& m) {
    m.entered->count_down();
    m.release->wait();
  }
};
struct question {};
class answerer : public actor<answerer> {
public:
  int handle(question) { return 7; }
};

TEST(ActorThreads, ABlockingActorNeverHoldsTheWorkersOtherActorsRunOn) {
  actor_system sys{actor_system_config{.workers = 1}};
  spawn_options o;
  o.blocking = true;
  auto b = sys.spawn<blocker>(o);
  auto a = sys.spawn<answerer>();
  auto entered = std::make_shared<std::latch>(1), release = std::make_shared<std::latch>(1);
  b.tell(block_until_released{entered, release});
  entered->wait();  // the blocker now holds a thread of the blocking pool
  auto r = a.ask(question{}, 30s).get();
  release->count_down();
  ASSERT_TRUE(r) << r.error().to_string();
  EXPECT_EQ(*r, 7);
}

/// N parties that each block in a handler until all N are in theirs (as the ranks of a
/// collective do), or a deadline passes.
struct rendezvous_state {
  std::mutex mutex;
  std::condition_variable cv;
  int arrived = 0;
  int met = 0;
};
struct meet {
  std::shared_ptr<rendezvous_state> state;
  int parties;
};
class party : public actor<party> {
public:
  void handle(const meet& m) {
    std::unique_lock lock{m.state->mutex};
    ++m.state->arrived;
    m.state->cv.notify_all();
    if (m.state->cv.wait_for(lock, 5s, [&] { return m.state->arrived >= m.parties; })) ++m.state->met;
    m.state->cv.notify_all();
  }
};

/// Hands each meeting on to its blocking party, as a device actor hands steps to its worker.
class forwarder : public actor<forwarder> {
public:
  explicit forwarder(actor_ref<party> to) : to_{std::move(to)} {}
  void handle(const meet& m) { to_.tell(m); }

private:
  actor_ref<party> to_;
};

TEST(ActorThreads, BlockingActorsThatMustAllRunAtOnceNeverWaitForABusyWorker) {
  constexpr int kParties = 8;
  actor_system sys{actor_system_config{.workers = 2, .blocking_workers = kParties + 2}};
  spawn_options o;
  o.blocking = true;
  std::vector<actor_ref<forwarder>> parties;
  for (int i = 0; i < kParties; ++i) parties.push_back(sys.spawn<forwarder>(sys.spawn<party>(o)));
  // Short work on the blocking pool keeps some of its workers searching when a round starts.
  auto busy = sys.spawn<answerer>(o);
  for (int round = 0; round < 300; ++round) {
    auto st = std::make_shared<rendezvous_state>();
    for (int i = 0; i < 20; ++i) (void)busy.ask(question{}, 30s);
    for (int i = 0; i < 20; ++i) busy.tell(question{});
    for (auto& p : parties) p.tell(meet{st, kParties});
    std::unique_lock lock{st->mutex};
    st->cv.wait_for(lock, 30s, [&] { return st->arrived == kParties && st->met == kParties; });
    ASSERT_EQ(st->met, kParties) << "round " << round << ": a blocking actor waited for a busy worker while "
                                 << "others were idle (" << st->arrived << " ran in the end)";
  }
}

TEST(ActorThreads, MessagesFromEachSenderArriveInSendOrderUnderManyConcurrentSenders) {
  constexpr std::uint32_t kThreads = 8, kPerThread = kUnderTsan ? 5'000 : 25'000;
  actor_system sys{actor_system_config{.workers = 2}};
  auto checker = sys.spawn<order_checker>(kThreads);
  std::vector<std::thread> senders;
  for (std::uint32_t t = 0; t < kThreads; ++t)
    senders.emplace_back([&checker, t] {
      for (std::uint32_t i = 0; i < kPerThread; ++i) checker.tell(seq_msg{t, i});
    });
  for (auto& s : senders) s.join();
  auto r = checker.ask(report{}, 30s).get().value();
  EXPECT_EQ(r.received, std::uint64_t{kThreads} * kPerThread);
  EXPECT_EQ(r.violations, 0u);
}

TEST(ActorThreads, TheWorkSharingPoolKeepsPerSenderOrderToo) {
  constexpr std::uint32_t kThreads = 4, kPerThread = kUnderTsan ? 2'000 : 10'000;
  actor_system sys{actor_system_config{.workers = 2, .scheduling = scheduling_policy::sharing}};
  std::vector<actor_ref<order_checker>> checkers;
  for (int i = 0; i < 3; ++i) checkers.push_back(sys.spawn<order_checker>(kThreads));
  std::vector<std::thread> senders;
  for (std::uint32_t t = 0; t < kThreads; ++t)
    senders.emplace_back([&checkers, t] {
      for (std::uint32_t i = 0; i < kPerThread; ++i)
        for (auto& c : checkers) c.tell(seq_msg{t, i});
    });
  for (auto& s : senders) s.join();
  for (auto& c : checkers) {
    auto r = c.ask(report{}, 30s).get().value();
    EXPECT_EQ(r.received, std::uint64_t{kThreads} * kPerThread);
    EXPECT_EQ(r.violations, 0u);
  }
}

struct blast {
  actor_ref<order_checker> target;
  std::uint32_t me;
  std::uint32_t count;
};

class blaster : public actor<blaster> {
public:
  explicit blaster(std::latch* done) : done_{done} {}
  void handle(const blast& b) {
    for (std::uint32_t i = 0; i < b.count; ++i) b.target.tell(seq_msg{b.me, i});
    done_->count_down();
  }

private:
  std::latch* done_;
};

TEST(ActorThreads, MessagesFromEachActorArriveInSendOrderUnderManyConcurrentActors) {
  constexpr std::uint32_t kActors = 100, kEach = kUnderTsan ? 200 : 2'000;
  actor_system sys{actor_system_config{.workers = 2, .throughput = 8}};
  auto checker = sys.spawn<order_checker>(kActors);
  std::latch done{kActors};
  for (std::uint32_t a = 0; a < kActors; ++a) sys.spawn<blaster>(&done).tell(blast{checker, a, kEach});
  done.wait();
  auto r = checker.ask(report{}, 30s).get().value();
  EXPECT_EQ(r.received, std::uint64_t{kActors} * kEach);
  EXPECT_EQ(r.violations, 0u);
}

class gate : public actor<gate> {
public:
  gate(std::latch* entered, std::latch* release, std::atomic<int>* handled)
      : entered_{entered}, release_{release}, handled_{handled} {}
  void handle(int i) {
    if (i == 0) {
      entered_->count_down();
      release_->wait();
    }
    handled_->fetch_add(1);
  }

private:
  std::latch* entered_;
  std::latch* release_;
  std::atomic<int>* handled_;
};

TEST(BoundedMailbox, RejectPolicyFailsTheSendWithOverloaded) {
  actor_system sys{actor_system_config{.mode = execution_mode::manual}};
  std::vector<dead_letter_reason> dead;
  sys.on_dead_letter([&dead](const dead_letter& d) { dead.push_back(d.reason); });
  struct sink : actor<sink> {
    int handle(int i) { return i; }
  };
  auto s = sys.spawn<sink>(spawn_options{.mailbox = mailbox_config{.capacity = 2}});
  EXPECT_TRUE(s.try_tell(1));
  EXPECT_TRUE(s.try_tell(2));
  auto r = s.try_tell(3);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().kind(), errc::overloaded);
  auto asked = s.ask(4, 1s);
  ASSERT_TRUE(asked.ready());
  EXPECT_EQ(asked.get().error().kind(), errc::overloaded);
  EXPECT_EQ(dead, (std::vector<dead_letter_reason>{dead_letter_reason::mailbox_full, dead_letter_reason::mailbox_full}));
  s.stop();  // runtime messages are not bounded
  sys.run();
  EXPECT_FALSE(s.alive());
}

TEST(BoundedMailbox, BlockPolicyMakesAnOutsideSenderWaitForRoom) {
  actor_system sys{actor_system_config{.workers = 2}};
  std::latch entered{1}, release{1};
  std::atomic<int> handled{0};
  auto g = sys.spawn<gate>(spawn_options{.mailbox = mailbox_config{.capacity = 2, .overflow = overflow_policy::block}},
                           &entered, &release, &handled);
  g.tell(0);
  entered.wait();  // the actor is busy; its mailbox is empty
  std::thread sender{[&g] {
    for (int i = 1; i <= 10; ++i) ASSERT_TRUE(g.try_tell(i));
  }};
  while (sys.stats().blocked_sends == 0) std::this_thread::yield();
  EXPECT_LE(handled.load(), 0);
  release.count_down();
  sender.join();
  g.stop();
  std::latch down{1};
  sys.monitor(g, [&down](const down_msg&) { down.count_down(); });
  down.wait();
  EXPECT_EQ(handled.load(), 11);
  EXPECT_EQ(sys.stats().dead_letters, 0u);
}

TEST(BoundedMailbox, ABlockedSenderIsReleasedWithDisconnectedWhenTheActorDies) {
  actor_system sys{actor_system_config{.workers = 2}};
  std::latch entered{1}, release{1};
  std::atomic<int> handled{0};
  auto g = sys.spawn<gate>(spawn_options{.mailbox = mailbox_config{.capacity = 1, .overflow = overflow_policy::block}},
                           &entered, &release, &handled);
  g.tell(0);
  entered.wait();
  g.tell(1);  // fills the mailbox
  std::atomic<bool> disconnected{false};
  std::thread sender{[&] {
    auto r = g.try_tell(2);
    disconnected = !r && r.error().kind() == errc::disconnected;
  }};
  while (sys.stats().blocked_sends == 0) std::this_thread::yield();
  g.kill();
  release.count_down();
  sender.join();
  EXPECT_TRUE(disconnected.load());
}

struct spin {};

class busy : public actor<busy> {
public:
  busy(std::atomic<int>* stopped, std::latch* running) : stopped_{stopped}, running_{running} {}
  void on_start() override { running_->count_down(); }
  void handle(spin) {
    self().tell(spin{});  // always has more work
    self().tell(spin{});
  }
  void on_stop(exit_reason r) override {
    if (r == exit_reason::shutdown) stopped_->fetch_add(1);
  }

private:
  std::atomic<int>* stopped_;
  std::latch* running_;
};

TEST(ActorThreads, ShutdownStopsBusyActorsAndJoinsEveryThread) {
  constexpr int kActors = 50;
  std::atomic<int> stopped{0};
  std::latch running{kActors};
  std::uint64_t dead_letters = 0;
  {
    actor_system sys{actor_system_config{.workers = 2}};
    for (int i = 0; i < kActors; ++i) sys.spawn<busy>(&stopped, &running).tell(spin{});
    running.wait();
    sys.shutdown();
    EXPECT_EQ(sys.live_actors(), 0u);
    dead_letters = sys.stats().dead_letters;
    sys.shutdown();  // idempotent
  }
  EXPECT_EQ(stopped.load(), kActors);
  EXPECT_GT(dead_letters, 0u);  // the queued spins were discarded
}

class spinner : public actor<spinner> {
public:
  void handle(spin) { self().tell(spin{}); }
};

class rally : public actor<rally> {
public:
  void handle(const actor_ref<rally>& peer) {
    peer_ = peer;
    peer_.tell(spin{});
  }
  void handle(spin) { peer_.tell(spin{}); }

private:
  actor_ref<rally> peer_;
};

TEST(ActorThreads, ABusyActorDoesNotStarveOthersOnASingleWorker) {
  actor_system sys{actor_system_config{.workers = 1, .throughput = 16}};
  sys.spawn<spinner>().tell(spin{});
  // Two actors bouncing a message through the worker's next slot forever.
  auto a = sys.spawn<rally>();
  auto b = sys.spawn<rally>();
  b.tell(a);
  a.tell(b);
  auto other = sys.spawn<order_checker>(1);
  for (std::uint32_t i = 0; i < 100; ++i) other.tell(seq_msg{0, i});
  auto r = other.ask(report{}, 60s).get();
  ASSERT_TRUE(r) << r.error().to_string();
  EXPECT_EQ(r->received, 100u);
}

struct token {
  std::uint32_t id;
};

class tally : public actor<tally> {
public:
  tally(std::vector<std::atomic<std::uint8_t>>* seen, std::atomic<std::uint64_t>* left, std::latch* done)
      : seen_{seen}, left_{left}, done_{done} {}
  void handle(const token& t) {
    (*seen_)[t.id].fetch_add(1, std::memory_order_relaxed);
    if (left_->fetch_sub(1, std::memory_order_acq_rel) == 1) done_->count_down();
  }

private:
  std::vector<std::atomic<std::uint8_t>>* seen_;
  std::atomic<std::uint64_t>* left_;
  std::latch* done_;
};

struct relay {
  actor_ref<tally> to;
  std::uint32_t first;
  std::uint32_t count;
};

class relayer : public actor<relayer> {
public:
  void handle(const relay& r) {
    for (std::uint32_t i = 0; i < r.count; ++i) r.to.tell(token{r.first + i});
  }
};

TEST(ActorStress, EveryMessageIsDeliveredExactlyOnceAcrossTenThousandActors) {
  constexpr std::uint32_t kActors = 10'000;
  constexpr std::uint32_t kMessages = 1'000'000;
  constexpr std::uint32_t kThreads = 4;
  constexpr std::uint32_t kBatch = 50;  // half of the messages are sent by actors, in batches
  std::vector<std::atomic<std::uint8_t>> seen(kMessages);
  std::atomic<std::uint64_t> left{kMessages};
  std::latch done{1};
  actor_system sys{actor_system_config{.workers = 2}};
  std::vector<actor_ref<tally>> tallies;
  std::vector<actor_ref<relayer>> relayers;
  tallies.reserve(kActors);
  for (std::uint32_t i = 0; i < kActors; ++i) tallies.push_back(sys.spawn<tally>(&seen, &left, &done));
  for (std::uint32_t i = 0; i < 64; ++i) relayers.push_back(sys.spawn<relayer>());

  std::vector<std::thread> senders;
  for (std::uint32_t t = 0; t < kThreads; ++t)
    senders.emplace_back([&, t] {
      for (std::uint32_t id = t * kBatch; id < kMessages; id += kThreads * kBatch) {
        const std::uint32_t n = std::min(kBatch, kMessages - id);
        const auto& to = tallies[(id / kBatch) % kActors];
        if ((id / kBatch) % 2 == 0) {
          for (std::uint32_t k = 0; k < n; ++k) to.tell(token{id + k});
        } else {
          relayers[(id / kBatch) % relayers.size()].tell(relay{to, id, n});
        }
      }
    });
  for (auto& s : senders) s.join();
  done.wait();
  std::uint64_t missing = 0, duplicated = 0;
  for (auto& s : seen) {
    const auto v = s.load();
    missing += v == 0;
    duplicated += v > 1;
  }
  EXPECT_EQ(missing, 0u);
  EXPECT_EQ(duplicated, 0u);
  EXPECT_EQ(sys.stats().spawned, kActors + 64);
  EXPECT_EQ(sys.stats().dead_letters, 0u);
  sys.shutdown();
  EXPECT_EQ(sys.stats().terminated, kActors + 64);
}

TEST(ActorThreads, ActorsSpawnAndStopConcurrentlyWithoutLeaks) {
  actor_system sys{actor_system_config{.workers = 2}};
  constexpr int kRounds = kUnderTsan ? 200 : 2'000;
  std::atomic<int> downs{0};
  std::latch all_down{kRounds};
  struct ephemeral : actor<ephemeral> {
    int handle(int i) { return i + 1; }
  };
  std::vector<std::thread> spawners;
  for (int t = 0; t < 2; ++t)
    spawners.emplace_back([&] {
      for (int i = 0; i < kRounds / 2; ++i) {
        auto e = sys.spawn<ephemeral>();
        sys.monitor(e, [&](const down_msg&) {
          downs.fetch_add(1);
          all_down.count_down();
        });
        EXPECT_EQ(e.ask(i, 10s).get().value(), i + 1);
        e.stop();
      }
    });
  for (auto& s : spawners) s.join();
  all_down.wait();
  EXPECT_EQ(downs.load(), kRounds);
  EXPECT_EQ(sys.live_actors(), 0u);
}

}  // namespace
}  // namespace flexsp::core
