#include "flexsp/actors/head.hpp"

#include <unistd.h>

#include <algorithm>

#include <nlohmann/json.hpp>

#include "flexsp/actors/node.hpp"
#include "flexsp/core/log.hpp"
#include "flexsp/kernels/process_communicator.hpp"

namespace flexsp::actors {

expected<void> failure_detector_config::validate() const {
  if (heartbeat_interval.count() < 1)
    return make_error(errc::invalid_argument, "heartbeat interval {} ms must be at least 1 ms", heartbeat_interval.count());
  if (failure_timeout <= heartbeat_interval)
    return make_error(errc::invalid_argument, "failure timeout {} ms must exceed the heartbeat interval {} ms",
                      failure_timeout.count(), heartbeat_interval.count());
  return {};
}

expected<void> head_config::validate() const {
  FLEXSP_TRY(detector.validate());
  if (membership_log == 0) return make_error(errc::invalid_argument, "the membership log must keep at least one change");
  return transport.validate();
}

// ---- wire forms --------------------------------------------------------------------------------

std::vector<node_device> to_wire(const std::vector<device_id>& devices) {
  std::vector<node_device> out;
  out.reserve(devices.size());
  for (const auto& d : devices) out.push_back({d.kind, d.index, d.description});
  return out;
}

std::vector<device_id> from_wire(const std::vector<node_device>& devices) {
  std::vector<device_id> out;
  out.reserve(devices.size());
  for (const auto& d : devices) {
    device_kind known{};
    if (!parse_device_kind(to_string(d.kind), known)) continue;  // a kind this build cannot use
    out.push_back({d.kind, d.index, d.description});
  }
  return out;
}

node_info to_wire(const node_record& r) {
  return node_info{r.id,           r.address,      r.state == node_state::alive, to_wire(r.devices), r.joined_epoch,
                   r.lost_epoch,   r.lost_reason,  r.pid};
}

node_record from_wire(const node_info& n) {
  node_record r;
  r.id = n.id;
  r.address = n.address;
  r.state = n.alive ? node_state::alive : node_state::dead;
  r.devices = from_wire(n.devices);
  r.joined_epoch = n.joined_epoch;
  r.lost_epoch = n.lost_epoch;
  r.lost_reason = n.lost_reason;
  r.pid = n.pid;
  return r;
}

// ---- cluster actor -----------------------------------------------------------------------------

core::actor_ref<cluster_actor> cluster_at(actor_host& host, const net::endpoint& head) {
  return host.proxy<cluster_actor>(remote_address{head.to_string(), cluster_actor_id});
}

std::string device_actor_name(std::uint64_t node, std::string_view device) {
  return fmt::format("device/{}/{}", node, device);
}

namespace {
// Tables of the state store the cluster actor writes.
constexpr std::string_view kMetaTable = "cluster";
constexpr std::string_view kNodesTable = "nodes";
constexpr std::string_view kKvTable = "kv";
constexpr std::string_view kNamesTable = "names";

std::string node_json(const node_record& r, std::uint64_t node_actor) {
  nlohmann::json devices = nlohmann::json::array();
  for (const auto& d : r.devices)
    devices.push_back({{"kind", std::string{to_string(d.kind)}}, {"index", d.index}, {"description", d.description}});
  return nlohmann::json{{"id", r.id},   {"address", r.address},           {"actor", node_actor},
                        {"pid", r.pid}, {"joined_epoch", r.joined_epoch}, {"devices", devices}}
      .dump();
}

expected<std::pair<node_record, std::uint64_t>> node_from_json(const std::string& text) {
  auto j = nlohmann::json::parse(text, nullptr, false);
  if (!j.is_object()) return make_error(errc::protocol, "a saved node is not a JSON object");
  try {
    node_record r;
    r.id = j.at("id").get<std::uint64_t>();
    r.address = j.at("address").get<std::string>();
    r.pid = j.at("pid").get<std::uint32_t>();
    r.joined_epoch = j.at("joined_epoch").get<std::uint64_t>();
    for (const auto& d : j.at("devices")) {
      device_kind kind{};
      if (!parse_device_kind(d.at("kind").get<std::string>(), kind)) continue;
      r.devices.push_back({kind, d.at("index").get<std::uint32_t>(), d.value("description", std::string{})});
    }
    return std::make_pair(std::move(r), j.at("actor").get<std::uint64_t>());
  } catch (const nlohmann::json::exception& e) {
    return make_error(errc::protocol, "a saved node is malformed: {}", e.what());
  }
}

failure_detector_settings detector_settings(const failure_detector_config& c) {
  failure_detector_settings s;
  s.interval = c.heartbeat_interval;
  s.timeout = c.failure_timeout;
  return s;
}
}  // namespace

cluster_actor::cluster_actor(std::shared_ptr<actor_host> host, head_config config, std::function<void()> on_shutdown)
    : host_{std::move(host)},
      config_{std::move(config)},
      on_shutdown_{std::move(on_shutdown)},
      detector_{detector_settings(config_.detector)} {}

void cluster_actor::on_start() {
  restore();
  detector_timer_ = send_every(detector_.settings().tick_period, detector_tick{});
}

void cluster_actor::keep(expected<void> written, std::string_view what) {
  if (written) {
    if (store_failing_) log::get("actors")->info("head: the state store works again");
    store_failing_ = false;
  } else if (!store_failing_) {
    store_failing_ = true;
    log::get("actors")->warn("head: cannot save {} to the state store ({}); a restarted head would not have it",
                             what, written.error().to_string());
  }
}

void cluster_actor::keep_meta() {
  if (!config_.store) return;
  keep(config_.store->put(kMetaTable, "membership",
                          nlohmann::json{{"epoch", members_.epoch()}, {"next_node", members_.next_id()}}.dump()),
       "the membership epoch");
}

void cluster_actor::watch_node(std::uint64_t id, const std::string& address, std::uint64_t actor, bool embedded) {
  host_->mark_alive(address);  // it may come back at the address of a lost membership
  auto node = host_->proxy<node_actor>(remote_address{address, actor});
  monitor(node);
  node_actors_[id] = std::move(node);
  node_actor_ids_[id] = actor;
  detector_.add(id, now(), embedded);
}

void cluster_actor::restore() {
  auto& store = config_.store;
  if (!store) return;
  auto fail = [&](const error& e) {
    log::get("actors")->error("head: cannot read the cluster's state from {} ({}); starting without it",
                              store->describe(), e.to_string());
  };
  auto meta = store->entries(kMetaTable);
  if (!meta) return fail(meta.error());
  auto saved_nodes = store->entries(kNodesTable);
  if (!saved_nodes) return fail(saved_nodes.error());
  auto kv = store->entries(kKvTable);
  if (!kv) return fail(kv.error());
  auto names = store->entries(kNamesTable);
  if (!names) return fail(names.error());
  std::uint64_t epoch = 0, next_node = 1;
  if (auto it = meta->find("membership"); it != meta->end()) {
    auto j = nlohmann::json::parse(it->second, nullptr, false);
    if (j.is_object()) {
      epoch = j.value("epoch", std::uint64_t{0});
      next_node = j.value("next_node", std::uint64_t{1});
    }
  }
  std::vector<node_record> alive;
  std::map<std::uint64_t, std::uint64_t> actors;
  for (const auto& [key, text] : *saved_nodes) {
    auto n = node_from_json(text);
    if (!n) {
      log::get("actors")->warn("head: skipping saved node {}: {}", key, n.error().message());
      continue;
    }
    actors[n->first.id] = n->second;
    alive.push_back(std::move(n->first));
  }
  if (auto r = members_.restore(alive, epoch, next_node, now()); !r) return fail(r.error());
  for (const auto& r : alive) {
    watch_node(r.id, r.address, actors[r.id], false);
    detector_.add_returning(r.id, now(), std::max(config_.restore_grace, config_.detector.failure_timeout));
  }
  kv_.insert(kv->begin(), kv->end());
  for (const auto& [name, text] : *names) {
    auto j = nlohmann::json::parse(text, nullptr, false);
    if (j.is_object() && j.contains("address") && j.contains("actor"))
      names_[name] = name_entry{true, j["address"].get<std::string>(), j["actor"].get<std::uint64_t>()};
  }
  if (epoch > 0 || !alive.empty() || !kv_.empty())
    log::get("actors")->info("head: restored from {}: epoch {}, {} nodes (each must heartbeat within {} ms), {} keys, "
                             "{} names",
                             store->describe(), epoch, alive.size(),
                             std::max(config_.restore_grace, config_.detector.failure_timeout).count(), kv_.size(),
                             names_.size());
}

node_registered cluster_actor::handle(const register_node& m) {
  node_registered reply;
  if (m.previous_id != 0) {
    if (const auto* rec = members_.find(m.previous_id); rec && rec->state == node_state::dead) {
      reply.previous_removed = true;
      reply.previous_removed_reason = rec->lost_reason;
    } else if (rec && rec->state == node_state::alive) {
      // The old membership is still open (a half-open connection): the new one supersedes it.
      lose(m.previous_id, "the node re-registered");
      reply.previous_removed = true;
      reply.previous_removed_reason = "the node re-registered";
    }
  }
  auto ev = members_.join(m.actor_address, from_wire(m.devices), m.pid, now());
  // Name the device actors before anyone hears of the join, so a lookup after it finds them.
  for (std::size_t i = 0; i < m.devices.size() && i < m.device_actors.size(); ++i)
    handle(name_bind{device_actor_name(ev.node.id, device_id{m.devices[i].kind, m.devices[i].index}.to_string()),
                     m.actor_address, m.device_actors[i]});
  // A node in this process cannot be silent while the head runs: only its actor going down ends it.
  const bool embedded = !m.process_token.empty() && m.process_token == kernels::process_token();
  watch_node(ev.node.id, m.actor_address, m.node_actor_id, embedded);
  if (config_.store && !embedded) {  // an embedded node dies with this process: nothing to restore
    keep(config_.store->put(kNodesTable, std::to_string(ev.node.id), node_json(ev.node, m.node_actor_id)),
         "a node's membership");
  }
  keep_meta();
  log::get("actors")->info("head: node {} joined from {} ({} devices, pid {}{}); epoch {}", ev.node.id, ev.node.address,
                           ev.node.devices.size(), ev.node.pid, embedded ? ", in this process" : "", ev.epoch);
  reply.node_id = ev.node.id;
  reply.epoch = ev.epoch;
  reply.heartbeat_interval_ms = static_cast<std::uint32_t>(config_.detector.heartbeat_interval.count());
  reply.failure_timeout_ms = static_cast<std::uint32_t>(config_.detector.failure_timeout.count());
  record(ev);
  return reply;
}

heartbeat_ack cluster_actor::handle(const node_heartbeat& m) {
  if (members_.heartbeat(m.node_id, now())) {
    detector_.heartbeat(m.node_id, now());
    return heartbeat_ack{true, members_.epoch(), {}};
  }
  const auto* rec = members_.find(m.node_id);
  return heartbeat_ack{false, members_.epoch(), rec ? rec->lost_reason : std::string{"not a member of this cluster"}};
}

cluster_view cluster_actor::view() const {
  cluster_view v;
  v.epoch = members_.epoch();
  v.head_pid = static_cast<std::uint32_t>(::getpid());
  v.heartbeat_interval_ms = static_cast<std::uint32_t>(config_.detector.heartbeat_interval.count());
  v.failure_timeout_ms = static_cast<std::uint32_t>(config_.detector.failure_timeout.count());
  for (const auto& [_, r] : members_.nodes()) v.nodes.push_back(to_wire(r));
  return v;
}

cluster_view cluster_actor::handle(get_cluster_view) { return view(); }

core::deferred<membership_update> cluster_actor::handle(const watch_membership& m) {
  auto reply = respond_later<membership_update>();
  if (m.after_epoch < members_.epoch()) {
    membership_update u;
    if (log_.empty() || log_.front().epoch > m.after_epoch + 1) {
      u.resync = true;
      u.view = view();
    } else {
      u.changes = changes_after(m.after_epoch);
    }
    reply.deliver(std::move(u));
    return reply;
  }
  const auto wait = std::min(std::chrono::milliseconds{m.wait_ms}, config_.max_kv_wait);
  if (wait.count() == 0) {
    reply.deliver(membership_update{});
    return reply;
  }
  const auto id = next_waiter_++;
  watchers_[id] = watcher{m.after_epoch, reply, send_after(wait, wait_expired{id})};
  return reply;
}

void cluster_actor::handle(kv_write m) {
  for (auto it = kv_waiters_.begin(); it != kv_waiters_.end();) {
    if (it->second.key == m.key) {
      it->second.timer.cancel();
      it->second.reply.deliver(kv_value{true, m.value});
      it = kv_waiters_.erase(it);
    } else {
      ++it;
    }
  }
  if (config_.store) keep(config_.store->put(kKvTable, m.key, m.value), "a KV entry");
  kv_[m.key] = std::move(m.value);
}

core::deferred<kv_value> cluster_actor::handle(const kv_read& m) {
  auto reply = respond_later<kv_value>();
  if (auto it = kv_.find(m.key); it != kv_.end()) {
    reply.deliver(kv_value{true, it->second});
  } else if (m.wait_ms == 0) {
    reply.deliver(kv_value{false, {}});
  } else {
    const auto wait = std::min(std::chrono::milliseconds{m.wait_ms}, config_.max_kv_wait);
    const auto id = next_waiter_++;
    kv_waiters_[id] = kv_waiter{m.key, reply, wait, send_after(wait, wait_expired{id})};
  }
  return reply;
}

void cluster_actor::handle(wait_expired m) {
  if (auto it = kv_waiters_.find(m.waiter); it != kv_waiters_.end()) {
    it->second.reply.deliver(
        make_error(errc::timeout, "key '{}' was not set within {} ms", it->second.key, it->second.wait.count()));
    kv_waiters_.erase(it);
  } else if (auto w = watchers_.find(m.waiter); w != watchers_.end()) {
    w->second.reply.deliver(membership_update{});
    watchers_.erase(w);
  }
}

void cluster_actor::handle(const name_bind& m) {
  names_[m.name] = name_entry{true, m.address, m.actor_id};
  if (config_.store)
    keep(config_.store->put(kNamesTable, m.name, nlohmann::json{{"address", m.address}, {"actor", m.actor_id}}.dump()),
         "a name");
}

name_entry cluster_actor::handle(const name_resolve& m) {
  auto it = names_.find(m.name);
  return it == names_.end() ? name_entry{} : it->second;
}

void cluster_actor::handle(stop_head) {
  log::get("actors")->info("head: shutdown requested");
  if (config_.store) {  // a clean stop: the next head starts a new cluster (jobs stay on record)
    keep(config_.store->clear(kNodesTable), "the end of membership");
    keep(config_.store->clear(kKvTable), "the end of the KV store");
    keep(config_.store->clear(kNamesTable), "the end of the names");
  }
  if (on_shutdown_) on_shutdown_();
}

void cluster_actor::handle(detector_tick) {
  const auto stalled = detector_.stalled_total();
  auto lost = detector_.tick(now());
  if (detector_.stalled_total() > stalled)
    log::get("actors")->warn("head: this process did not run for {} ms; that time does not count as any node's silence",
                             (detector_.stalled_total() - stalled).count());
  for (auto& s : lost) lose(s.node, std::move(s.reason));
}

void cluster_actor::on_down(const core::down_msg& m) {
  for (auto& [id, ref] : node_actors_)
    if (ref == m.source) {
      const auto node = id;
      lose(node, m.what.empty() ? fmt::format("its node actor went down ({})", core::to_string(m.reason))
                                : fmt::format("connection lost ({})", m.what));
      return;
    }
}

void cluster_actor::lose(std::uint64_t node, std::string reason) {
  detector_.remove(node);
  if (auto ev = members_.lose(node, std::move(reason))) on_lost(*ev);
}

void cluster_actor::on_lost(const membership_event& ev) {
  log::get("actors")->warn("head: node {} ({}) lost: {}; epoch {}", ev.node.id, ev.node.address, ev.node.lost_reason,
                           ev.epoch);
  for (auto it = names_.begin(); it != names_.end();) {
    if (it->second.address == ev.node.address) {
      if (config_.store) keep(config_.store->erase(kNamesTable, it->first), "a name's removal");
      it = names_.erase(it);
    } else {
      ++it;
    }
  }
  if (config_.store) keep(config_.store->erase(kNodesTable, std::to_string(ev.node.id)), "a node's loss");
  keep_meta();
  node_actor_ids_.erase(ev.node.id);
  if (auto it = node_actors_.find(ev.node.id); it != node_actors_.end()) {
    demonitor(it->second);
    // If its process is still there it learns that its membership ended and joins again.
    (void)it->second.try_tell(node_removed{ev.node.id, ev.epoch, ev.node.lost_reason});
    node_actors_.erase(it);
  }
  // Every proxy of this process to the node's actors goes down (their monitors fire) and
  // later sends fail at once, until the node joins again.
  host_->mark_dead(ev.node.address, fmt::format("node {} lost at epoch {}: {}", ev.node.id, ev.epoch, ev.node.lost_reason));
  record(ev);
}

void cluster_actor::record(const membership_event& ev) {
  membership_change c{ev.epoch,
                      ev.kind == membership_event::kind_t::joined ? membership_kind::joined : membership_kind::lost,
                      to_wire(ev.node)};
  log_.push_back(c);
  while (log_.size() > config_.membership_log) log_.pop_front();
  for (auto it = watchers_.begin(); it != watchers_.end();) {
    if (it->second.after < c.epoch) {
      membership_update u;
      u.changes = changes_after(it->second.after);
      it->second.timer.cancel();
      it->second.reply.deliver(std::move(u));
      it = watchers_.erase(it);
    } else {
      ++it;
    }
  }
}

std::vector<membership_change> cluster_actor::changes_after(std::uint64_t epoch) const {
  std::vector<membership_change> out;
  for (const auto& c : log_)
    if (c.epoch > epoch) out.push_back(c);
  return out;
}

// ---- head service ------------------------------------------------------------------------------

expected<std::unique_ptr<head_service>> head_service::start(net::event_loop& loop, head_config config,
                                                            std::function<void()> on_shutdown) {
  FLEXSP_TRY(config.validate());
  std::unique_ptr<head_service> h{new head_service{}};
  actor_host_config hc;
  hc.bind = config.bind;
  hc.advertise_host = config.advertise_host;
  if (hc.advertise_host.empty() && (config.bind.host == "0.0.0.0" || config.bind.host == "::")) {
    // "0.0.0.0:port" reaches nothing from another machine: tell others an address that does.
    if (auto a = net::primary_address()) {
      hc.advertise_host = *a;
    } else {
      log::get("actors")->warn("head: bound to every interface, but {}; devices on other machines cannot reach it "
                               "(give an address to advertise)",
                               a.error().message());
    }
  }
  hc.transport = config.transport;
  FLEXSP_TRY_ASSIGN(h->host_, actor_host::start(loop, hc));
  core::actor_system_config sc;
  sc.workers = 2;
  h->system_ = std::make_unique<core::actor_system>(sc);
  core::spawn_options o;
  o.name = "cluster";
  h->cluster_ = h->system_->spawn<cluster_actor>(o, h->host_, config, std::move(on_shutdown));
  // An ask may wait for a KV key or a membership change up to max_kv_wait.
  h->store_ = config.store;
  h->host_->publish(h->cluster_, config.max_kv_wait + std::chrono::seconds{30}, cluster_actor_id);
  log::get("actors")->info("head: listening on {} (heartbeat {} ms, failure timeout {} ms)", h->host_->address(),
                           config.detector.heartbeat_interval.count(), config.detector.failure_timeout.count());
  return h;
}

head_service::~head_service() {
  stop();
  if (system_) system_->shutdown();
}

std::uint16_t head_service::port() const {
  auto ep = net::endpoint::parse(host_->address());
  return ep ? ep->port : 0;
}

void head_service::stop() {
  if (host_) host_->stop();
  if (cluster_.valid()) cluster_.stop();
}

}  // namespace flexsp::actors
