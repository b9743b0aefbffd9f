#pragma once
/// \file
/// References to actors.
///
/// An actor is reached only through a reference to its control block (`abstract_actor`), never
/// through the actor object. Today every control block is a local actor; a transport can add a
/// proxy control block that serialises what `enqueue` receives (each message names its payload
/// type) and the same `ref.tell(msg)` works across processes.
///
/// - `any_ref`: untyped; identity, ordering, hashing, stop/kill, monitoring. Cannot send.
/// - `actor_ref<A>`: typed by the actor class; `tell`/`ask` accept exactly the message types
///   `A` has a `handle(...)` overload for — anything else is a compile error.
/// Both are one pointer wide; copying is one atomic increment; equality compares identity.
/// A reference keeps the control block alive, not the actor: actors live until stopped. A
/// reference must not be used to send after its actor system has been destroyed.

#include <chrono>
#include <compare>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include "flexsp/core/ask.hpp"
#include "flexsp/core/check.hpp"
#include "flexsp/core/detail/intrusive_ptr.hpp"
#include "flexsp/core/error.hpp"
#include "flexsp/core/message.hpp"
#include "flexsp/core/timer.hpp"

namespace flexsp::core {

class actor_base;
class any_ref;

/// Why an actor terminated.
enum class exit_reason : std::uint8_t {
  normal,     ///< It stopped itself (`quit()`) or was stopped (`stop`).
  exception,  ///< A handler or hook threw and no restart was left.
  killed,     ///< `kill()`: stopped after its current message, the mailbox discarded.
  linked,     ///< A linked actor terminated abnormally.
  shutdown,   ///< The actor system shut down.
  /// A remote actor's process cannot be reached: the connection to it was lost, or its node
  /// was declared dead. `down_msg::what` says which.
  unreachable,
};
std::string_view to_string(exit_reason r) noexcept;

/// How `stop` treats messages already queued.
enum class stop_mode : std::uint8_t {
  /// Messages queued before the stop request are handled first; later ones go to dead letters.
  drain,
  /// The actor stops after its current message; every queued message goes to dead letters
  /// (pending asks complete with errc::disconnected).
  discard,
};

/// How one actor watches another.
enum class watch_kind : std::uint8_t { monitor, link };

/// The control block every reference points at. Thread-safe.
class abstract_actor : public detail::ref_counted {
public:
  /// Unique within one actor system; never reused.
  std::uint64_t id() const noexcept { return id_; }
  /// Name given at spawn (defaults to the actor's type name).
  const std::string& name() const noexcept { return name_; }

  /// Queues `m`. On failure `m` went to the dead-letter log, its reply (if any) was failed with
  /// the same error, and the error says why: errc::disconnected (actor terminated) or
  /// errc::overloaded (bounded mailbox full, reject policy).
  virtual expected<void> enqueue(message_ptr m) = 0;
  /// Requests termination with reason `normal`; see stop_mode. Idempotent.
  virtual void stop(stop_mode mode) = 0;
  /// Requests termination with reason `killed`, discarding the mailbox.
  virtual void kill() = 0;
  /// False once the actor has terminated (its down notices are then being or were sent).
  virtual bool alive() const noexcept = 0;
  /// Registers `watcher` to receive a down notice (monitor) or an exit signal (link) when this
  /// actor terminates; if it already has, the notice is sent at once.
  virtual void attach(detail::intrusive_ptr<abstract_actor> watcher, watch_kind kind) = 0;
  /// Registers a callback run once (on the terminating thread) with the down notice.
  virtual void attach(std::function<void(const struct down_msg&)> callback) = 0;
  /// Removes one registration made by `watcher` of the given kind, if any.
  virtual void detach(const abstract_actor* watcher, watch_kind kind) = 0;
  /// Timers of the actor's system (request timeouts use them).
  virtual timer_service& timers() const noexcept = 0;

protected:
  abstract_actor(std::uint64_t id, std::string name) : id_{id}, name_{std::move(name)} {}

private:
  std::uint64_t id_;
  std::string name_;
};

/// An untyped reference: identity and lifecycle, no sending. Empty when default-constructed.
class any_ref {
public:
  any_ref() = default;
  explicit any_ref(detail::intrusive_ptr<abstract_actor> p) noexcept : ptr_{std::move(p)} {}

  bool valid() const noexcept { return static_cast<bool>(ptr_); }
  explicit operator bool() const noexcept { return valid(); }
  /// 0 for an empty reference.
  std::uint64_t id() const noexcept { return ptr_ ? ptr_->id() : 0; }
  /// The spawn name; "" for an empty reference.
  std::string_view name() const noexcept { return ptr_ ? std::string_view{ptr_->name()} : std::string_view{}; }
  bool alive() const noexcept { return ptr_ && ptr_->alive(); }

