#pragma once
/// \file
/// Actors across processes: the actor host and remote proxies.
///
/// An `actor_host` is a process's endpoint for actor messages: it listens for authenticated
/// peer channels and keeps one outgoing connection per peer process. Actors of the runtime
/// (`core::actor_system`) with a declared interface (`using interface = core::interface<...>`)
/// are location transparent: `actor_host::publish(ref)` makes one reachable, and
/// `actor_host::proxy<A>(address)` gives a `core::actor_ref<A>` to one in another process, the
/// same handle type as a local reference: `tell`, `ask`, `actor::request`, `monitor` and `link`
/// work on it, and only the interface's types compile. Message types cross processes through
/// `wire_codec<T>`, which maps a C++ type to a Cap'n Proto struct (its type id tags the payload):
/// ```
/// template <> struct wire_codec<describe_device> {
///   using schema = schema::DescribeDevice;
///   static void encode(const describe_device&, schema::Builder) {}
///   static describe_device decode(schema::Reader) { return {}; }
/// };
/// ```
/// Guarantees:
/// - Messages from one host to one actor arrive in the order they were sent (one TCP
///   connection per host pair, FIFO queues).
/// - An `ask` completes exactly once: with the reply, with errc::timeout after its deadline,
///   or with errc::disconnected as soon as the connection to the peer breaks.
/// - A monitor on a proxy gets its down notice once: with the remote actor's own exit reason
///   when it terminates (or `normal` when its host stops publishing it), or with
///   `exit_reason::unreachable` when the connection to its process is lost or the process is
///   marked dead (`mark_dead`, e.g. after the head reported its node lost). A proxy that went
///   down stays down (sends fail with errc::disconnected); ask `proxy` again for a fresh one. A
///   proxy nobody monitors does not go down with a lost connection: its next send reconnects.
///   A link through a proxy works both ways: the local actor gets an exit notice when the remote
///   one goes down (reason `unreachable` when its process is lost), and the remote actor gets one
///   when the local actor terminates or the linking process's connection breaks (`unreachable`).
///   `stop` and `kill` on a proxy do nothing: the remote actor's own process decides.
/// - After a broken connection the host reconnects on the next send, waiting an exponential
///   backoff between attempts; sends inside the backoff window, and to hosts marked dead, fail at
///   once with errc::disconnected instead of queueing.

#include <chrono>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>

#include <capnp/any.h>
#include <capnp/message.h>
#include <kj/exception.h>

#include "flexsp/actors/wire_codec.hpp"
#include "flexsp/core/actor.hpp"
#include "flexsp/core/actor_ref.hpp"
#include "flexsp/core/ask.hpp"
#include "flexsp/core/check.hpp"
#include "flexsp/core/error.hpp"
#include "flexsp/core/net/transport.hpp"

namespace flexsp::actors {

/// Where an actor lives.
struct remote_address {
  std::string host;  ///< "ip:port" of its actor_host
  std::uint64_t actor_id = 0;
  std::string to_string() const { return host + "/" + std::to_string(actor_id); }
  friend bool operator==(const remote_address&, const remote_address&) = default;
};

class actor_host;

/// Settings of an actor host.
struct actor_host_config {
  /// Where to accept peer channels (port 0: any free port).
  net::endpoint bind{"127.0.0.1", 0};
  /// Host to advertise to others; defaults to the bind host.
  std::string advertise_host;
  net::transport_config transport;
  net::backoff reconnect{std::chrono::milliseconds{50}, std::chrono::milliseconds{2000}};
};

/// A process's actor endpoint. Create with `start`; all methods are thread-safe.
class actor_host : public std::enable_shared_from_this<actor_host> {
public:
  static expected<std::shared_ptr<actor_host>> start(net::event_loop& loop, actor_host_config config);
  ~actor_host();

  /// "host:port" others use to reach this host.
  const std::string& address() const noexcept;
  net::event_loop& loop() noexcept;

  /// Makes a runtime actor with a declared interface reachable: the interface's message types
  /// that have a wire codec can be sent to it from other processes, and it can be monitored.
  /// Returns its actor id. `well_known_id` (1 to `max_well_known_id`) publishes it under that
  /// id, which others know without a lookup (the head's cluster actor); it must be free.
  template <class A>
    requires core::has_interface<A>
  std::uint64_t publish(core::actor_ref<A> ref, core::duration ask_timeout = std::chrono::seconds{30},
                        std::uint64_t well_known_id = 0);
  static constexpr std::uint64_t max_well_known_id = 15;
  /// A reference to actor `where` (published in another process), of class A: the same handle
  /// type as a local reference (see the file comment). Proxies are cached per address and class
  /// while they are up.
  template <class A>
    requires core::has_interface<A>
  core::actor_ref<A> proxy(const remote_address& where);
  /// Removes an actor; later messages to it fail with errc::not_found and its remote monitors
  /// get a down notice (reason `normal`).
  void remove(std::uint64_t actor_id);

