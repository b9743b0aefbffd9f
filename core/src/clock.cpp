#include "flexsp/core/clock.hpp"

#include <algorithm>

#include "flexsp/core/check.hpp"

namespace flexsp::core {

manual_clock::manual_clock(time_point start) noexcept : now_ns_{start.time_since_epoch().count()} {}

time_point manual_clock::now() const noexcept {
  return time_point{duration{now_ns_.load(std::memory_order_acquire)}};
}

void manual_clock::advance(duration d) {
  FLEXSP_EXPECTS(d >= duration::zero(), "manual_clock::advance by a negative duration ({} ns)", d.count());
  std::lock_guard lock{mutex_};
  const time_point target = now() + d;
  // Step from deadline to deadline so that every callback observes now() == its deadline and
  // timers of different services interleave in deadline order.
  for (;;) {
    time_point next = time_point::max();
    for (auto& [token, fire_due] : listeners_) next = std::min(next, fire_due(now()));
    if (next > target) break;
    now_ns_.store(std::max(next, now()).time_since_epoch().count(), std::memory_order_release);
  }
  now_ns_.store(target.time_since_epoch().count(), std::memory_order_release);
}

std::uint64_t manual_clock::subscribe(listener on_advance) {
  std::lock_guard lock{mutex_};
  listeners_.emplace_back(next_token_, std::move(on_advance));
  return next_token_++;
}

void manual_clock::unsubscribe(std::uint64_t token) {
  std::lock_guard lock{mutex_};
  std::erase_if(listeners_, [token](const auto& l) { return l.first == token; });
}

}  // namespace flexsp::core
