#pragma once
// The control block of an actor living in this process: mailbox, lifecycle, supervision,
// watchers.

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "flexsp/core/actor.hpp"
#include "flexsp/core/actor_ref.hpp"
#include "flexsp/core/actor_system.hpp"
#include "flexsp/core/detail/watchers.hpp"
#include "flexsp/core/mailbox.hpp"
#include "scheduler.hpp"

namespace flexsp::core::detail {

class local_actor final : public abstract_actor {
public:
  using factory = std::function<std::unique_ptr<actor_base>()>;

  local_actor(actor_system& sys, scheduler& sched, std::uint64_t id, std::string name, std::unique_ptr<actor_base> instance,
              factory make, restart_policy restart, mailbox_config mailbox);
  ~local_actor() override;

  static local_actor& of(actor_base& a) noexcept { return *a.cell_; }

  // abstract_actor
  expected<void> enqueue(message_ptr m) override;
  void stop(stop_mode mode) override;
  void kill() override { request_termination(exit_reason::killed); }
  bool alive() const noexcept override { return alive_.load(std::memory_order_acquire); }
  void attach(intrusive_ptr<abstract_actor> watcher, watch_kind kind) override;
  void attach(std::function<void(const down_msg&)> callback) override;
  void detach(const abstract_actor* watcher, watch_kind kind) override;
  timer_service& timers() const noexcept override { return sys_.timers(); }

  enum class resume_result { again, idle, done };
  /// Scheduler: handles up to `budget` messages. `again`: reschedule; otherwise drop the
  /// scheduler's reference.
  resume_result resume(std::size_t budget);

  /// Queues the start message (scheduling the actor). Called once by spawn.
  void start();
  /// Terminates an actor that was never scheduled, on the calling thread.
  void terminate_unstarted(exit_reason reason);
  /// Any thread: terminate after the current message, discarding the mailbox.
  void request_termination(exit_reason reason);

  // Own thread (called through actor_base).
  actor_system& system() const noexcept { return sys_; }
  void quit(exit_reason reason) noexcept;
  std::uint32_t incarnation() const noexcept { return incarnation_; }
  timer_handle schedule_self(duration delay, duration period, std::function<message_ptr()> make);
  void mark_started() noexcept { started_ = true; }

private:
  void run_message(message* m);
  void handle_failure(const error& cause);
  void restart(const error& cause);
  void terminate(exit_reason reason);
  void cancel_timers() noexcept;
  expected<void> acquire_slot();
  void release_slot() noexcept;
  expected<void> reject(message_ptr m, error why, dead_letter_reason reason);
  void notify_watchers(exit_reason reason, const std::string& what);

  actor_system& sys_;
  scheduler& sched_;  // the system's workers or its blocking pool
  mailbox_queue mailbox_;
  mailbox_config mailbox_config_;
  std::atomic<std::size_t> queued_user_{0};
  std::atomic<int> blocked_senders_{0};
  std::mutex space_mutex_;
  std::condition_variable space_cv_;

  // 0 = none, otherwise 1 + exit_reason.
  std::atomic<std::uint8_t> termination_request_{0};
  std::atomic<bool> alive_{true};

  // Own thread only.
  std::unique_ptr<actor_base> instance_;
  factory factory_;
  restart_policy restart_;
  std::deque<time_point> restarts_;
  std::uint32_t incarnation_ = 0;
  bool started_ = false;
  bool quit_requested_ = false;
  exit_reason quit_reason_ = exit_reason::normal;
  std::string failure_what_;
  std::vector<timer_handle> timers_;

  watcher_list watchers_;
};

}  // namespace flexsp::core::detail