  /// Fails every later send to `host` at once (and pending asks now) with `reason`.
  void mark_dead(const std::string& host, std::string reason);
  /// Undoes `mark_dead` (the host rejoined): the next send connects again.
  void mark_alive(const std::string& host);
  /// Closes the listener and every connection; pending asks fail with errc::cancelled.
  void stop();

  // -- used by proxies -------------------------------------------------------------------------
  using encode_fn = std::function<void(capnp::AnyPointer::Builder)>;
  using reply_fn = std::function<void(expected<capnp::AnyPointer::Reader>, std::uint64_t type_id)>;
  /// Answers one inbound ask, later and from any thread; call once. `encode` may be null
  /// (a void reply or an error).
  using reply_sink = std::function<void(expected<void> status, std::uint64_t type_id, const encode_fn& encode)>;
  /// Dispatch of an actor that answers asynchronously; `sink` is null for a tell.
  using async_dispatch_fn =
      std::function<expected<void>(std::uint64_t type_id, capnp::AnyPointer::Reader payload, reply_sink* sink)>;
  expected<void> send(const remote_address& to, std::uint64_t type_id, const encode_fn& encode);
  void request(const remote_address& to, std::uint64_t type_id, const encode_fn& encode,
               std::chrono::milliseconds timeout, reply_fn done);

  struct impl;
  /// One message type a proxy can carry (see detail::proxy_table_of).
  struct proxy_entry {
    std::uint64_t type_id = 0;
    /// Encodes the payload of a message whose vtable this entry was made for.
    void (*encode)(const core::message& m, capnp::AnyPointer::Builder b) = nullptr;
    /// For asks: takes the reply slot out of the message; the result completes it from a wire reply.
    reply_fn (*take_reply)(core::message& m) = nullptr;
  };
  using proxy_table = std::vector<std::pair<const core::message_vtable*, proxy_entry>>;

