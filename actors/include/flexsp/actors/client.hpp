#pragma once
/// \file
/// A blocking client of the head's cluster actor: status, KV store (rendezvous), named actors,
/// membership subscriptions and shutdown. Used by the `flexsp` commands, job workers, device
/// trainers and tests.
///
/// It talks to the cluster actor through a proxy (`actor_host::proxy<cluster_actor>`), either
/// on its own actor host, I/O thread and actor system (`connect`) or on the caller's (`attach`).
/// Every call waits at most `request_timeout` (errc::timeout); a call while the head cannot be
/// reached fails with errc::disconnected, and the next call connects again. Thread-safe.

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "flexsp/actors/head.hpp"
#include "flexsp/actors/membership.hpp"
#include "flexsp/actors/remote.hpp"
#include "flexsp/core/actor_system.hpp"
#include "flexsp/core/error.hpp"
#include "flexsp/core/net/transport.hpp"

namespace flexsp::actors {

/// The head's view of the cluster.
struct cluster_status {
  std::uint64_t epoch = 0;
  std::vector<node_record> nodes;
  std::uint32_t head_pid = 0;
  std::chrono::milliseconds heartbeat_interval{0};
  std::chrono::milliseconds failure_timeout{0};
  std::size_t alive_count() const;
};
cluster_status from_wire(const cluster_view& v);

class cluster_client {
public:
  using event_handler = std::function<void(const membership_event&)>;

  /// A client with its own actor host and threads; fails when the head cannot be reached or
  /// refuses the secret.
  static expected<std::unique_ptr<cluster_client>> connect(const net::endpoint& head, net::transport_config transport);
  /// A client on an existing actor host (and the actor system that runs its subscriptions);
  /// fails when the head cannot be reached.
  static expected<std::unique_ptr<cluster_client>> attach(std::shared_ptr<actor_host> host, core::actor_system& system,
                                                          const net::endpoint& head);
  ~cluster_client();

  expected<cluster_status> status();
  expected<void> kv_set(const std::string& key, const std::string& value);
  /// The value, or nullopt when the key is not set.
  expected<std::optional<std::string>> kv_get(const std::string& key);
  /// Waits until the key is set (errc::timeout after `wait`).
  expected<std::string> kv_wait(const std::string& key, std::chrono::milliseconds wait);
  expected<void> register_name(const std::string& name, const remote_address& where);
  /// errc::not_found when no actor has that name.
  expected<remote_address> lookup(const std::string& name);
  /// Pushes every later membership change to `handler` (on an actor thread, one at a time, in
  /// epoch order) and returns the status at the moment of subscribing. The subscription ends
  /// with the client.
  expected<cluster_status> subscribe(event_handler handler);
  /// Asks the head process to exit.
  expected<void> shutdown_head();

  std::chrono::milliseconds request_timeout{5000};

  struct impl;

private:
  explicit cluster_client(std::unique_ptr<impl> i);
  std::unique_ptr<impl> impl_;
};

}  // namespace flexsp::actors
