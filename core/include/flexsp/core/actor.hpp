#pragma once
/// \file
/// Writing actors.
///
/// An actor is a class deriving from `actor<Self>` with one public `handle` overload per
/// message type it accepts. The return type of `handle` is the reply to an `ask`: void, a
/// value, `expected<T>` to reply with an error, or `deferred<T>` to reply later:
///
/// ```
/// struct add { int n; };
/// struct get_total {};
/// struct total_at_least { int n; };
/// class counter : public flexsp::core::actor<counter> {
/// public:
///   void handle(const add& m) {
///     total_ += m.n;
///     if (waiter_.valid() && total_ >= waiting_for_) waiter_.deliver(total_);
///   }
///   int handle(get_total) { return total_; }
///   flexsp::core::deferred<int> handle(const total_at_least& m) {  // an ask yields int
///     waiting_for_ = m.n;
///     waiter_ = respond_later<int>();
///     return waiter_;
///   }
///   void on_start() override { tick_ = send_every(std::chrono::seconds{1}, add{0}); }
/// private:
///   int total_ = 0, waiting_for_ = 0;
///   flexsp::core::deferred<int> waiter_;
///   flexsp::core::timer_handle tick_;
/// };
/// auto c = system.spawn<counter>();
/// c.tell(add{2});                                   // compile error for a type counter lacks
/// flexsp::expected<int> t = c.ask(get_total{}, std::chrono::seconds{1}).get();
/// ```
///
/// The runtime calls handlers and hooks one at a time per actor (run-to-completion), always
/// with a happens-before edge between consecutive calls, so actor state needs no locks even
/// though calls may run on different worker threads. A handler must not block for long: it
/// holds a worker thread. Everything in `actor_base` marked "own thread" may only be called
/// from the actor's own handlers and hooks.
///
/// Failure: an exception escaping a handler or hook is caught by the runtime. The failing
/// message is dropped (an ask with it completes with errc::failed), and the actor is restarted
/// (a fresh instance built from the spawn arguments, `on_restart` called) if its restart policy
/// allows, otherwise it terminates with exit_reason::exception.

#include <chrono>
#include <functional>
#include <memory>
#include <type_traits>
#include <utility>

#include "flexsp/core/actor_ref.hpp"
#include "flexsp/core/ask.hpp"
#include "flexsp/core/clock.hpp"
#include "flexsp/core/message.hpp"
#include "flexsp/core/timer.hpp"

namespace flexsp::core {

class actor_system;
namespace detail {
class local_actor;
}

/// Non-template base of every actor: lifecycle hooks and the actor's own-thread services.
class actor_base {
public:
  actor_base() = default;
  actor_base(const actor_base&) = delete;
  actor_base& operator=(const actor_base&) = delete;
  virtual ~actor_base() = default;

  /// Runs before the first message (also for messages sent before spawn returned).
  virtual void on_start() {}
  /// Runs once when the actor terminates, for every reason, before its down notices go out.
  /// Not run for an instance replaced by a restart (that instance is just destroyed).
  virtual void on_stop(exit_reason reason) { (void)reason; }
  /// Runs on the fresh instance after a restart caused by `cause`, instead of `on_start`.
  /// The default calls `on_start()`.
  virtual void on_restart(const error& cause) {
    (void)cause;
    on_start();
  }
  /// A monitored actor terminated. The default sends the notice to the dead-letter log.
  virtual void on_down(const down_msg& msg);
  /// A linked actor terminated. The default terminates this actor too (reason `linked`) unless
  /// the partner stopped normally; override to trap exits.
  virtual void on_exit(const exit_msg& msg);

  /// The system running this actor. Own thread (or after spawn returned).
  actor_system& system() const noexcept;
  /// An untyped reference to this actor.
  any_ref address() const;
  /// Terminates this actor after the current handler returns; queued messages go to dead
  /// letters. Own thread.
  void quit(exit_reason reason = exit_reason::normal);
  /// Watches `other`: `on_down` runs exactly once when it terminates (at once if it already
  /// has). Own thread.
  void monitor(const any_ref& other);
  /// Cancels one earlier `monitor(other)`. A notice already queued is still delivered.
  void demonitor(const any_ref& other);
  /// Links both ways: each gets `on_exit` when the other terminates. Own thread.
  void link(const any_ref& other);
  void unlink(const any_ref& other);
  /// The system clock's current time.
  time_point now() const noexcept;
  /// How many times this actor has been restarted (0 for the first instance).
  std::uint32_t incarnation() const noexcept;

protected:
  /// Schedules `make()` to be sent to this actor after `delay`, then every `period` when it is
  /// positive. The timer is cancelled automatically when the actor restarts or terminates.
  timer_handle schedule_self(duration delay, duration period, std::function<message_ptr()> make);

private:
  friend class detail::local_actor;
  friend detail::reply_slot& detail::current_reply_slot(actor_base&) noexcept;
  detail::local_actor* cell_ = nullptr;
  detail::reply_slot reply_slot_;
};

namespace detail {

template <class R, class F>
class request_state;

template <class R, class F>
struct response_message final : message {
  explicit response_message(intrusive_ptr<request_state<R, F>> s)
      : message{&vtable_for<response_message>::value, /*system=*/true}, state{std::move(s)} {}
  static constexpr std::string_view payload_name() noexcept { return type_name<expected<R>>(); }
  static void invoke(actor_base& self, message& m) { static_cast<response_message&>(m).state->deliver(self); }
  intrusive_ptr<request_state<R, F>> state;
};

template <class R, class F>
class request_state final : public ask_state<R> {
public:
  request_state(intrusive_ptr<abstract_actor> requester, std::uint32_t incarnation, F f)
      : requester_{std::move(requester)}, incarnation_{incarnation}, f_{std::move(f)} {}

