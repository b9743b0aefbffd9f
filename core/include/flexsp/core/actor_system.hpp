#pragma once
/// \file
/// The actor system: spawns actors and runs them on a fixed pool of worker threads (or, in the
/// deterministic test mode, on the caller's thread one step at a time).
///
/// Scheduling: each worker owns a run queue plus a one-actor "next" slot. An actor woken by a
/// message sent from a worker goes into that worker's next slot (so request/reply chains stay
/// on one core, hot in cache); the actor it displaces moves to the worker's queue, where idle
/// workers steal it. A worker with nothing to do searches briefly, then sleeps; a sleeping
/// worker is woken only when work appears and no other worker is already searching (one
/// wake-up per burst, never a broadcast). Each turn an actor handles up to `throughput`
/// messages before yielding its worker.
///
/// Shutdown (`shutdown()` or the destructor): every actor is stopped as with `kill()` but with
/// reason `shutdown`: a handler that is running finishes, queued messages go to the dead-letter
/// log (pending asks complete with errc::disconnected), `on_stop` runs, down notices go out.
/// Then the timer thread and all workers are joined. A handler that never returns blocks
/// shutdown; there is no preemption.

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <unordered_map>

#include "flexsp/core/actor.hpp"
#include "flexsp/core/actor_ref.hpp"
#include "flexsp/core/check.hpp"
#include "flexsp/core/clock.hpp"
#include "flexsp/core/error.hpp"
#include "flexsp/core/mailbox.hpp"
#include "flexsp/core/timer.hpp"

namespace flexsp::core {

namespace detail {
class local_actor;
class scheduler;
class manual_scheduler;
}  // namespace detail

/// How the system runs actors.
enum class execution_mode : std::uint8_t {
  threads,  ///< A pool of worker threads.
  manual,   ///< No threads: the caller drives execution with `step()` / `run()`.
};

/// How the pool hands ready actors to workers.
enum class scheduling_policy : std::uint8_t {
  /// Per-worker queues plus a next slot, idle workers steal (see the file comment). Default.
  stealing,
  /// One shared FIFO run queue for all workers; kept to compare against (bench/actors).
  sharing,
};

struct actor_system_config {
  /// Worker threads; 0 = std::thread::hardware_concurrency(). Ignored in manual mode.
  std::size_t workers = 0;
  /// Threads of the pool that runs actors spawned with `spawn_options::blocking`; the pool
  /// starts with the first such actor (>= 1). Ignored in manual mode.
  std::size_t blocking_workers = 4;
  /// Messages an actor may handle per turn before its worker moves on (>= 1).
  std::size_t throughput = 128;
  execution_mode mode = execution_mode::threads;
  scheduling_policy scheduling = scheduling_policy::stealing;
  /// When set, all timers, request timeouts and restart windows use this clock and fire only
  /// when the test calls `advance` on it. Null: the steady clock and a timer thread.
  std::shared_ptr<manual_clock> clock{};
  /// Mailbox bounds for actors spawned without their own.
  mailbox_config default_mailbox{};

  /// Fails with errc::invalid_argument naming the bad field.
  expected<void> validate() const;
};

/// Restarting an actor whose handler threw (like Ray's `max_restarts`).
struct restart_policy {
  /// Restarts allowed within any `window`; 0 = never restart (an exception terminates the
  /// actor with exit_reason::exception). When exhausted the actor terminates the same way.
  std::uint32_t max_restarts = 0;
  duration window = std::chrono::seconds{60};
};

struct spawn_options {
  /// Name for logs and dead letters; defaults to the actor's type name.
  std::string name{};
  restart_policy restart{};
  /// Mailbox bounds; defaults to actor_system_config::default_mailbox.
  std::optional<mailbox_config> mailbox{};
  /// Runs the actor on the system's blocking pool (`blocking_workers` threads) instead of the
  /// workers: for actors whose handlers block (a training step, a CBC solve, file or network
  /// I/O), so that they never hold the threads every other actor runs on. Same semantics
  /// otherwise; in manual mode there is no difference.
  bool blocking = false;
};

/// Why a message ended in the dead-letter log.
enum class dead_letter_reason : std::uint8_t {
  actor_terminated,  ///< Sent to (or queued at) an actor that terminated.
  mailbox_full,      ///< Rejected by a bounded mailbox.
  unhandled,         ///< Reached an actor that has no handler for it (e.g. a down notice).
};
std::string_view to_string(dead_letter_reason r) noexcept;

/// One undeliverable message.
struct dead_letter {
  std::uint64_t target_id;
  std::string_view target_name;
  std::string_view message_type;
  dead_letter_reason reason;
};

/// Counters for tests and monitoring.
struct actor_system_stats {
  std::uint64_t spawned = 0;
  std::uint64_t terminated = 0;
  std::uint64_t restarts = 0;
  std::uint64_t dead_letters = 0;
  /// Sends that had to wait for room in a bounded mailbox (overflow_policy::block).
  std::uint64_t blocked_sends = 0;
};

class actor_system {
public:
  /// Starts the workers and the timer thread. Throws precondition_error when
  /// `config.validate()` fails.
  explicit actor_system(actor_system_config config = {});
  /// Calls `shutdown()`.
  ~actor_system();
  actor_system(const actor_system&) = delete;
  actor_system& operator=(const actor_system&) = delete;

