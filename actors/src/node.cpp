#include "flexsp/actors/node.hpp"

#include <unistd.h>

#include <algorithm>

#include "flexsp/actors/device_actor.hpp"
#include "flexsp/core/log.hpp"
#include "flexsp/kernels/ops.hpp"
#include "flexsp/kernels/process_communicator.hpp"

namespace flexsp::actors {

namespace {
/// Upper bound of one membership watch; the head answers sooner when membership changes.
constexpr std::chrono::milliseconds kWatchWait{10000};
}  // namespace

expected<void> node_config::validate() const {
  if (devices.empty()) return make_error(errc::invalid_argument, "a node needs at least one device");
  if (head.port == 0) return make_error(errc::invalid_argument, "head address {} has no port", head.to_string());
  return transport.validate();
}

// ---- node actor --------------------------------------------------------------------------------

node_actor::node_actor(std::shared_ptr<shared_state> shared)
    : shared_{std::move(shared)}, backoff_{shared_->config.reconnect} {}

void node_actor::join() {
  if (fatal_) return;
  const auto gen = ++generation_;
  cluster_ = cluster_at(*shared_->host, shared_->config.head);
  register_node m;
  m.actor_address = shared_->host->address();
  m.devices = to_wire(shared_->config.devices);
  m.previous_id = previous_id_;
  m.pid = static_cast<std::uint32_t>(::getpid());
  m.node_actor_id = shared_->self_id;
  m.process_token = kernels::process_token();
  for (const auto& d : shared_->devices) m.device_actors.push_back(d.actor_id);
  const auto timeout = std::max(shared_->config.transport.handshake_timeout * 2, std::chrono::milliseconds{5000});
  request(cluster_, std::move(m), timeout, [this, gen](expected<node_registered> r) {
    if (gen != generation_) return;
    if (!r) return retry_later(r.error());
    joined(*r);
  });
}

void node_actor::joined(const node_registered& r) {
  registration reg{r.node_id, r.epoch, r.previous_removed, r.previous_removed_reason};
  node_id_ = r.node_id;
  shared_->node_id = r.node_id;
  interval_ = std::chrono::milliseconds{std::max<std::uint32_t>(1, r.heartbeat_interval_ms)};
  timeout_ = std::chrono::milliseconds{std::max<std::uint32_t>(2, r.failure_timeout_ms)};
  if (reg.previous_removed)
    log::get("actors")->warn("node: previous membership as node {} had been ended by the head ({}); rejoined as node {} at epoch {}",
                             previous_id_, reg.previous_reason, reg.node_id, reg.epoch);
  else
    log::get("actors")->info("node: registered as node {} at epoch {} ({} devices, actors at {})", reg.node_id, reg.epoch,
                             shared_->devices.size(), shared_->host->address());
  for (auto& d : shared_->devices) d.ref.tell(set_node_id{r.node_id});  // the head named them at registration
  seen_epoch_ = 0;
  resume();
  if (shared_->on_registered) shared_->on_registered(reg);
}

void node_actor::retry_later(const error& e) {
  // A refused secret will not get better by retrying.
  if (e.kind() == errc::failed) {
    log::get("actors")->error("node: {}", e.message());
    return give_up(e);
  }
  const auto t = now();
  const bool first = unreachable_since_ == core::time_point{};
  if (first) unreachable_since_ = t;
  const auto limit = shared_->config.give_up_after;
  if (limit.count() > 0 && t - unreachable_since_ > limit) {
    log::get("actors")->error("node: the head at {} has been unreachable for {} ms; giving up ({})",
                              shared_->config.head.to_string(), limit.count(), e.message());
    return give_up(error{errc::disconnected, fmt::format("head {} unreachable: {}", shared_->config.head.to_string(),
                                                         e.message())});
  }
  // A member keeps knocking every heartbeat interval (each knock is a heartbeat: once the head
  // runs again it must hear from us within its timeout); a joiner backs off.
  const auto delay = node_id_ != 0 ? interval_ : backoff_.next();
  if (node_id_ == 0 || first)
    log::get("actors")->info("node: {}; trying the head at {} again every {} ms", e.message(),
                             shared_->config.head.to_string(), delay.count());
  (void)send_after(delay, join_tick{generation_});
}

void node_actor::give_up(const error& e) {
  fatal_ = true;
  if (shared_->on_fatal) shared_->on_fatal(e);
}

void node_actor::lose_touch() {
  touching_ = false;
  heartbeat_.cancel();
  if (cluster_.valid()) demonitor(cluster_);
}

void node_actor::handle(join_tick m) {
  if (m.generation != generation_ || fatal_) return;
  if (node_id_ != 0) probe();
  else join();
}

void node_actor::rejoin(const std::string& why) {
  if (node_id_ == 0) return;  // already joining
  log::get("actors")->warn("node: membership as node {} ended: {}; registering again", node_id_, why);
  // The jobs dropped this node's devices: what they compute now is for a world without them.
  for (auto& d : shared_->devices) d.ref.tell(membership_ended{});
  previous_id_ = node_id_;
  node_id_ = 0;
  shared_->node_id = 0;
  lose_touch();
  join();
}

void node_actor::reconnect(const std::string& why) {
  if (node_id_ == 0 || !touching_) return;
  log::get("actors")->warn("node: lost touch with the head ({}); reconnecting as node {}", why, node_id_);
  lose_touch();
  probe();
}

void node_actor::probe() {
  // Our membership may have outlived the lost touch (the head was only slow, or the connection
  // broke and came back): ask before registering anew.
  const auto gen = ++generation_;
  cluster_ = cluster_at(*shared_->host, shared_->config.head);
  request(cluster_, node_heartbeat{node_id_, ++sequence_}, timeout_, [this, gen](expected<heartbeat_ack> r) {
    if (gen != generation_ || node_id_ == 0) return;
    if (!r) return retry_later(r.error());
    if (!r->member) return rejoin(fmt::format("the head ended it: {}", r->reason));
    log::get("actors")->info("node: back in touch with the head as node {}", node_id_);
    resume();
  });
}

void node_actor::resume() {
  backoff_.reset();
  unreachable_since_ = {};
  touching_ = true;
  // A broken connection to the head is noticed at once.
  monitor(cluster_);
  last_ack_ = last_tick_ = now();
  heartbeat_.cancel();
  heartbeat_ = send_every(interval_, heartbeat_tick{});
  watch();
}

void node_actor::handle(const node_removed& m) {
  if (m.node_id == node_id_ && node_id_ != 0)
    rejoin(fmt::format("removed from the cluster at epoch {}: {}", m.epoch, m.reason));
}

void node_actor::handle(heartbeat_tick) {
  if (node_id_ == 0 || !touching_) return;
  const auto t = now();
  if (t - last_tick_ > interval_ * 2) {
    // This process was stalled: the head's silence meanwhile was ours.
    last_ack_ = t;
  }
  last_tick_ = t;
  const auto silent = std::chrono::duration_cast<std::chrono::milliseconds>(t - last_ack_);
  if (silent > timeout_) return reconnect(fmt::format("the head has been silent for {} ms", silent.count()));
  const auto gen = generation_;
  request(cluster_, node_heartbeat{node_id_, ++sequence_}, timeout_, [this, gen](expected<heartbeat_ack> r) {
    if (gen != generation_ || node_id_ == 0 || !r) return;  // a lost answer shows as silence
    last_ack_ = now();
    if (!r->member) rejoin(fmt::format("the head ended it: {}", r->reason));
  });
}

void node_actor::watch() {
  const auto gen = generation_;
  request(cluster_, watch_membership{seen_epoch_, static_cast<std::uint32_t>(kWatchWait.count())}, kWatchWait * 2,
          [this, gen](expected<membership_update> u) {
            if (gen != generation_ || node_id_ == 0 || !touching_) return;
            if (!u) {
              (void)send_after(interval_, watch_tick{gen});
              return;
            }
            auto& host = *shared_->host;
            const auto& self = host.address();
            if (u->resync) {
              for (const auto& n : u->view.nodes) {
                if (n.address == self) continue;
                if (n.alive) host.mark_alive(n.address);
                else host.mark_dead(n.address, fmt::format("node {} is not a member", n.id));
              }
              seen_epoch_ = u->view.epoch;
            }
            for (const auto& c : u->changes) {
              seen_epoch_ = std::max(seen_epoch_, c.epoch);
              if (c.node.address == self) continue;
              if (c.kind == membership_kind::lost)
                host.mark_dead(c.node.address,
                               fmt::format("node {} lost at epoch {}: {}", c.node.id, c.epoch, c.node.lost_reason));
              else
                host.mark_alive(c.node.address);
            }
            watch();
          });
}

void node_actor::handle(watch_tick m) {
  if (m.generation == generation_ && node_id_ != 0 && touching_) watch();
}

void node_actor::on_down(const core::down_msg& m) {
  if (m.source == cluster_ && node_id_ != 0)
    reconnect(fmt::format("connection to the head lost: {}", m.what.empty() ? core::to_string(m.reason) : m.what));
}

// ---- node service ------------------------------------------------------------------------------

expected<std::unique_ptr<node_service>> node_service::start(net::event_loop& loop, node_config config,
                                                            std::function<void(const registration&)> on_registered,
                                                            std::function<void(const error&)> on_fatal) {
  FLEXSP_TRY(config.validate());
  std::unique_ptr<node_service> n{new node_service{}};
  auto shared = std::make_shared<node_actor::shared_state>();
  shared->config = config;
  shared->on_registered = std::move(on_registered);
  shared->on_fatal = std::move(on_fatal);
  actor_host_config hc;
  hc.bind = config.bind;
  hc.advertise_host = config.advertise_host;
  hc.transport = config.transport;
  FLEXSP_TRY_ASSIGN(shared->host, actor_host::start(loop, hc));
  n->cpu_devices_ = static_cast<int>(
      std::count_if(config.devices.begin(), config.devices.end(), [](const device_id& d) { return d.kind == device_kind::cpu; }));
  if (n->cpu_devices_ > 0)
    log::get("device")->info("{} cpu devices here; CPU GEMM threads per device: {}", n->cpu_devices_,
                             kernels::add_cpu_devices(n->cpu_devices_));
  // Each device's trainer runs steps and tears down communicators on blocking actors: two
  // threads of the blocking pool per device, so that every device of an SP group can be in a
  // collective at once.
  core::actor_system_config sc;
  sc.workers = 2;
  sc.blocking_workers = 2 * config.devices.size() + 2;
  n->system_ = std::make_unique<core::actor_system>(sc);
  for (const auto& d : config.devices) {
    auto trainer = std::make_shared<device_trainer>(
        device_context{config.head, config.transport, shared->host, d, n->system_.get()});
    core::spawn_options o;
    o.name = "device:" + d.to_string();
    auto ref = n->system_->spawn<device_actor>(o, d, std::uint64_t{0}, std::move(trainer));
    const auto id = shared->host->publish(ref);
    shared->devices.push_back({d, std::move(ref), id});
  }
  n->shared_ = shared;
  core::spawn_options o;
  o.name = "node";
  n->actor_ = n->system_->spawn<node_actor>(o, shared);
  shared->self_id = shared->host->publish(n->actor_);
  n->actor_.tell(node_actor::join_tick{0});  // joins once its id is known
  return n;
}

node_service::~node_service() {
  stop();
  if (system_) system_->shutdown();  // the device actors and their trainers stop here
  if (cpu_devices_ > 0) kernels::add_cpu_devices(-cpu_devices_);
}

std::uint64_t node_service::node_id() const { return shared_->node_id.load(); }
std::string node_service::actor_address() const { return shared_->host->address(); }
std::shared_ptr<actor_host> node_service::host() const { return shared_->host; }

void node_service::stop() {
  if (actor_.valid()) actor_.stop();
  shared_->host->stop();
}

}  // namespace flexsp::actors
