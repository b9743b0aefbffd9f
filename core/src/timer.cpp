#include "flexsp/core/timer.hpp"

#include <algorithm>

namespace flexsp::core {

void timer_handle::cancel() noexcept {
  if (state_) state_->done.store(true, std::memory_order_release);
}

bool timer_handle::active() const noexcept { return state_ && !state_->done.load(std::memory_order_acquire); }

timer_service::timer_service(clock& clk) : clock_{clk} {
  if (clk.is_manual()) {
    manual_token_ = static_cast<manual_clock&>(clk).subscribe([this](time_point now) { return fire_due(now); });
  } else {
    thread_ = std::thread{[this] { run_thread(); }};
  }
}

timer_service::~timer_service() { stop(); }

timer_handle timer_service::schedule(time_point deadline, duration period, callback fn) {
  auto state = std::make_shared<timer_handle::state>();
  bool wake = false;
  {
    std::lock_guard lock{mutex_};
    if (stopped_) {
      state->done.store(true, std::memory_order_relaxed);
      return timer_handle{std::move(state)};
    }
    if (heap_.size() >= prune_at_) prune_locked();
    heap_.push_back(entry{deadline, next_seq_++, period, state, std::make_shared<callback>(std::move(fn))});
    std::push_heap(heap_.begin(), heap_.end(), later{});
    wake = heap_.front().seq == next_seq_ - 1;
  }
  if (wake && thread_.joinable()) wake_.notify_one();
  return timer_handle{std::move(state)};
}

void timer_service::prune_locked() {
  std::erase_if(heap_, [](const entry& e) { return e.state->done.load(std::memory_order_acquire); });
  std::make_heap(heap_.begin(), heap_.end(), later{});
  prune_at_ = std::max<std::size_t>(1024, 2 * heap_.size());
}

time_point timer_service::fire_due(time_point now) {
  std::unique_lock lock{mutex_};
  while (!heap_.empty() && !stopped_) {
    entry& top = heap_.front();
    if (top.state->done.load(std::memory_order_acquire)) {
      std::pop_heap(heap_.begin(), heap_.end(), later{});
      heap_.pop_back();
      continue;
    }
    if (top.deadline > now) return top.deadline;
    std::pop_heap(heap_.begin(), heap_.end(), later{});
    entry e = std::move(heap_.back());
    heap_.pop_back();
    lock.unlock();
    const bool keep = (*e.fn)();
    lock.lock();
    if (e.period > duration::zero() && keep && !stopped_ && !e.state->done.load(std::memory_order_acquire)) {
      e.deadline += e.period;
      if (e.deadline <= now && !clock_.is_manual()) e.deadline = now + e.period;
      e.seq = next_seq_++;
      heap_.push_back(std::move(e));
      std::push_heap(heap_.begin(), heap_.end(), later{});
    } else {
      e.state->done.store(true, std::memory_order_release);
    }
  }
  return time_point::max();
}

void timer_service::run_thread() {
  std::unique_lock lock{mutex_};
  while (!stopped_) {
    if (heap_.empty()) {
      wake_.wait(lock);
      continue;
    }
    const time_point deadline = heap_.front().deadline;
    if (deadline > clock_.now()) {
      wake_.wait_until(lock, deadline);
      continue;
    }
    lock.unlock();
    fire_due(clock_.now());
    lock.lock();
  }
}

void timer_service::stop() {
  std::vector<entry> dropped;
  {
    std::lock_guard lock{mutex_};
    if (stopped_) return;
    stopped_ = true;
    dropped.swap(heap_);
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
  if (manual_token_) static_cast<manual_clock&>(clock_).unsubscribe(manual_token_);
  for (auto& e : dropped) e.state->done.store(true, std::memory_order_release);
}

std::size_t timer_service::pending() const {
  std::lock_guard lock{mutex_};
  return heap_.size();
}

}  // namespace flexsp::core