  /// Graceful stop (default: drain). No-op on an empty reference or a dead actor.
  void stop(stop_mode mode = stop_mode::drain) const {
    if (ptr_) ptr_->stop(mode);
  }
  /// Stops the actor after its current message with reason `killed`.
  void kill() const {
    if (ptr_) ptr_->kill();
  }

  abstract_actor* get() const noexcept { return ptr_.get(); }
  const detail::intrusive_ptr<abstract_actor>& ptr() const noexcept { return ptr_; }

  friend bool operator==(const any_ref& a, const any_ref& b) noexcept { return a.ptr_.get() == b.ptr_.get(); }
  friend std::strong_ordering operator<=>(const any_ref& a, const any_ref& b) noexcept {
    return a.id() <=> b.id();
  }

private:
  detail::intrusive_ptr<abstract_actor> ptr_;
};

/// Sent to a monitoring actor (`on_down`) when the watched actor terminates. Exactly one
/// per monitor registration.
struct down_msg {
  any_ref source;
  exit_reason reason;
  /// For `exception`: what the handler threw. Empty otherwise.
  std::string what;
};

/// Sent to a linked actor (`on_exit`) when its partner terminates.
struct exit_msg {
  any_ref source;
  exit_reason reason;
};

/// The messages an actor class accepts, declared once in the class:
/// `using interface = flexsp::core::interface<join_job, step_plan, commit_step>;`. References
/// to an actor with an interface accept exactly those types (each also needs a `handle`
/// overload); the ones with a wire codec can be sent from other processes (remote.hpp).
template <class... Ms>
struct interface {};

namespace detail {
template <class M, class I>
inline constexpr bool in_interface_v = false;
template <class M, class... Ms>
inline constexpr bool in_interface_v<M, interface<Ms...>> = (std::is_same_v<M, Ms> || ...);
}  // namespace detail

/// True when actor class A declares its interface.
template <class A>
concept has_interface = requires { typename A::interface; };

/// True when actor class A can handle an rvalue M: a `handle` overload accepts it and, when A
/// declares an interface, M is in it.
template <class A, class M>
concept handles = requires(A& a, M&& m) { a.handle(std::move(m)); } &&
                  (!has_interface<A> || detail::in_interface_v<M, typename A::interface>);

namespace detail {
template <class R>
struct unwrap_expected {
  using type = R;
};
template <class T>
struct unwrap_expected<expected<T>> {
  using type = T;
};
template <class T>
struct unwrap_expected<deferred<T>> {
  using type = T;
};
template <class R>
inline constexpr bool is_deferred_v = false;
template <class T>
inline constexpr bool is_deferred_v<deferred<T>> = true;

/// While an ask's handler runs: its reply slot, for `respond_later`.
struct reply_slot {
  ref_counted* state = nullptr;
  const void* type = nullptr;
  bool taken = false;
};
reply_slot& current_reply_slot(actor_base& self) noexcept;
template <class A, class M>
using handler_result_t = decltype(std::declval<A&>().handle(std::declval<M&&>()));
}  // namespace detail

/// What `ask(M)` to actor A yields on success: the handler's return type, with `expected<T>`
/// unwrapped to T (its error becomes the ask's error) and `deferred<T>` to T.
template <class A, class M>
using reply_t = typename detail::unwrap_expected<detail::handler_result_t<A, M>>::type;

namespace detail {

template <class A, class M>
struct tell_message final : message {
  template <class U>
  explicit tell_message(U&& u) : message{&vtable_for<tell_message>::value}, payload(std::forward<U>(u)) {}
  static constexpr std::string_view payload_name() noexcept { return type_name<M>(); }
  static void invoke(actor_base& self, message& m) {
    (void)static_cast<A&>(self).handle(std::move(static_cast<tell_message&>(m).payload));
  }
  M payload;
};

/// The error an ask completes with when its handler throws: describes the exception in flight.
error describe_handler_exception(std::string_view message_type);

template <class A, class M>
struct ask_message final : message {
  using reply_type = reply_t<A, M>;
  using state_type = ask_state<reply_type>;

