#include "scheduler.hpp"

#include <utility>

#include "local_actor.hpp"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define FLEXSP_CPU_RELAX() _mm_pause()
#else
#define FLEXSP_CPU_RELAX() std::this_thread::yield()
#endif

namespace flexsp::core::detail {
namespace {
// A searching worker polls this many rounds (the first few with a pause, then yielding the
// core) before it sleeps. Long enough to catch the next request of a request/reply exchange,
// short enough not to starve other processes on a small machine.
constexpr int kSearchRounds = 64;
constexpr int kPauseRounds = 16;
// Every this many turns a worker looks at its queues before its next slot, so two actors
// bouncing messages through the slot cannot starve the others.
constexpr std::uint32_t kFairnessInterval = 61;
}  // namespace

thread_local thread_pool* thread_pool::tl_pool_ = nullptr;
thread_local thread_pool::worker* thread_pool::tl_worker_ = nullptr;

thread_pool::thread_pool(std::size_t workers, std::size_t throughput, bool sharing, bool blocking)
    : throughput_{throughput}, sharing_{sharing}, blocking_{blocking} {
  workers_.reserve(workers);
  for (std::size_t i = 0; i < workers; ++i) {
    workers_.push_back(std::make_unique<worker>());
    workers_.back()->index = i;
  }
  for (auto& w : workers_) w->thread = std::thread{[this, wp = w.get()] { run(*wp); }};
}

thread_pool::~thread_pool() { stop(); }

void thread_pool::schedule(local_actor* a) {
  if (tl_pool_ == this && !sharing_) {
    worker& w = *tl_worker_;
    local_actor* displaced = std::exchange(w.next, a);
    if (!displaced) return;
    push_local(w, displaced);
  } else {
    push_global(a);
  }
  notify();
}

void thread_pool::push_global(local_actor* a) {
  std::lock_guard lock{global_mutex_};
  global_.push_back(a);
  global_size_.fetch_add(1, std::memory_order_relaxed);
}

void thread_pool::push_local(worker& w, local_actor* a) {
  std::lock_guard lock{w.mutex};
  w.queue.push_back(a);
  w.size.fetch_add(1, std::memory_order_relaxed);
}

local_actor* thread_pool::pop_local(worker& w) {
  if (w.size.load(std::memory_order_relaxed) == 0) return nullptr;
  std::lock_guard lock{w.mutex};
  if (w.queue.empty()) return nullptr;
  local_actor* a = w.queue.front();
  w.queue.pop_front();
  w.size.fetch_sub(1, std::memory_order_relaxed);
  return a;
}

local_actor* thread_pool::pop_global() {
  if (global_size_.load(std::memory_order_relaxed) == 0) return nullptr;
  std::lock_guard lock{global_mutex_};
  if (global_.empty()) return nullptr;
  local_actor* a = global_.front();
  global_.pop_front();
  global_size_.fetch_sub(1, std::memory_order_relaxed);
  return a;
}

local_actor* thread_pool::steal(worker& thief) {
  const std::size_t n = workers_.size();
  for (std::size_t k = 1; k < n; ++k) {
    worker& victim = *workers_[(thief.index + k) % n];
    if (victim.size.load(std::memory_order_relaxed) == 0) continue;
    std::unique_lock lock{victim.mutex, std::try_to_lock};
    if (!lock || victim.queue.empty()) continue;
    local_actor* a = victim.queue.back();
    victim.queue.pop_back();
    victim.size.fetch_sub(1, std::memory_order_relaxed);
    return a;
  }
  return nullptr;
}

bool thread_pool::any_queued() const noexcept {
  if (global_size_.load(std::memory_order_seq_cst) != 0) return true;
  for (const auto& w : workers_)
    if (w->size.load(std::memory_order_seq_cst) != 0) return true;
  return false;
}

local_actor* thread_pool::search(worker& w) {
  searching_.fetch_add(1, std::memory_order_seq_cst);
  local_actor* a = nullptr;
  for (int round = 0; round < kSearchRounds && !a && !stopping_.load(std::memory_order_relaxed); ++round) {
    a = pop_global();
    if (!a) a = steal(w);
    if (!a) {
      if (round < kPauseRounds)
        for (int i = 0; i < 32; ++i) FLEXSP_CPU_RELAX();
      else
        std::this_thread::yield();
    }
  }
  // The last searcher to find work hands the search on, so a burst of work wakes sleepers one
  // at a time instead of all at once.
  if (searching_.fetch_sub(1, std::memory_order_seq_cst) == 1 && a && any_queued()) notify();
  return a;
}

void thread_pool::notify() {
  // Read-modify-writes, not loads: each reads the latest value and synchronises with the
  // searcher's decrement / the sleeper's increment, so a worker that goes to sleep after we
  // read these counters sees the work we queued before (no lost wake-up, no fence needed).
  // A blocking pool never relies on a searcher: the work it finds may hold it for seconds.
  if ((!blocking_ && searching_.fetch_add(0, std::memory_order_acq_rel) != 0) ||
      sleeping_.fetch_add(0, std::memory_order_acq_rel) == 0)
    return;
  {
    std::lock_guard lock{park_mutex_};
    if (permits_ >= sleeping_.load(std::memory_order_relaxed)) return;
    ++permits_;
  }
  park_cv_.notify_one();
}

void thread_pool::park() {
  std::unique_lock lock{park_mutex_};
  sleeping_.fetch_add(1, std::memory_order_seq_cst);
  if (stopping_.load(std::memory_order_relaxed) || any_queued()) {
    sleeping_.fetch_sub(1, std::memory_order_seq_cst);
    return;
  }
  park_cv_.wait(lock, [this] { return permits_ > 0 || stopping_.load(std::memory_order_relaxed); });
  if (permits_ > 0) --permits_;
  sleeping_.fetch_sub(1, std::memory_order_seq_cst);
}

void thread_pool::run_actor(worker& w, local_actor* a) {
  if (a->resume(throughput_) == local_actor::resume_result::again) {
    if (sharing_)
      push_global(a);
    else
      push_local(w, a);
    notify();
  } else {
    a->release();
  }
}

void thread_pool::run(worker& w) {
  tl_pool_ = this;
  tl_worker_ = &w;
  std::uint32_t tick = 0;
  for (;;) {
    local_actor* a = nullptr;
    if (++tick == kFairnessInterval) {
      tick = 0;
      a = pop_global();
      if (!a) a = pop_local(w);
    }
    if (!a) a = std::exchange(w.next, nullptr);
    if (!a) a = pop_local(w);
    if (!a) a = pop_global();
    if (!a) a = search(w);
    if (!a) {
      if (stopping_.load(std::memory_order_acquire)) break;
      park();
      continue;
    }
    // About to block in a handler: whatever else is queued goes to another worker.
    if (blocking_ && any_queued()) notify();
    run_actor(w, a);
  }
  tl_pool_ = nullptr;
  tl_worker_ = nullptr;
}

void thread_pool::stop() {
  if (stopped_) return;
  stopped_ = true;
  {
    std::lock_guard lock{park_mutex_};
    stopping_.store(true, std::memory_order_release);
  }
  park_cv_.notify_all();
  for (auto& w : workers_)
    if (w->thread.joinable()) w->thread.join();
  // Only terminated actors can be left (shutdown waits for every actor first); drop the
  // scheduling references they still hold.
  for (auto& w : workers_) {
    if (w->next) w->next->release();
    for (local_actor* a : w->queue) a->release();
    w->queue.clear();
  }
  for (local_actor* a : global_) a->release();
  global_.clear();
}

manual_scheduler::~manual_scheduler() { stop(); }

void manual_scheduler::schedule(local_actor* a) {
  std::lock_guard lock{mutex_};
  ready_.push_back(a);
}

bool manual_scheduler::step() {
  local_actor* a = nullptr;
  {
    std::lock_guard lock{mutex_};
    if (ready_.empty()) return false;
    a = ready_.front();
    ready_.pop_front();
  }
  if (a->resume(1) == local_actor::resume_result::again)
    schedule(a);
  else
    a->release();
  return true;
}

void manual_scheduler::stop() {
  std::deque<local_actor*> left;
  {
    std::lock_guard lock{mutex_};
    left.swap(ready_);
  }
  for (local_actor* a : left) a->release();
}

}  // namespace flexsp::core::detail
