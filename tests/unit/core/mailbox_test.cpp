#include "flexsp/core/mailbox.hpp"

#include "flexsp/core/actor.hpp"

#include <gtest/gtest.h>

#include <thread>
#include <vector>

namespace flexsp::core {
namespace {

struct test_message final : message {
  test_message(int s, int q);
  static constexpr std::string_view payload_name() noexcept { return "test_message"; }
  static void invoke(actor_base&, message&) {}
  int sender;
  int seq;
};
test_message::test_message(int s, int q) : message{&detail::vtable_for<test_message>::value}, sender{s}, seq{q} {}

std::unique_ptr<test_message> take(mailbox_queue& q) {
  return std::unique_ptr<test_message>{static_cast<test_message*>(q.pop())};
}

TEST(Message, ExposesItsPayloadAndPayloadTypeName) {
  struct probe {
    int value;
  };
  class sink : public actor<sink> {
  public:
    void handle(const probe&) {}
  };
  message_ptr m{new detail::tell_message<sink, probe>(probe{7})};
  EXPECT_NE(m->vtable->type_name.find("probe"), std::string_view::npos);
  ASSERT_NE(m->vtable->payload(*m), nullptr);
  EXPECT_EQ(static_cast<const probe*>(m->vtable->payload(*m))->value, 7);
  EXPECT_EQ(type_name<int>(), "int");
}

TEST(Mailbox, DeliversMessagesFromOneSenderInOrder) {
  mailbox_queue q;
  for (int i = 0; i < 100; ++i) (void)q.push(new test_message{0, i});
  for (int i = 0; i < 100; ++i) {
    auto m = take(q);
    ASSERT_TRUE(m);
    EXPECT_EQ(m->seq, i);
    if (i == 50) (void)q.push(new test_message{0, 100});  // arrivals while draining go last
  }
  auto last = take(q);
  ASSERT_TRUE(last);
  EXPECT_EQ(last->seq, 100);
  EXPECT_EQ(q.pop(), nullptr);
}

TEST(Mailbox, OnlyThePushIntoAnIdleMailboxAsksForScheduling) {
  mailbox_queue q;
  EXPECT_EQ(q.push(new test_message{0, 0}), push_result::unblocked);
  EXPECT_EQ(q.push(new test_message{0, 1}), push_result::queued);
  EXPECT_FALSE(q.try_block());  // still has messages
  take(q);
  take(q);
  EXPECT_TRUE(q.try_block());
  EXPECT_EQ(q.push(new test_message{0, 2}), push_result::unblocked);
  EXPECT_TRUE(q.has_messages());
}

TEST(Mailbox, ClosedMailboxRejectsPushesAndHandsBackQueuedMessagesOldestFirst) {
  mailbox_queue q;
  (void)q.push(new test_message{0, 0});
  (void)q.push(new test_message{0, 1});
  auto first = take(q);  // moves both into the consumer cache
  (void)q.push(new test_message{0, 2});
  message* rest = q.close();
  std::vector<int> seqs;
  while (rest) {
    std::unique_ptr<test_message> m{static_cast<test_message*>(rest)};
    rest = rest->next;
    seqs.push_back(m->seq);
  }
  EXPECT_EQ(seqs, (std::vector<int>{1, 2}));
  test_message late{0, 3};
  EXPECT_EQ(q.push(&late), push_result::closed);
  EXPECT_TRUE(q.closed());
}

TEST(Mailbox, KeepsEachProducersOrderUnderConcurrentProducers) {
  constexpr int kProducers = 4;
  constexpr int kPerProducer = 50'000;
  mailbox_queue q;
  std::vector<std::thread> producers;
  for (int p = 0; p < kProducers; ++p)
    producers.emplace_back([&q, p] {
      for (int i = 0; i < kPerProducer; ++i) (void)q.push(new test_message{p, i});
    });
  std::vector<int> next(kProducers, 0);
  int received = 0;
  while (received < kProducers * kPerProducer) {
    auto m = take(q);
    if (!m) {
      std::this_thread::yield();
      continue;
    }
    ASSERT_EQ(m->seq, next[m->sender]) << "producer " << m->sender;
    ++next[m->sender];
    ++received;
  }
  for (auto& t : producers) t.join();
  EXPECT_EQ(q.pop(), nullptr);
}

}  // namespace
}  // namespace flexsp::core
