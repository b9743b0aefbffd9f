#pragma once
/// \file
/// Timers: one-shot and periodic callbacks at deadlines read from a `clock`.
///
/// Actors use them through `actor<Derived>::send_after` / `send_every` (messages to self) and
/// request timeouts; the service is public so that other runtime parts (failure detectors,
/// heartbeats) can share it. With a steady clock a single timer thread fires callbacks; with a
/// `manual_clock` callbacks fire inside `manual_clock::advance` on the caller's thread.
/// Callbacks must be short and non-blocking (they typically enqueue one message).

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "flexsp/core/clock.hpp"

namespace flexsp::core {

/// Refers to one scheduled timer. Copyable; every copy controls the same timer.
/// A default-constructed handle refers to nothing (cancel is a no-op, active() is false).
class timer_handle {
public:
  timer_handle() = default;

  /// Stops future firings. Idempotent and thread-safe. A firing already running on another
  /// thread still completes; with a manual clock (single thread) nothing fires after cancel.
  void cancel() noexcept;
  /// False once cancelled, once a one-shot timer has fired, or when the owner stopped.
  bool active() const noexcept;

private:
  friend class timer_service;
  struct state {
    std::atomic<bool> done{false};
  };
  explicit timer_handle(std::shared_ptr<state> s) : state_{std::move(s)} {}
  std::shared_ptr<state> state_;
};

/// A min-heap of deadlines and one thread (or a manual clock) that fires them.
class timer_service {
public:
  /// Callback of a timer. For a periodic timer, returning false stops it.
  using callback = std::function<bool()>;

  /// Uses `clk` (which must outlive the service). Starts the timer thread unless the clock is
  /// manual, in which case the service subscribes to it.
  explicit timer_service(clock& clk);
  ~timer_service();
  timer_service(const timer_service&) = delete;
  timer_service& operator=(const timer_service&) = delete;

  /// Fires `fn` at `deadline`, then (when `period` > 0) every `period` after that. A periodic
  /// timer that falls behind a steady clock skips the missed firings instead of bursting.
  /// After stop() the callback is dropped and the returned handle is inactive.
  timer_handle schedule(time_point deadline, duration period, callback fn);
  timer_handle schedule_after(duration delay, callback fn) { return schedule(clock_.now() + delay, duration::zero(), std::move(fn)); }

  /// Drops every pending timer and joins the timer thread. Idempotent.
  void stop();

  /// Timers scheduled and not yet fired or cancelled (cancelled ones are counted until pruned).
  std::size_t pending() const;

  clock& time_source() const noexcept { return clock_; }

private:
  struct entry {
    time_point deadline;
    std::uint64_t seq;
    duration period;
    std::shared_ptr<timer_handle::state> state;
    std::shared_ptr<callback> fn;
  };
  struct later {
    bool operator()(const entry& a, const entry& b) const noexcept {
      return a.deadline != b.deadline ? a.deadline > b.deadline : a.seq > b.seq;
    }
  };
  void run_thread();
  time_point fire_due(time_point now);
  void prune_locked();

  clock& clock_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::vector<entry> heap_;
  std::size_t prune_at_ = 1024;
  std::uint64_t next_seq_ = 0;
  bool stopped_ = false;
  std::uint64_t manual_token_ = 0;
  std::thread thread_;
};

}  // namespace flexsp::core