  void deliver(actor_base& self) {
    // A reply addressed to an instance that a restart replaced would run a callback bound to a
    // destroyed object.
    if (self.incarnation() != incarnation_) return;
    f_(this->take());
  }

private:
  void on_ready() override {
    auto requester = std::move(requester_);
    (void)requester->enqueue(message_ptr{new response_message<R, F>(intrusive_ptr<request_state>{this})});
  }
  intrusive_ptr<abstract_actor> requester_;
  std::uint32_t incarnation_;
  F f_;
};

}  // namespace detail

/// Base class of an actor class `Self` (CRTP): typed self reference, timers, requests.
template <class Self>
class actor : public actor_base {
public:
  /// A typed reference to this actor.
  actor_ref<Self> self() const { return actor_ref<Self>{address().ptr()}; }

protected:
  /// Sends `msg` to self after `delay`. M must be copyable. Own thread.
  template <class M>
    requires handles<Self, std::decay_t<M>>
  timer_handle send_after(duration delay, M&& msg) {
    return schedule_self(delay, duration::zero(), message_factory(std::forward<M>(msg)));
  }
  /// Sends `msg` to self every `period` (> 0), the first time one period from now. Own thread.
  template <class M>
    requires handles<Self, std::decay_t<M>>
  timer_handle send_every(duration period, M&& msg) {
    FLEXSP_EXPECTS(period > duration::zero(), "send_every needs a positive period");
    return schedule_self(period, period, message_factory(std::forward<M>(msg)));
  }

  /// Asks `target` without blocking: `on_reply(expected<reply_t<A, M>>)` later runs as a
  /// message of this actor (so it may touch actor state), with the reply or the error of
  /// `actor_ref::ask`. If this actor restarted or terminated meanwhile, the reply is dropped.
  /// `timeout == duration::max()` means no deadline. Own thread.
  template <class A, class M, class F>
    requires handles<A, std::decay_t<M>> && std::is_invocable_v<F&, expected<reply_t<A, std::decay_t<M>>>&&>
  void request(const actor_ref<A>& target, M&& msg, duration timeout, F&& on_reply) {
    using R = reply_t<A, std::decay_t<M>>;
    auto state = detail::make_intrusive<detail::request_state<R, std::decay_t<F>>>(address().ptr(), incarnation(),
                                                                                  std::forward<F>(on_reply));
    target.send_request(std::forward<M>(msg), timeout, detail::intrusive_ptr<ask_state<R>>{state});
  }

  /// Inside a handler that returns `deferred<R>`: takes the reply of the ask being handled, to
  /// deliver later (from this or any thread). When the handler runs for a `tell`, returns an
  /// empty deferred whose deliver does nothing. Precondition (precondition_error): R is the
  /// handler's reply type. Own thread.
  template <class R>
  deferred<R> respond_later() {
    detail::reply_slot& slot = detail::current_reply_slot(*this);
    if (!slot.state) return deferred<R>{};
    FLEXSP_EXPECTS(slot.type == detail::type_tag<R>(), "respond_later<{}> does not match the handler's reply type",
                   type_name<R>());
    FLEXSP_EXPECTS(!slot.taken, "respond_later called twice in one handler");
    slot.taken = true;
    return deferred<R>{detail::intrusive_ptr<ask_state<R>>{static_cast<ask_state<R>*>(slot.state)}};
  }

private:
  template <class M>
  static std::function<message_ptr()> message_factory(M&& msg) {
    return [m = std::decay_t<M>(std::forward<M>(msg))]() {
      return message_ptr{new detail::tell_message<Self, std::decay_t<M>>(m)};
    };
  }
};

}  // namespace flexsp::core