  /// Asks `where`'s host for a down notice for `proxy` (a proxy's first monitor or link).
  void watch(const remote_address& where, core::abstract_actor& proxy);
  enum class link_op : std::uint8_t { link, unlink, exit };
  /// Relays a link between a local actor and `where` (`source`: the proxy's id): register or
  /// remove it there, or deliver the local actor's exit signal with `reason`.
  void relay_link(const remote_address& where, std::uint64_t source, link_op op,
                  core::exit_reason reason = core::exit_reason::normal);

private:
  std::uint64_t add_async_actor(async_dispatch_fn fn, core::any_ref target, std::uint64_t well_known_id);
  core::detail::intrusive_ptr<core::abstract_actor> make_proxy(const remote_address& where, const proxy_table& table);
  explicit actor_host(std::unique_ptr<impl> i);
  std::unique_ptr<impl> impl_;
};

// ---------------------------------------------------------------------------------------------
// implementation of the templates

namespace detail {
// Decodes a reply payload into R (or void) and completes `state`.
template <class R>
void complete_from_wire(core::ask_state<R>& state, expected<capnp::AnyPointer::Reader> r, std::uint64_t type_id) {
  if (!r) {
    state.complete(unexpected<error>{std::move(r).error()});
    return;
  }
  if constexpr (std::is_void_v<R>) {
    state.complete(expected<void>{});
  } else {
    if (type_id != wire_type_id<R>()) {
      state.complete(make_error(errc::protocol, "reply has type {:#018x}, expected {:#018x}", type_id, wire_type_id<R>()));
      return;
    }
    try {
      state.complete(expected<R>{wire_codec<R>::decode(r->getAs<typename wire_codec<R>::schema>())});
    } catch (const kj::Exception& e) {
      state.complete(make_error(errc::protocol, "malformed reply: {}", e.getDescription().cStr()));
    }
  }
}

// An ask_state that sends its result back over the wire once the runtime completes it.
template <class R>
class wire_reply_state final : public core::ask_state<R> {
public:
  explicit wire_reply_state(actor_host::reply_sink sink) : sink_{std::move(sink)} {}

protected:
  void on_ready() override {
    auto r = this->take();
    if (!r) {
      sink_(unexpected<error>{std::move(r).error()}, 0, {});
    } else if constexpr (std::is_void_v<R>) {
      sink_(expected<void>{}, 0, {});
    } else {
      const R& value = *r;
      sink_(expected<void>{}, wire_type_id<R>(), [&value](capnp::AnyPointer::Builder b) {
        wire_codec<R>::encode(value, b.initAs<typename wire_codec<R>::schema>());
      });
    }
  }

private:
  actor_host::reply_sink sink_;
};

template <class A, class M>
bool forward_one(const core::actor_ref<A>& ref, core::duration timeout, std::uint64_t type_id,
                 capnp::AnyPointer::Reader payload, actor_host::reply_sink* sink, expected<void>& result) {
  if (type_id != wire_type_id<M>()) return false;
  M m = wire_codec<M>::decode(payload.getAs<typename wire_codec<M>::schema>());
  if (!sink) {
    result = ref.try_tell(std::move(m));
    return true;
  }
  using R = core::reply_t<A, M>;
  static_assert(std::is_void_v<R> || wire_message<R>, "the reply type of a published handler needs a wire_codec");
  core::detail::intrusive_ptr<core::ask_state<R>> state = core::detail::make_intrusive<wire_reply_state<R>>(std::move(*sink));
  ref.send_request(std::move(m), timeout, state);
  return true;
}
}  // namespace detail

namespace detail {
template <class A, class M>
bool forward_if_wire(const core::actor_ref<A>& ref, core::duration timeout, std::uint64_t type_id,
                     capnp::AnyPointer::Reader payload, actor_host::reply_sink* sink, expected<void>& result) {
  if constexpr (wire_message<M>)
    return forward_one<A, M>(ref, timeout, type_id, payload, sink, result);
  else
    return false;
}

template <class A, class M>
void add_proxy_entries(actor_host::proxy_table& t) {
  if constexpr (wire_message<M>) {
    using tell_t = core::detail::tell_message<A, M>;
    actor_host::proxy_entry tell;
    tell.type_id = wire_type_id<M>();
    tell.encode = [](const core::message& m, capnp::AnyPointer::Builder b) {
      wire_codec<M>::encode(static_cast<const tell_t&>(m).payload, b.initAs<typename wire_codec<M>::schema>());
    };
    t.emplace_back(&core::detail::vtable_for<tell_t>::value, tell);
    using R = core::reply_t<A, M>;
    if constexpr (std::is_void_v<R> || wire_message<R>) {
      using ask_t = core::detail::ask_message<A, M>;
      actor_host::proxy_entry ask;
      ask.type_id = wire_type_id<M>();
      ask.encode = [](const core::message& m, capnp::AnyPointer::Builder b) {
        wire_codec<M>::encode(static_cast<const ask_t&>(m).payload, b.initAs<typename wire_codec<M>::schema>());
      };
      ask.take_reply = [](core::message& m) -> actor_host::reply_fn {
        auto state = std::move(static_cast<ask_t&>(m).reply);
        return [state](expected<capnp::AnyPointer::Reader> r, std::uint64_t type) {
          complete_from_wire(*state, std::move(r), type);
        };
      };
      t.emplace_back(&core::detail::vtable_for<ask_t>::value, ask);
    }
  }
}

/// The messages of A's interface that a proxy can carry, keyed by message vtable: tells and
/// asks of each wire message type (the vtable tells them apart).
template <class A, class... Ms>
const actor_host::proxy_table& proxy_table_of(core::interface<Ms...>*) {
  static const actor_host::proxy_table table = [] {
    actor_host::proxy_table t;
    (add_proxy_entries<A, Ms>(t), ...);
    return t;
  }();
  return table;
}
}  // namespace detail

template <class A>
  requires core::has_interface<A>
std::uint64_t actor_host::publish(core::actor_ref<A> ref, core::duration ask_timeout, std::uint64_t well_known_id) {
  core::any_ref target = ref;
  return add_async_actor(
      [ref = std::move(ref), ask_timeout](std::uint64_t type_id, capnp::AnyPointer::Reader payload,
                                          reply_sink* sink) -> expected<void> {
        expected<void> result;
        const bool handled = [&]<class... Ms>(core::interface<Ms...>*) {
          return (detail::forward_if_wire<A, Ms>(ref, ask_timeout, type_id, payload, sink, result) || ...);
        }(static_cast<typename A::interface*>(nullptr));
        if (!handled) return make_error(errc::protocol, "actor does not handle message type {:#018x}", type_id);
        return result;
      },
      std::move(target), well_known_id);
}

template <class A>
  requires core::has_interface<A>
core::actor_ref<A> actor_host::proxy(const remote_address& where) {
  return core::actor_ref<A>{make_proxy(where, detail::proxy_table_of<A>(static_cast<typename A::interface*>(nullptr)))};
}

}  // namespace flexsp::actors
