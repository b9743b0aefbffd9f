#pragma once
/// \file
/// The head: the cluster actor (node registry, membership epochs, failure detector, named-actor
/// directory, KV store for the rendezvous of collective groups, membership watches) and the
/// head service that hosts it.
///
/// The cluster actor is an actor of the runtime like any other: the head service publishes it
/// at its address as actor `cluster_actor_id`, and nodes, schedulers, devices and command-line
/// clients reach it through `actor_host::proxy<cluster_actor>`. Its messages are declared in
/// actors/schema/cluster.capnp.
/// - A node registers (`register_node`) naming its node actor; the head monitors that actor
///   through a proxy, so a node whose process dies or whose connection breaks is lost at once
///   (the proxy's down notice). A node that stops heartbeating (`node_heartbeat`, every
///   interval) is lost by the failure detector (failure_detector.hpp: phi-accrual suspicion,
///   the failure timeout as its upper bound, checked every interval / 4, blind to the head's
///   own stalls). A node in the head's own process (embedded) is never lost to silence. A lost node is told (`node_removed`, and `member = false` in its next
///   heartbeat acknowledgement); if its process is still there it joins again as a new member
///   and is told that its previous membership ended.
/// - With a state store (state_store.hpp), membership (alive nodes, the epoch, the next node
///   id), the KV store and the named actors are written through to it, and a head started on
///   the same store takes them back: its nodes keep their ids (their next heartbeat is
///   acknowledged as before), and a node that does not return is lost to the failure detector.
///   A clean stop (`stop_head`) forgets membership, KV and names.
/// - Membership changes are kept in a bounded log; `watch_membership` returns those after an
///   epoch, waiting for the next one when there are none (a long poll), so a watcher never
///   misses or repeats a change while the head lives.

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "flexsp/actors/cluster.msg.hpp"
#include "flexsp/actors/failure_detector.hpp"
#include "flexsp/actors/membership.hpp"
#include "flexsp/actors/remote.hpp"
#include "flexsp/actors/state_store.hpp"
#include "flexsp/core/actor.hpp"
#include "flexsp/core/actor_system.hpp"
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
  /// The host the head tells others (jobs' devices connect back to it); default: the bind host,
  /// or this machine's primary address when binding every interface (0.0.0.0).
  std::string advertise_host;
  failure_detector_config detector;
  net::transport_config transport;
  /// Upper bound of one KV or membership wait.
  std::chrono::milliseconds max_kv_wait{std::chrono::minutes{10}};
  /// Membership changes remembered for watchers (older ones are answered with a resync).
  std::size_t membership_log = 1024;
  /// Where the head's state outlives its process; none when null.
  std::shared_ptr<state_store> store;
  /// How long a node restored from the store has to heartbeat again after a restart (its
  /// reconnect backoff reaches 2 s while the head is down); lost after that.
  std::chrono::milliseconds restore_grace{std::chrono::seconds{10}};
  expected<void> validate() const;
};

/// The actor id of the cluster actor at every head's address.
inline constexpr std::uint64_t cluster_actor_id = 1;

class cluster_actor;
/// A proxy, made by `host`, of the cluster actor of the head at `head`.
core::actor_ref<cluster_actor> cluster_at(actor_host& host, const net::endpoint& head);
/// The name under which the head lists a node's device actor: `device/<node id>/<device>`.
std::string device_actor_name(std::uint64_t node, std::string_view device);

/// Conversions between membership records and their wire form.
node_info to_wire(const node_record& r);
node_record from_wire(const node_info& n);
std::vector<node_device> to_wire(const std::vector<device_id>& devices);
/// Skips devices of a kind this build does not know.
std::vector<device_id> from_wire(const std::vector<node_device>& devices);

class node_actor;