  template <class U>
  ask_message(U&& u, intrusive_ptr<state_type> r)
      : message{&vtable_for<ask_message>::value}, payload(std::forward<U>(u)), reply{std::move(r)} {}
  ask_message(const ask_message&) = delete;
  ask_message& operator=(const ask_message&) = delete;
  ~ask_message() {
    if (reply && !reply->ready())
      reply->complete(unexpected<error>{error{errc::disconnected, "the actor terminated before handling the request"}});
  }
  static constexpr std::string_view payload_name() noexcept { return type_name<M>(); }
  static void invoke(actor_base& self, message& base) {
    auto& m = static_cast<ask_message&>(base);
    auto& a = static_cast<A&>(self);
    try {
      if constexpr (std::is_void_v<handler_result_t<A, M>>) {
        a.handle(std::move(m.payload));
        m.reply->complete(expected<void>{});
      } else if constexpr (is_deferred_v<handler_result_t<A, M>>) {
        reply_slot& slot = current_reply_slot(self);
        slot = reply_slot{m.reply.get(), type_tag<reply_type>(), false};
        struct clear_slot {
          reply_slot& s;
          ~clear_slot() { s = reply_slot{}; }
        } clear{slot};
        (void)a.handle(std::move(m.payload));
        if (slot.taken)
          m.reply.reset();  // the deferred owns it now
        else
          m.reply->complete(unexpected<error>{
              error{errc::failed, fmt::format("handler for {} returned a deferred reply without respond_later",
                                              payload_name())}});
      } else {
        m.reply->complete(expected<reply_type>{a.handle(std::move(m.payload))});
      }
    } catch (...) {
      m.reply->complete(unexpected<error>{describe_handler_exception(payload_name())});
      throw;
    }
  }
  void fail(const error& why) noexcept {
    if (reply) reply->complete(unexpected<error>{why});
  }

  M payload;
  intrusive_ptr<state_type> reply;
};

}  // namespace detail

/// A reference to an actor of class A (see actor.hpp for how to write one).
template <class A>
class actor_ref : public any_ref {
public:
  actor_ref() = default;
  /// For runtime internals and transports: wraps a control block known to run an A.
  explicit actor_ref(detail::intrusive_ptr<abstract_actor> p) noexcept : any_ref{std::move(p)} {}

  /// Fire-and-forget. Never blocks except under a bounded mailbox with the `block` policy.
  /// Undeliverable messages go to the dead-letter log. Precondition: valid().
  template <class M>
    requires handles<A, std::decay_t<M>>
  void tell(M&& msg) const {
    (void)try_tell(std::forward<M>(msg));
  }

  /// Like tell, but reports failure: errc::disconnected (actor terminated) or
  /// errc::overloaded (bounded mailbox full under the reject policy).
  template <class M>
    requires handles<A, std::decay_t<M>>
  expected<void> try_tell(M&& msg) const {
    FLEXSP_EXPECTS(valid(), "tell on an empty actor_ref");
    return get()->enqueue(message_ptr{new detail::tell_message<A, std::decay_t<M>>(std::forward<M>(msg))});
  }

  /// Request/response. The returned `pending` yields the handler's result, or an error:
  /// errc::timeout after `timeout`, errc::disconnected when the actor is or becomes dead before
  /// handling it, errc::failed (errc::invalid_argument for a broken precondition) when the
  /// handler threw, errc::overloaded when a bounded mailbox rejected it, or the handler's own
  /// error when it returns `expected<T>`. Precondition: valid(). From inside an actor use
  /// `actor<D>::request` instead, which does not block a worker.
  template <class M>
    requires handles<A, std::decay_t<M>>
  auto ask(M&& msg, duration timeout) const {  // -> pending<reply_t<A, M>>; deduced so A may be incomplete here
    using R = reply_t<A, std::decay_t<M>>;
    auto state = detail::make_intrusive<ask_state<R>>();
    send_request(std::forward<M>(msg), timeout, state);
    return pending<R>{std::move(state)};
  }

  /// `ask` without a deadline: completes only with a reply or when the actor terminates.
  template <class M>
    requires handles<A, std::decay_t<M>>
  auto ask(M&& msg) const {
    return ask(std::forward<M>(msg), duration::max());
  }

  /// Runtime internal: sends `msg` with `state` as its reply slot (arming the timeout first).
  template <class M, class R>
  void send_request(M&& msg, duration timeout, const detail::intrusive_ptr<ask_state<R>>& state) const {
    FLEXSP_EXPECTS(valid(), "ask on an empty actor_ref");
    if (timeout != duration::max()) {
      state->set_timeout(get()->timers().schedule_after(timeout, [state, target = id()]() {
        state->complete(unexpected<error>{error{errc::timeout, fmt::format("no reply from actor #{} in time", target)}});
        return false;
      }));
    }
    (void)get()->enqueue(
        message_ptr{new detail::ask_message<A, std::decay_t<M>>(std::forward<M>(msg), state)});
  }
};

}  // namespace flexsp::core

template <>
struct std::hash<flexsp::core::any_ref> {
  std::size_t operator()(const flexsp::core::any_ref& r) const noexcept { return std::hash<std::uint64_t>{}(r.id()); }
};
template <class A>
struct std::hash<flexsp::core::actor_ref<A>> : std::hash<flexsp::core::any_ref> {};
