#pragma once
/// \file
/// The node service: one per machine. Hosts one device actor per configured device, registers
/// with the head, sends heartbeats, and keeps its actor host's view of dead peers current.
///
/// Lifecycle: connect and authenticate -> `RegisterNode` -> `Registered{node id, epoch,
/// heartbeat interval, failure timeout}` -> heartbeat every interval, register the device
/// actors' names (`device/<node id>/<device>`), subscribe to membership events. When the head
/// removes the node (`Removed`), when the connection breaks, or when the head stays silent for
/// longer than the failure timeout, the node reconnects with backoff and registers again as a
/// new member, naming its previous id; the head answers whether that membership was ended and
/// why, and the node logs it. If the head cannot be reached for `give_up_after`, `on_fatal`
/// runs (the `flexsp` command then exits).

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "flexsp/actors/membership.hpp"
#include "flexsp/actors/remote.hpp"
#include "flexsp/core/error.hpp"
#include "flexsp/core/net/transport.hpp"

namespace flexsp::actors {

struct node_config {
  net::endpoint head;
  std::vector<device_id> devices;
  /// Where the node accepts actor channels (port 0: any free port).
  net::endpoint bind{"127.0.0.1", 0};
  /// Host others should use to reach this node; defaults to the bind host.
  std::string advertise_host;
  net::transport_config transport;
  net::backoff reconnect{std::chrono::milliseconds{100}, std::chrono::milliseconds{2000}};
  /// Give up (on_fatal) after the head was unreachable this long; 0 = never.
  std::chrono::milliseconds give_up_after{std::chrono::seconds{30}};
  expected<void> validate() const;
};

/// What a node reports after each registration.
struct registration {
  std::uint64_t node_id = 0;
  std::uint64_t epoch = 0;
  bool previous_removed = false;
  std::string previous_reason;
};

class node_service {
public:
  /// Starts the actor host, spawns the device actors and begins joining. `on_registered` and
  /// `on_fatal` run on the loop thread.
  static expected<std::unique_ptr<node_service>> start(net::event_loop& loop, node_config config,
                                                       std::function<void(const registration&)> on_registered = {},
                                                       std::function<void(const error&)> on_fatal = {});
  ~node_service();

  /// The current membership id (0 while joining).
  std::uint64_t node_id() const;
  /// "host:port" of this node's actor host.
  std::string actor_address() const;
  std::shared_ptr<actor_host> host() const;
  /// Leaves: closes the head connection and the actor host.
  void stop();

  struct impl;

private:
  explicit node_service(std::shared_ptr<impl> i) : impl_{std::move(i)} {}
  std::shared_ptr<impl> impl_;
};

}  // namespace flexsp::actors
