#pragma once
/// \file
/// Authenticated, framed TCP connections for the cluster (Asio underneath, never exposed here).
///
/// - `event_loop`: one I/O thread; every handler of every connection, listener and timer runs on
///   it, so the services built on top need no locks for their own state.
/// - `listener`: accepts TCP connections and runs the server side of the join handshake on each;
///   only connections that proved knowledge of the shared secret reach the accept handler.
/// - `connect`: opens a connection and runs the client side of the handshake.
/// - `connection`: sends envelopes (from any thread; per-connection FIFO order) and delivers
///   inbound envelopes to a handler on the loop thread.
///
/// Handshake (the secret never crosses the wire): the acceptor sends `Challenge{nonce_s}`; the
/// connector answers `Auth{role, nonce_c, HMAC(secret, "flexsp-auth-c"|nonce_s|nonce_c)}`; the
/// acceptor checks it in constant time and answers `Welcome{HMAC(secret,
/// "flexsp-auth-s"|nonce_c|nonce_s)}`, which the connector checks in turn, or `Reject` and
/// closes. Anything else during the handshake, or no answer within `handshake_timeout`,
/// closes the connection.
///
/// Every inbound frame goes through `wire::frame_decoder` and `wire::open_envelope`. A frame
/// that is malformed, oversized or of the wrong schema closes that connection only, logged on
/// the "net" logger with the peer address and the reason; the close handler receives an
/// `errc::protocol` error.

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <capnp/message.h>

#include "flexsp/core/error.hpp"
#include "flexsp/core/wire/envelope.hpp"
#include "flexsp/core/wire/frame.hpp"

namespace flexsp::net {

/// A TCP address, "host:port".
struct endpoint {
  std::string host;
  std::uint16_t port = 0;

  /// Parses "host:port" (port 0..65535; host non-empty). errc::invalid_argument otherwise.
  static expected<endpoint> parse(std::string_view text);
  std::string to_string() const;
  friend bool operator==(const endpoint&, const endpoint&) = default;
};

/// Settings shared by listeners and outgoing connections.
struct transport_config {
  /// The cluster's shared secret. Must not be empty.
  std::vector<std::uint8_t> secret;
  wire::frame_limits limits;
  /// Time allowed for TCP connect plus handshake, and for an accepted peer to authenticate.
  std::chrono::milliseconds handshake_timeout{5000};
  /// Largest frame a peer may send before it has authenticated (bytes).
  std::size_t max_handshake_frame_bytes = 4096;
  /// Outbound bytes one connection may hold queued; a peer that stops reading beyond this is
  /// disconnected with errc::overloaded instead of growing the sender's memory without bound.
  std::size_t max_queued_bytes = std::size_t{256} << 20;

  expected<void> validate() const;
};

/// Exponential backoff with a cap, for reconnect loops.
struct backoff {
  std::chrono::milliseconds initial{50};
  std::chrono::milliseconds max{2000};
  std::chrono::milliseconds current{0};

  /// The next delay (initial, 2x, 4x, ... up to max).
  std::chrono::milliseconds next();
  void reset() { current = std::chrono::milliseconds{0}; }
};

/// One I/O thread and its timers.
class event_loop {
public:
  event_loop();
  ~event_loop();
  event_loop(const event_loop&) = delete;
  event_loop& operator=(const event_loop&) = delete;

  /// Runs the loop on a background thread until `stop()`.
  void start();
  /// Runs the loop on the calling thread until `stop()` is called (from a handler or another thread).
  void run();
  /// Stops the loop and joins its thread; pending handlers are dropped. Idempotent.
  void stop();

  /// Runs `fn` on the loop thread.
  void post(std::function<void()> fn);
  /// True when called from the loop thread.
  bool in_loop_thread() const;

  /// Runs `fn` on the loop thread after `delay`; returns an id for `cancel`. Thread-safe.
  std::uint64_t schedule(std::chrono::milliseconds delay, std::function<void()> fn);
  /// Cancels a scheduled call that has not run yet (no-op otherwise). Thread-safe.
  void cancel(std::uint64_t timer_id);

  struct impl;
  impl& internals() { return *impl_; }

private:
  std::unique_ptr<impl> impl_;
};

/// An authenticated connection. Owned by shared_ptr; kept alive by pending I/O while open.
class connection : public std::enable_shared_from_this<connection> {
public:
  /// Runs on the loop thread for every inbound envelope. A `kj::Exception` thrown while reading
  /// the message is treated as a malformed frame (the connection is closed).
  using message_handler = std::function<void(connection&, wire::envelope_reader)>;
  /// Runs once on the loop thread when the connection is closed, for whatever reason.
  using close_handler = std::function<void(connection&, const error&)>;

  virtual ~connection() = default;

  /// Starts delivering inbound messages. Call once, right after accept/connect.
  virtual void start(message_handler on_message, close_handler on_close) = 0;
  /// Queues a message. Thread-safe; messages of one connection leave in call order.
  /// Dropped silently once the connection is closing (the close handler reports why).
  virtual void send(capnp::MessageBuilder& message) = 0;
  /// Closes after flushing queued messages. Thread-safe, idempotent.
  virtual void close(error reason) = 0;
  /// Closes immediately, dropping queued messages (used when a peer is presumed dead).
  virtual void abort(error reason) = 0;

  virtual bool is_open() const = 0;
  /// "ip:port" of the remote side.
  virtual const std::string& peer() const = 0;
  /// The role the remote side authenticated with (on accepted connections) or claimed (outgoing).
  virtual wire::schema::Role role() const = 0;
  /// Process-unique id, for logs.
  virtual std::uint64_t id() const = 0;
};

/// Accepts connections on one address.
class listener {
public:
  using accept_handler = std::function<void(std::shared_ptr<connection>)>;
  virtual ~listener() = default;
  /// The bound port (useful when binding port 0).
  virtual std::uint16_t port() const = 0;
  virtual void close() = 0;

  /// Binds and listens (SO_REUSEADDR). `on_accept` runs on the loop thread for each
  /// authenticated connection; it must call `start()` on it.
  static expected<std::unique_ptr<listener>> open(event_loop& loop, const endpoint& bind, transport_config config,
                                                  accept_handler on_accept);
};

using connect_handler = std::function<void(expected<std::shared_ptr<connection>>)>;

/// Connects and authenticates; `done` runs on the loop thread with the connection or with
/// errc::disconnected (refused/unreachable), errc::timeout, or errc::failed (rejected secret).
void connect(event_loop& loop, const endpoint& to, wire::schema::Role role, transport_config config,
             connect_handler done);

/// Blocking form of `connect`. Must not be called on the loop thread.
expected<std::shared_ptr<connection>> connect_blocking(event_loop& loop, const endpoint& to, wire::schema::Role role,
                                                       transport_config config);

/// The local IPv4 address this machine uses to reach `to` (what to advertise to a peer there).
expected<std::string> local_address_towards(const endpoint& to);
/// The first IPv4 address of an interface that is up and not loopback (what a process listening
/// on every interface tells others when no peer is known yet); errc::not_found when none.
expected<std::string> primary_address();
/// True for 127.0.0.0/8 and "localhost".
bool is_loopback(const std::string& host) noexcept;

}  // namespace flexsp::net