  /// Creates an actor of class A from `args` and schedules its `on_start`. Thread-safe, also
  /// from inside actors. With a restart policy the arguments are copied and kept to build fresh
  /// instances (they must then be copyable). Spawning after shutdown began yields an actor that
  /// terminates at once (reason `shutdown`).
  template <class A, class... Args>
    requires std::derived_from<A, actor<A>> && std::constructible_from<A, Args&&...>
  actor_ref<A> spawn(spawn_options options, Args&&... args) {
    std::function<std::unique_ptr<actor_base>()> factory;
    if constexpr ((std::is_copy_constructible_v<std::decay_t<Args>> && ...)) {
      if (options.restart.max_restarts > 0) {
        factory = [captured = std::make_tuple(std::decay_t<Args>(args)...)]() -> std::unique_ptr<actor_base> {
          return std::apply([](const auto&... a) { return std::make_unique<A>(a...); }, captured);
        };
      }
    } else {
      FLEXSP_EXPECTS(options.restart.max_restarts == 0, "a restartable actor needs copyable spawn arguments");
    }
    if (options.name.empty()) options.name = std::string{type_name<A>()};
    auto instance = std::make_unique<A>(std::forward<Args>(args)...);
    return actor_ref<A>{spawn_impl(std::move(instance), std::move(factory), std::move(options))};
  }
  template <class A, class... Args>
    requires std::derived_from<A, actor<A>> && std::constructible_from<A, Args&&...>
  actor_ref<A> spawn(Args&&... args) {
    return spawn<A>(spawn_options{}, std::forward<Args>(args)...);
  }

  /// Runs `callback(notice)` once when `target` terminates (at once, on this thread, if it
  /// already has); otherwise on the terminating actor's thread. Must not block.
  void monitor(const any_ref& target, std::function<void(const down_msg&)> callback);

  /// Stops every actor and joins every thread (see the file comment). Idempotent. Must not be
  /// called from inside an actor of this system (it would wait for itself).
  void shutdown();

  // --- deterministic mode (execution_mode::manual); precondition errors otherwise ---

  /// Handles one message of the next ready actor (FIFO over actors). False when none is ready.
  bool step();
  /// Steps until no actor is ready; returns the number of steps. Timers do not fire unless the
  /// manual clock is advanced.
  std::size_t run();

  // --- observation ---

  /// Routes every dead letter to `observer` as well as to the log (debug level). Replaces any
  /// earlier observer; pass {} to remove. Called on the thread that dropped the message.
  void on_dead_letter(std::function<void(const dead_letter&)> observer);
  actor_system_stats stats() const noexcept;
  /// Actors spawned and not yet terminated.
  std::size_t live_actors() const noexcept;
  std::size_t worker_count() const noexcept { return workers_; }
  const actor_system_config& config() const noexcept { return config_; }
  clock& time_source() const noexcept { return *clock_; }
  timer_service& timers() noexcept { return *timers_; }

  // --- runtime internals (used by actors and control blocks) ---

  /// Logs and counts a dead letter and calls the observer.
  void report_dead_letter(const abstract_actor& target, std::string_view message_type, dead_letter_reason reason);
  /// True when a sender on this thread may wait for mailbox space (not a worker thread, not
  /// manual mode).
  bool may_block_caller() const noexcept;
  detail::scheduler& scheduler() noexcept { return *scheduler_; }

private:
  friend class detail::local_actor;
  detail::intrusive_ptr<abstract_actor> spawn_impl(std::unique_ptr<actor_base> instance,
                                                   std::function<std::unique_ptr<actor_base>()> factory,
                                                   spawn_options options);
  void actor_terminated(detail::local_actor& cell);
  void count_restart() noexcept { restarts_.fetch_add(1, std::memory_order_relaxed); }
  void count_blocked_send() noexcept { blocked_sends_.fetch_add(1, std::memory_order_relaxed); }
  detail::manual_scheduler& manual();
  detail::scheduler& scheduler_for(bool blocking);

  actor_system_config config_;
  std::size_t workers_ = 0;
  std::shared_ptr<clock> clock_;
  std::unique_ptr<timer_service> timers_;
  std::unique_ptr<detail::scheduler> scheduler_;
  std::mutex blocking_mutex_;
  std::unique_ptr<detail::scheduler> blocking_;  // started by the first blocking spawn

  std::atomic<std::uint64_t> next_id_{1};
  std::atomic<std::uint64_t> spawned_{0}, terminated_{0}, restarts_{0}, dead_letters_{0}, blocked_sends_{0};

  mutable std::mutex registry_mutex_;
  std::condition_variable all_terminated_;
  std::unordered_map<std::uint64_t, detail::intrusive_ptr<abstract_actor>> registry_;
  bool shutting_down_ = false;
  std::atomic<bool> shut_down_{false};

  std::mutex dead_letter_mutex_;
  std::shared_ptr<std::function<void(const dead_letter&)>> dead_letter_observer_;
};

}  // namespace flexsp::core
