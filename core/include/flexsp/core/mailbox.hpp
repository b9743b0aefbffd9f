#pragma once
/// \file
/// Mailboxes: a lock-free multi-producer single-consumer queue of `message`s, plus the
/// configuration of optional bounds.
///
/// The queue is a LIFO stack of nodes pushed with one CAS; the single consumer takes the whole
/// stack with one exchange and reverses it into a private FIFO cache. Messages from one sender
/// therefore come out in the order that sender pushed them. The head word doubles as the
/// actor's scheduling state: a consumer that finds the mailbox empty swaps in a `blocked`
/// marker, and the producer that replaces the marker learns it must schedule the actor — so an
/// actor is scheduled exactly once per idle->busy transition, with no extra flag or lock.

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "flexsp/core/error.hpp"
#include "flexsp/core/message.hpp"

namespace flexsp::core {

/// What a bounded mailbox does with a user message that does not fit.
enum class overflow_policy : std::uint8_t {
  /// The message goes to the dead-letter log; `try_tell` returns errc::overloaded and an `ask`
  /// completes with errc::overloaded. The sender never waits.
  reject,
  /// The sender waits until there is room (or the receiver dies: errc::disconnected). Only
  /// threads outside the actor system's workers wait; a sender running on a worker thread gets
  /// `reject` behaviour instead, because waiting there can deadlock the pool.
  block,
};

/// Mailbox bounds. Runtime messages (start, stop, down/exit notices, replies) never count.
struct mailbox_config {
  /// Maximum queued user messages; 0 = unbounded.
  std::size_t capacity = 0;
  overflow_policy overflow = overflow_policy::reject;
};

/// Result of pushing into a mailbox.
enum class push_result : std::uint8_t {
  queued,     ///< Queued; the consumer was already scheduled or running.
  unblocked,  ///< Queued into an idle mailbox: the caller must schedule the consumer.
  closed,     ///< The consumer is gone; the message was not queued.
};

/// The lock-free MPSC queue described above. Producers call `push`; only the thread running
/// the owning actor calls the other members.
class mailbox_queue {
public:
  mailbox_queue() noexcept : head_{blocked_marker()} {}
  mailbox_queue(const mailbox_queue&) = delete;
  mailbox_queue& operator=(const mailbox_queue&) = delete;
  ~mailbox_queue() { discard_all(); }

  /// Pushes `m` (taking ownership unless the result is `closed`). Wait-free in the absence of
  /// contention, lock-free otherwise.
  push_result push(message* m) noexcept {
    message* head = head_.load(std::memory_order_relaxed);
    for (;;) {
      if (head == closed_marker()) return push_result::closed;
      m->next = head == blocked_marker() ? nullptr : head;
      // acq_rel: replacing the `blocked` marker hands the actor to whoever schedules it next,
      // so the previous consumer's writes (made before its try_block) must travel with it.
      if (head_.compare_exchange_weak(head, m, std::memory_order_acq_rel, std::memory_order_relaxed))
        return head == blocked_marker() ? push_result::unblocked : push_result::queued;
    }
  }

  /// Consumer: the oldest message, or null when none is queued.
  message* pop() noexcept {
    if (!cache_) fetch();
    message* m = cache_;
    if (m) cache_ = m->next;
    return m;
  }

  /// Consumer: true when a message is queued (cheap; does not fetch).
  bool has_messages() const noexcept {
    if (cache_) return true;
    message* h = head_.load(std::memory_order_acquire);
    return h != nullptr && h != blocked_marker() && h != closed_marker();
  }

  /// Consumer: marks the mailbox idle if it is empty. Returns false when a message arrived in
  /// the meantime (the consumer must keep running).
  bool try_block() noexcept {
    if (cache_) return false;
    message* expected = nullptr;
    return head_.compare_exchange_strong(expected, blocked_marker(), std::memory_order_acq_rel);
  }

  /// Consumer: closes the mailbox (later pushes fail) and returns the queued messages oldest
  /// first as a linked list the caller now owns.
  message* close() noexcept {
    message* taken = head_.exchange(closed_marker(), std::memory_order_acq_rel);
    if (taken == blocked_marker() || taken == closed_marker()) taken = nullptr;
    message* rest = reverse(taken);
    if (!cache_) return rest;
    message* tail = cache_;
    while (tail->next) tail = tail->next;
    tail->next = rest;
    return std::exchange(cache_, nullptr);
  }

  bool closed() const noexcept { return head_.load(std::memory_order_acquire) == closed_marker(); }

private:
  static message* blocked_marker() noexcept { return reinterpret_cast<message*>(std::uintptr_t{1}); }
  static message* closed_marker() noexcept { return reinterpret_cast<message*>(std::uintptr_t{2}); }
  static message* reverse(message* m) noexcept {
    message* out = nullptr;
    while (m) {
      message* next = m->next;
      m->next = out;
      out = m;
      m = next;
    }
    return out;
  }
  void fetch() noexcept {
    message* h = head_.load(std::memory_order_relaxed);
    if (h == nullptr || h == blocked_marker() || h == closed_marker()) return;
    cache_ = reverse(head_.exchange(nullptr, std::memory_order_acquire));
  }
  void discard_all() noexcept {
    message* m = close();
    while (m) {
      message* next = m->next;
      m->vtable->destroy(m);
      m = next;
    }
  }

  alignas(64) std::atomic<message*> head_;
  alignas(64) message* cache_ = nullptr;
};

}  // namespace flexsp::core
