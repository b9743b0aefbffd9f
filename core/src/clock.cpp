#include "flexsp/core/clock.hpp"

#include <algorithm>
#include <ctime>

#include <fmt/format.h>

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

std::int64_t unix_ms() noexcept {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string utc_timestamp(std::int64_t ms) {
  const std::time_t secs = static_cast<std::time_t>(ms >= 0 ? ms / 1000 : (ms - 999) / 1000);
  std::tm t{};
  ::gmtime_r(&secs, &t);
  return fmt::format("{:04d}-{:02d}-{:02d}T{:02d}:{:02d}:{:02d}.{:03d}Z", t.tm_year + 1900, t.tm_mon + 1, t.tm_mday,
                     t.tm_hour, t.tm_min, t.tm_sec, static_cast<int>(ms - static_cast<std::int64_t>(secs) * 1000));
}

}  // namespace flexsp::core
