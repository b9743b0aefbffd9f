#pragma once
// Run queues for local actors: a work-stealing thread pool and a hand-stepped test scheduler.

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace flexsp::core::detail {

class local_actor;

class scheduler {
public:
  virtual ~scheduler() = default;
  /// Runs `a` soon. The caller transfers one reference to `a`, which the scheduler releases
  /// when the actor goes idle or terminates.
  virtual void schedule(local_actor* a) = 0;
  /// Joins the threads (if any) and drops what is still queued. Idempotent.
  virtual void stop() = 0;
  /// True when a sender on the current thread may wait (see overflow_policy::block).
  virtual bool may_block_caller() const noexcept = 0;
};

class thread_pool final : public scheduler {
public:
  /// `sharing`: every ready actor goes through the one global queue (no local queues, no slot).
  /// `blocking`: handlers may block for long (the blocking pool): every queued actor wakes a
  /// sleeping worker at once instead of waiting for a searching worker, which may be about to
  /// run a handler that does not return for seconds.
  thread_pool(std::size_t workers, std::size_t throughput, bool sharing = false, bool blocking = false);
  ~thread_pool() override;
  void schedule(local_actor* a) override;
  void stop() override;
  bool may_block_caller() const noexcept override { return tl_pool_ != this; }

private:
  struct alignas(64) worker {
    std::mutex mutex;
    std::deque<local_actor*> queue;
    std::atomic<std::size_t> size{0};
    local_actor* next = nullptr;  // owner-only
    std::size_t index = 0;
    std::thread thread;
  };

  void run(worker& w);
  void run_actor(worker& w, local_actor* a);
  local_actor* pop_local(worker& w);
  local_actor* pop_global();
  local_actor* steal(worker& thief);
  local_actor* search(worker& w);
  void push_local(worker& w, local_actor* a);
  void push_global(local_actor* a);
  void notify();
  void park();
  bool any_queued() const noexcept;

  std::size_t throughput_;
  bool sharing_;
  bool blocking_;
  std::vector<std::unique_ptr<worker>> workers_;
  std::mutex global_mutex_;
  std::deque<local_actor*> global_;
  std::atomic<std::size_t> global_size_{0};
  std::atomic<int> searching_{0};
  std::atomic<int> sleeping_{0};
  std::mutex park_mutex_;
  std::condition_variable park_cv_;
  int permits_ = 0;
  std::atomic<bool> stopping_{false};
  bool stopped_ = false;

  static thread_local thread_pool* tl_pool_;
  static thread_local worker* tl_worker_;
};

class manual_scheduler final : public scheduler {
public:
  ~manual_scheduler() override;
  void schedule(local_actor* a) override;
  void stop() override;
  bool may_block_caller() const noexcept override { return false; }

  /// Handles at most one message of the actor at the front of the queue; false when empty.
  bool step();

private:
  std::mutex mutex_;
  std::deque<local_actor*> ready_;
};

}  // namespace flexsp::core::detail
