#pragma once
/// \file
/// A blocking client of the head: status, KV store (rendezvous), named actors, membership
/// subscriptions and shutdown. Used by the `flexsp` commands, tests and, later, jobs.
///
/// It owns an I/O thread. Every call waits at most `request_timeout` (errc::timeout) and fails
/// with errc::disconnected once the connection to the head is gone. Thread-safe.

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "flexsp/actors/membership.hpp"
#include "flexsp/actors/remote.hpp"
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

class cluster_client {
public:
  using event_handler = std::function<void(const membership_event&)>;

  /// Connects and authenticates as a client.
  static expected<std::unique_ptr<cluster_client>> connect(const net::endpoint& head, net::transport_config transport);
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
  /// Pushes every later membership change to `handler` (on the client's I/O thread) and
  /// returns the status at the moment of subscribing.
  expected<cluster_status> subscribe(event_handler handler);
  /// Asks the head process to exit.
  expected<void> shutdown_head();
  /// False once the connection to the head is closed.
  bool connected() const;

  std::chrono::milliseconds request_timeout{5000};

  struct impl;

private:
  explicit cluster_client(std::unique_ptr<impl> i);
  std::unique_ptr<impl> impl_;
};

}  // namespace flexsp::actors
