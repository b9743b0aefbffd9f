#pragma once
/// \file
/// Time sources for the actor runtime. Timers, request timeouts and restart windows read time
/// through `clock`, so tests can inject a `manual_clock` and move time by hand instead of sleeping.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

namespace flexsp::core {

/// Monotonic time as used by every deadline in the runtime (nanosecond resolution).
using time_point = std::chrono::steady_clock::time_point;
using duration = std::chrono::steady_clock::duration;

/// A source of monotonic time. Implementations must be thread-safe.
class clock {
public:
  virtual ~clock() = default;
  /// The current time; never goes backwards.
  virtual time_point now() const noexcept = 0;
  /// True when time only moves through `manual_clock::advance` (no timer thread is needed).
  virtual bool is_manual() const noexcept { return false; }
};

/// `std::chrono::steady_clock`.
class steady_clock_source final : public clock {
public:
  time_point now() const noexcept override { return std::chrono::steady_clock::now(); }
};

/// A clock that stands still until `advance` is called. Advancing fires, on the calling
/// thread and in deadline order, every timer of every subscribed timer service that is due by
/// the new time, so timer behaviour is reproducible to the nanosecond.
class manual_clock final : public clock {
public:
  /// Starts at `start` (an arbitrary non-zero epoch by default).
  explicit manual_clock(time_point start = time_point{} + std::chrono::hours{1}) noexcept;

  time_point now() const noexcept override;
  bool is_manual() const noexcept override { return true; }

  /// Moves time forward by `d` (must be >= 0; throws precondition_error otherwise), firing due
  /// timers step by step: a periodic timer with period p fires floor(d / p) times.
  void advance(duration d);

  /// Called by timer services: `fire_due(t)` must fire every timer due at or before `t` and
  /// return the deadline of the next pending timer (or time_point::max()). Returns a token for
  /// `unsubscribe`.
  using listener = std::function<time_point(time_point)>;
  std::uint64_t subscribe(listener on_advance);
  /// Removes a listener; waits for an `advance` in progress on another thread to finish.
  void unsubscribe(std::uint64_t token);

private:
  std::atomic<std::int64_t> now_ns_;
  std::mutex mutex_;  // serialises advance() against (un)subscribe
  std::uint64_t next_token_ = 1;
  std::vector<std::pair<std::uint64_t, listener>> listeners_;
};

/// Wall-clock milliseconds since the Unix epoch (for records people read, never for deadlines).
std::int64_t unix_ms() noexcept;
/// "2026-01-31T12:34:56.789Z": the UTC time of `ms` milliseconds since the Unix epoch.
std::string utc_timestamp(std::int64_t ms);

}  // namespace flexsp::core
