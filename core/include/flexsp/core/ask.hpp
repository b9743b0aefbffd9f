#pragma once
/// \file
/// The reply side of request/response: a one-shot result slot shared by the request message,
/// its timeout timer and the requester.

#include <atomic>
#include <cstdint>
#include <optional>
#include <utility>

#include "flexsp/core/check.hpp"
#include "flexsp/core/detail/intrusive_ptr.hpp"
#include "flexsp/core/error.hpp"
#include "flexsp/core/timer.hpp"

namespace flexsp::core {

/// A one-shot result: the first `complete` wins (reply, timeout or failure), later ones are
/// ignored. Thread-safe.
template <class R>
class ask_state : public detail::ref_counted {
public:
  using result_type = expected<R>;

  /// Stores `v` if nothing was stored yet; returns whether it did.
  bool complete(result_type&& v) {
    std::uint32_t s = kEmpty;
    if (!state_.compare_exchange_strong(s, kWriting, std::memory_order_acq_rel)) return false;
    value_.emplace(std::move(v));
    state_.store(kReady, std::memory_order_release);
    state_.notify_all();
    timeout_.cancel();
    on_ready();
    return true;
  }
  bool ready() const noexcept { return state_.load(std::memory_order_acquire) == kReady; }
  /// Blocks the calling thread until a result is stored.
  void wait() const noexcept {
    for (auto s = state_.load(std::memory_order_acquire); s != kReady; s = state_.load(std::memory_order_acquire))
      state_.wait(s, std::memory_order_acquire);
  }
  /// Waits, then moves the result out. Call at most once.
  result_type take() {
    wait();
    FLEXSP_EXPECTS(value_.has_value(), "the result of a request was already taken");
    result_type out = std::move(*value_);
    value_.reset();
    return out;
  }
  /// Arms the timeout; must happen before the request is sent.
  void set_timeout(timer_handle h) { timeout_ = std::move(h); }

protected:
  /// Runs once, on the completing thread, right after the result is stored.
  virtual void on_ready() {}

private:
  static constexpr std::uint32_t kEmpty = 0, kWriting = 1, kReady = 2;
  std::atomic<std::uint32_t> state_{kEmpty};
  std::optional<result_type> value_;
  timer_handle timeout_;
};

/// A reply promised by a handler that answers later (after asking other actors, or when an
/// event arrives). A handler declares it by returning `deferred<R>` — the ask then yields R —
/// and gets one from `actor<Self>::respond_later<R>()`. Copyable; all copies share one reply.
/// If every copy is destroyed without a delivery, the request fails with errc::failed.
template <class R>
class deferred {
public:
  deferred() = default;
  explicit deferred(detail::intrusive_ptr<ask_state<R>> state) : holder_{detail::make_intrusive<holder>()} {
    holder_->state = std::move(state);
  }
  /// Completes the request with `v` (a value or an error). Thread-safe; the first delivery
  /// wins. False for an empty deferred (the handler ran for a `tell`) or a completed request.
  bool deliver(expected<R> v) const {
    return holder_ && holder_->state && holder_->state->complete(std::move(v));
  }
  /// True when a requester is waiting for this reply.
  bool valid() const noexcept { return holder_ && holder_->state; }

private:
  struct holder : detail::ref_counted {
    detail::intrusive_ptr<ask_state<R>> state;
    ~holder() override {
      if (state && !state->ready())
        state->complete(unexpected<error>{error{errc::failed, "the handler dropped its deferred reply"}});
    }
  };
  detail::intrusive_ptr<holder> holder_;
};

namespace detail {
/// A unique address per type, to check a type-erased reply slot.
template <class T>
const void* type_tag() noexcept {
  static const char tag = 0;
  return &tag;
}
}  // namespace detail

/// The caller's handle on an `ask`. Move-only; `get` may be called once.
template <class R>
class pending {
public:
  pending() = default;
  explicit pending(detail::intrusive_ptr<ask_state<R>> s) : state_{std::move(s)} {}

  /// True once a reply, an error or the timeout arrived (never blocks).
  bool ready() const noexcept { return state_ && state_->ready(); }
  /// Blocks until the result is there and returns it. With a manual scheduler or a manual
  /// clock, first run the scheduler / advance the clock until `ready()`, or this never returns.
  [[nodiscard]] expected<R> get() {
    FLEXSP_EXPECTS(state_, "get on an empty pending");
    auto s = std::move(state_);
    return s->take();
  }

private:
  detail::intrusive_ptr<ask_state<R>> state_;
};

}  // namespace flexsp::core
