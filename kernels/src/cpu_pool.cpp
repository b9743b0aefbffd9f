#include "cpu_pool.hpp"

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

namespace flexsp::kernels::detail {
namespace {

struct job {
  const std::function<void(std::size_t, std::size_t)>* body = nullptr;
  std::size_t count = 0;
  std::atomic<std::size_t> next{0};
  std::size_t wanted = 0;  // helpers still to join (guarded by the pool mutex)
  std::size_t joined = 0;  // helpers that joined: worker slots 1..joined
  std::size_t active = 0;  // helpers still running (guarded by the pool mutex)
  std::condition_variable done;

  void work(std::size_t worker) {
    for (std::size_t i; (i = next.fetch_add(1, std::memory_order_relaxed)) < count;) (*body)(i, worker);
  }
};

class pool {
 public:
  static pool& instance() {
    static const bool registered = [] {
      // A forked child has none of the parent's workers (and perhaps a mutex taken by one):
      // it starts a fresh pool. The old one is abandoned, never destroyed.
      ::pthread_atfork(nullptr, nullptr, [] { current().store(new pool, std::memory_order_release); });
      return true;
    }();
    (void)registered;
    return *current().load(std::memory_order_acquire);
  }

  void run(std::size_t count, int threads, const std::function<void(std::size_t, std::size_t)>& body) {
    const std::size_t helpers = std::min<std::size_t>(count, static_cast<std::size_t>(std::max(1, threads))) - 1;
    if (helpers == 0) {
      for (std::size_t i = 0; i < count; ++i) body(i, 0);
      return;
    }
    job j;
    j.body = &body;
    j.count = count;
    {
      std::lock_guard lock{mutex_};
      j.wanted = helpers;
      const std::size_t cap = std::max<std::size_t>(1, std::thread::hardware_concurrency());
      while (idle_ < helpers && workers_.size() < cap) {  // grow on demand, at most one per core
        workers_.emplace_back([this] { loop(); });
        ++idle_;
      }
      queue_.push_back(&j);
    }
    wake_.notify_all();
    j.work(0);
    std::unique_lock lock{mutex_};
    if (j.wanted > 0) queue_.erase(std::find(queue_.begin(), queue_.end(), &j));  // no late joiners
    j.done.wait(lock, [&] { return j.active == 0; });
  }

 private:
  void loop() {
    std::unique_lock lock{mutex_};
    for (;;) {
      wake_.wait(lock, [&] { return !queue_.empty(); });
      job* j = queue_.front();
      const std::size_t slot = ++j->joined;
      if (--j->wanted == 0) queue_.pop_front();
      ++j->active;
      --idle_;
      lock.unlock();
      j->work(slot);
      lock.lock();
      ++idle_;
      if (--j->active == 0) j->done.notify_one();
    }
  }

  static std::atomic<pool*>& current() {
    static std::atomic<pool*> p{new pool};  // never destroyed: workers may outlive static destruction
    return p;
  }

  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<job*> queue_;
  std::vector<std::jthread> workers_;
  std::size_t idle_ = 0;
};

}  // namespace

void parallel_for(std::size_t count, int threads, const std::function<void(std::size_t, std::size_t)>& body) {
  if (count == 0) return;
  pool::instance().run(count, threads, body);
}

}  // namespace flexsp::kernels::detail