/// The cluster actor (see the file comment). Its local messages are its own timers.
class cluster_actor : public core::actor<cluster_actor> {
public:
  struct detector_tick {};
  struct wait_expired {
    std::uint64_t waiter = 0;
  };
  using interface = core::interface<register_node, node_heartbeat, get_cluster_view, watch_membership, kv_write, kv_read,
                                    name_bind, name_resolve, stop_head, detector_tick, wait_expired>;

  /// `host` makes proxies of node actors; `on_shutdown` runs (on an actor thread) when a
  /// client sends stop_head.
  cluster_actor(std::shared_ptr<actor_host> host, head_config config, std::function<void()> on_shutdown);

  node_registered handle(const register_node& m);
  heartbeat_ack handle(const node_heartbeat& m);
  cluster_view handle(get_cluster_view);
  core::deferred<membership_update> handle(const watch_membership& m);
  void handle(kv_write m);
  core::deferred<kv_value> handle(const kv_read& m);
  void handle(const name_bind& m);
  name_entry handle(const name_resolve& m);
  void handle(stop_head);
  void handle(detector_tick);
  void handle(wait_expired m);

  void on_start() override;
  void on_down(const core::down_msg& m) override;

private:
  struct kv_waiter {
    std::string key;
    core::deferred<kv_value> reply;
    std::chrono::milliseconds wait{0};
    core::timer_handle timer;
  };
  struct watcher {
    std::uint64_t after = 0;
    core::deferred<membership_update> reply;
    core::timer_handle timer;
  };
  void lose(std::uint64_t node, std::string reason);
  void on_lost(const membership_event& ev);
  /// The remembered changes after `epoch`, oldest first.
  std::vector<membership_change> changes_after(std::uint64_t epoch) const;
  void record(const membership_event& ev);
  cluster_view view() const;
  /// Takes back the state the store holds (a restarted head).
  void restore();
  /// Writes through to the store (when there is one); a failure is logged, not fatal.
  void keep(expected<void> written, std::string_view what);
  void keep_meta();
  void watch_node(std::uint64_t id, const std::string& address, std::uint64_t actor, bool embedded);

  std::shared_ptr<actor_host> host_;
  head_config config_;
  std::function<void()> on_shutdown_;
  membership_table members_;
  std::map<std::uint64_t, core::actor_ref<node_actor>> node_actors_;  // by node id
  std::map<std::uint64_t, std::uint64_t> node_actor_ids_;              // by node id
  bool store_failing_ = false;
  std::deque<membership_change> log_;
  std::map<std::string, std::string> kv_;
  std::map<std::string, name_entry> names_;
  std::map<std::uint64_t, kv_waiter> kv_waiters_;
  std::map<std::uint64_t, watcher> watchers_;
  std::uint64_t next_waiter_ = 1;
  failure_detector detector_;
  core::timer_handle detector_timer_;
};

/// The running head: an actor system and an actor host at the head's address, publishing the
/// cluster actor. Create with `start`; every method is thread-safe.
class head_service {
public:
  /// Binds and listens on `loop` (which must be running or be run by the caller afterwards).
  /// `on_shutdown` runs when a client asks the head to exit.
  static expected<std::unique_ptr<head_service>> start(net::event_loop& loop, head_config config,
                                                       std::function<void()> on_shutdown = {});
  ~head_service();

  /// The port actually bound (differs from the config when it asked for 0).
  std::uint16_t port() const;
  /// The head's actor host: other actors of the head process (the job API) are published here.
  std::shared_ptr<actor_host> host() const { return host_; }
  /// The head's actor system (the head's other services run their actors on it).
  core::actor_system& system() const { return *system_; }
  /// The state store of its config (null when none).
  std::shared_ptr<state_store> store() const { return store_; }
  /// Stops publishing and closes every connection.
  void stop();

private:
  head_service() = default;
  std::unique_ptr<core::actor_system> system_;
  std::shared_ptr<actor_host> host_;
  std::shared_ptr<state_store> store_;
  core::actor_ref<cluster_actor> cluster_;
};

}  // namespace flexsp::actors
