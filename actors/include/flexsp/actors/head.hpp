#pragma once
/// \file
/// The head service: node registry, membership epochs, failure detector, named-actor directory,
/// KV store (the rendezvous service of collective groups) and membership subscriptions.
///
/// It runs on an `net::event_loop` and serves three kinds of authenticated connections:
/// - nodes (`RegisterNode`, then `Heartbeat` every interval): a node that closes its connection
///   is lost at once; one that stops sending for longer than `failure_timeout` is lost by the
///   detector (checked every `interval / 4`, so detection takes at most timeout + interval/4
///   + one heartbeat interval). A lost node is sent `Removed` and disconnected; if its process
///   returns it joins again as a new member and is told that its previous membership ended.
/// - clients (`status`, `kv_*`, `name_*`, `subscribe`, `shutdown`);
/// - any connection may subscribe to membership events; each join or loss is pushed once.

#include <chrono>
#include <functional>
#include <memory>

#include "flexsp/actors/membership.hpp"
#include "flexsp/core/error.hpp"
#include "flexsp/core/net/transport.hpp"

namespace flexsp::actors {

/// Heartbeat interval and failure timeout, shared by head and nodes (the head tells nodes).
struct failure_detector_config {
  std::chrono::milliseconds heartbeat_interval{500};
  std::chrono::milliseconds failure_timeout{3000};
  /// Fails unless 1 ms <= interval < timeout.
  expected<void> validate() const;
};

struct head_config {
  /// Where to listen. Loopback unless told otherwise.
  net::endpoint bind{"127.0.0.1", 7400};
  failure_detector_config detector;
  net::transport_config transport;
  /// Upper bound of one KV wait.
  std::chrono::milliseconds max_kv_wait{std::chrono::minutes{10}};
  expected<void> validate() const;
};

/// The running head. Create with `start`; every method is thread-safe.
class head_service {
public:
  /// Binds, listens and starts the failure detector on `loop` (which must be running or be run
  /// by the caller afterwards). `on_shutdown` runs on the loop when a client asks the head to exit.
  static expected<std::unique_ptr<head_service>> start(net::event_loop& loop, head_config config,
                                                       std::function<void()> on_shutdown = {});
  ~head_service();

  /// The port actually bound (differs from the config when it asked for 0).
  std::uint16_t port() const;
  /// Closes the listener and every connection.
  void stop();

  struct impl;

private:
  explicit head_service(std::shared_ptr<impl> i) : impl_{std::move(i)} {}
  std::shared_ptr<impl> impl_;
};

}  // namespace flexsp::actors
