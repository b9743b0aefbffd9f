#pragma once
/// \file
/// The node service: one per machine. Hosts one device actor per configured device and the node
/// actor, which keeps the node a member of the cluster.
///
/// The node actor's lifecycle: ask the head's cluster actor (head.hpp) `register_node`, naming
/// the device actors (the head names them `device/<node id>/<device>` before it announces the
/// join) -> `node_registered{node id, epoch, heartbeat interval, failure timeout}` -> heartbeat
/// every interval, and watch membership so that the actor host fails sends to lost peers at once. When the head ends the membership
/// (`node_removed`, or `member = false` in a heartbeat acknowledgement) the node registers again
/// as a new member, naming its previous id; the head answers whether that membership had been
/// ended and why, and the node logs it. When the connection to the head breaks (the node
/// monitors the cluster actor's proxy) or the head leaves heartbeats unanswered for longer than
/// the failure timeout, the node asks every heartbeat interval whether its membership still
/// holds (a slow head or a broken connection need not have ended it) and goes on as the same
/// member when it does. A heartbeat tick that comes late by more than an interval means this process
/// was stalled: the head's silence meanwhile is not held against it. If the head cannot be
/// reached for `give_up_after`, or refuses the cluster secret, `on_fatal` runs (the `flexsp`
/// command then exits).

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "flexsp/actors/head.hpp"
#include "flexsp/actors/membership.hpp"
#include "flexsp/actors/remote.hpp"
#include "flexsp/core/actor.hpp"
#include "flexsp/core/actor_system.hpp"
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

class device_actor;

/// The node actor (see the file comment). Its local messages are its own timers.
class node_actor : public core::actor<node_actor> {
public:
  struct join_tick {
    std::uint64_t generation = 0;
  };
  struct heartbeat_tick {};
  struct watch_tick {
    std::uint64_t generation = 0;
  };
  using interface = core::interface<node_removed, join_tick, heartbeat_tick, watch_tick>;

  /// What the node actor shares with its service.
  struct shared_state {
    node_config config;
    std::shared_ptr<actor_host> host;
    struct device_entry {
      device_id device;
      core::actor_ref<device_actor> ref;
      std::uint64_t actor_id = 0;  // in `host`
    };
    std::vector<device_entry> devices;
    std::uint64_t self_id = 0;  // the node actor's id in `host`
    std::atomic<std::uint64_t> node_id{0};
    std::function<void(const registration&)> on_registered;
    std::function<void(const error&)> on_fatal;
  };

  explicit node_actor(std::shared_ptr<shared_state> shared);

  void handle(const node_removed& m);
  void handle(join_tick m);
  void handle(heartbeat_tick);
  void handle(watch_tick m);
  void on_down(const core::down_msg& m) override;

private:
  void join();
  void joined(const node_registered& r);
  /// The head could not be reached: try again after the backoff (or give up).
  void retry_later(const error& e);
  /// Stops for good: `on_fatal` runs.
  void give_up(const error& e);
  /// Stops heartbeating and watching the head's proxy (the membership ended or went quiet).
  void lose_touch();
  /// The membership ended: register again as a new member.
  void rejoin(const std::string& why);
  /// The connection to the head broke or the head stayed silent: find out whether the
  /// membership still holds (`probe`) before registering anew.
  void reconnect(const std::string& why);
  void probe();
  /// In touch with the head as a member: heartbeat and watch membership.
  void resume();
  void watch();

  std::shared_ptr<shared_state> shared_;
  core::actor_ref<cluster_actor> cluster_;
  net::backoff backoff_;
  std::uint64_t generation_ = 0;  // rises with every join attempt; stale replies are dropped
  std::uint64_t node_id_ = 0;
  std::uint64_t previous_id_ = 0;
  std::uint64_t sequence_ = 0;
  std::uint64_t seen_epoch_ = 0;
  std::chrono::milliseconds interval_{500}, timeout_{3000};
  core::time_point last_ack_{};
  core::time_point last_tick_{};
  bool touching_ = false;  // a member in touch with the head (heartbeating)
  core::time_point unreachable_since_{};
  core::timer_handle heartbeat_;
  bool fatal_ = false;
};

class node_service {
public:
  /// Starts the actor host, spawns the device actors and the node actor, which begins joining.
  /// `on_registered` and `on_fatal` run on an actor thread.
  static expected<std::unique_ptr<node_service>> start(net::event_loop& loop, node_config config,
                                                       std::function<void(const registration&)> on_registered = {},
                                                       std::function<void(const error&)> on_fatal = {});
  ~node_service();

  /// The current membership id (0 while joining).
  std::uint64_t node_id() const;
  /// "host:port" of this node's actor host.
  std::string actor_address() const;
  std::shared_ptr<actor_host> host() const;
  /// Leaves: stops the node actor and closes the actor host (the head sees the node go at once).
  void stop();

private:
  node_service() = default;
  // Runs the node actor, the device actors and their trainers' blocking workers.
  std::unique_ptr<core::actor_system> system_;
  std::shared_ptr<node_actor::shared_state> shared_;
  core::actor_ref<node_actor> actor_;
  int cpu_devices_ = 0;  // counted in kernels::add_cpu_devices while the node lives
};

}  // namespace flexsp::actors
