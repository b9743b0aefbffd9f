#include "flexsp/actors/head.hpp"

#include <unistd.h>

#include <list>
#include <map>
#include <unordered_map>

#include "flexsp/core/log.hpp"
#include "cluster_wire.hpp"
#include "wire_convert.hpp"

namespace flexsp::actors {

using wire::body_kind;
using Clock = std::chrono::steady_clock;

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
  return transport.validate();
}

namespace {
void send_error(net::connection& c, std::uint64_t request_id, errc kind, const std::string& message) {
  capnp::MallocMessageBuilder msg{128};
  auto e = wire::start_envelope(msg, request_id).getBody().initError();
  e.setKind(std::string{to_string(kind)});
  e.setMessage(message);
  c.send(msg);
}
void send_ack(net::connection& c, std::uint64_t request_id) {
  capnp::MallocMessageBuilder msg{64};
  wire::start_envelope(msg, request_id).getBody().setAck();
  c.send(msg);
}
}  // namespace

struct head_service::impl : std::enable_shared_from_this<impl> {
  struct peer_state {
    std::shared_ptr<net::connection> conn;
    std::uint64_t node_id = 0;  // nonzero once registered
    bool subscribed = false;
  };
  struct kv_waiter {
    std::weak_ptr<net::connection> conn;
    std::uint64_t request_id;
    std::uint64_t timer;
  };
  struct name_entry {
    std::string address;
    std::uint64_t actor_id;
  };

  impl(net::event_loop& l, head_config c, std::function<void()> s)
      : loop{l}, config{std::move(c)}, on_shutdown{std::move(s)} {}

  net::event_loop& loop;
  head_config config;
  std::function<void()> on_shutdown;
  std::unique_ptr<net::listener> listener;
  std::unordered_map<const net::connection*, peer_state> peers;
  std::unordered_map<std::uint64_t, const net::connection*> node_conns;
  membership_table members;
  std::map<std::string, std::string> kv;
  std::multimap<std::string, kv_waiter> kv_waiters;
  std::map<std::string, name_entry> names;
  std::uint64_t detector_timer = 0;
  bool stopped = false;

  void accept(std::shared_ptr<net::connection> c) {
    if (stopped) {
      c->abort(error{errc::cancelled, "head is stopping"});
      return;
    }
    peers[c.get()] = peer_state{c};
    log::get("actors")->debug("head: {} connected as {}", c->peer(), static_cast<int>(c->role()));
    std::weak_ptr<impl> weak = shared_from_this();
    c->start(
        [weak](net::connection& conn, wire::envelope_reader env) {
          if (auto self = weak.lock()) self->on_message(conn, env);
        },
        [weak](net::connection& conn, const error& why) {
          if (auto self = weak.lock()) self->on_closed(conn, why);
        });
  }

  void on_closed(net::connection& c, const error& why) {
    auto it = peers.find(&c);
    if (it == peers.end()) return;
    const std::uint64_t node = it->second.node_id;
    peers.erase(it);
    if (node != 0) {
      node_conns.erase(node);
      lose(node, fmt::format("connection closed ({})", why.message()));
    }
  }

  void on_message(net::connection& c, wire::envelope_reader env) {
    auto it = peers.find(&c);
    if (it == peers.end()) return;
    peer_state& p = it->second;
    const auto rid = env.getRequestId();
    auto body = env.getBody();
    if (p.node_id != 0) members.heartbeat(p.node_id, Clock::now());
    if (body.which() == body_kind::SERVICE) {
      on_cluster_message(c, p, rid, env);
      return;
    }
    switch (body.which()) {
      case body_kind::SHUTDOWN:
        if (c.role() != wire::schema::Role::CLIENT) {
          send_error(c, rid, errc::invalid_argument, "only clients may shut the head down");
          break;
        }
        log::get("actors")->info("head: shutdown requested by {}", c.peer());
        send_ack(c, rid);
        if (on_shutdown) loop.post(on_shutdown);
        break;
      default:
        log::get("actors")->warn("head: unexpected {} from {}; closing", wire::body_name(body.which()), c.peer());
        c.close(error{errc::protocol, "unexpected " + wire::body_name(body.which())});
    }
  }

  void on_cluster_message(net::connection& c, peer_state& p, std::uint64_t rid, wire::envelope_reader env) {
    using namespace detail;
    const auto type = cluster_type(env);
    if (type == capnp::typeId<cs::RegisterNode>()) {
      on_register(p, rid, cluster_body<cs::RegisterNode>(env));
    } else if (type == capnp::typeId<cs::Heartbeat>()) {
      const auto hb_in = cluster_body<cs::Heartbeat>(env);
      if (p.node_id == 0 || hb_in.getNodeId() != p.node_id) {
        c.close(error{errc::protocol, "heartbeat from an unregistered connection"});
        log::get("actors")->warn("head: heartbeat for node {} from unregistered connection {}", hb_in.getNodeId(),
                                 c.peer());
      } else {
        // Echo so that the node can tell a hung head from a quiet one.
        capnp::MallocMessageBuilder msg{64};
        auto hb = start_cluster<cs::Heartbeat>(msg);
        hb.setNodeId(p.node_id);
        hb.setSequence(hb_in.getSequence());
        c.send(msg);
      }
    } else if (type == capnp::typeId<cs::StatusRequest>()) {
      capnp::MallocMessageBuilder msg;
      fill_status(start_cluster<cs::Status>(msg, rid).initStatus());
      c.send(msg);
    } else if (type == capnp::typeId<cs::Subscribe>()) {
      p.subscribed = true;
      capnp::MallocMessageBuilder msg;
      fill_status(start_cluster<cs::Subscribed>(msg, rid).initStatus());
      c.send(msg);
    } else if (type == capnp::typeId<cs::KvSet>()) {
      on_kv_set(c, rid, cluster_body<cs::KvSet>(env));
    } else if (type == capnp::typeId<cs::KvGet>()) {
      on_kv_get(c, rid, cluster_body<cs::KvGet>(env));
    } else if (type == capnp::typeId<cs::NameRegister>()) {
      auto r = cluster_body<cs::NameRegister>(env);
      names[r.getName().cStr()] = name_entry{r.getAddress().cStr(), r.getActorId()};
      send_ack(c, rid);
    } else if (type == capnp::typeId<cs::NameLookup>()) {
      capnp::MallocMessageBuilder msg{128};
      auto reply = start_cluster<cs::NameReply>(msg, rid);
      auto n = names.find(cluster_body<cs::NameLookup>(env).getName().cStr());
      reply.setFound(n != names.end());
      if (n != names.end()) {
        reply.setAddress(n->second.address);
        reply.setActorId(n->second.actor_id);
      }
      c.send(msg);
    } else {
      log::get("actors")->warn("head: unexpected cluster message {:#018x} from {}; closing", type, c.peer());
      c.close(error{errc::protocol, fmt::format("unexpected cluster message {:#018x}", type)});
    }
  }

  void on_register(peer_state& p, std::uint64_t rid, detail::cs::RegisterNode::Reader r) {
    if (p.conn->role() != wire::schema::Role::NODE) {
      send_error(*p.conn, rid, errc::invalid_argument, "only node connections may register");
      return;
    }
    if (p.node_id != 0) {
      send_error(*p.conn, rid, errc::invalid_argument, "this connection already registered");
      return;
    }
    std::string previous_reason;
    bool previous_removed = false;
    if (auto prev = r.getPreviousId(); prev != 0) {
      if (const auto* rec = members.find(prev); rec && rec->state == node_state::dead) {
        previous_removed = true;
        previous_reason = rec->lost_reason;
      } else if (rec && rec->state == node_state::alive) {
        // The old connection is still open (half-open TCP): the new one supersedes it.
        if (auto c = node_conns.find(prev); c != node_conns.end()) peers[c->second].node_id = 0;
        lose(prev, "the node re-registered on a new connection");
        previous_removed = true;
        previous_reason = "the node re-registered on a new connection";
      }
    }
    auto ev = members.join(r.getActorAddress().cStr(), detail::from_wire(r.getDevices()), r.getPid(), Clock::now());
    p.node_id = ev.node.id;
    node_conns[ev.node.id] = p.conn.get();
    log::get("actors")->info("head: node {} joined from {} (actor address {}, {} devices); epoch {}", ev.node.id,
                             p.conn->peer(), ev.node.address, ev.node.devices.size(), ev.epoch);
    capnp::MallocMessageBuilder msg{128};
    auto reg = detail::start_cluster<detail::cs::Registered>(msg, rid);
    reg.setNodeId(ev.node.id);
    reg.setEpoch(ev.epoch);
    reg.setHeartbeatIntervalMs(static_cast<std::uint32_t>(config.detector.heartbeat_interval.count()));
    reg.setFailureTimeoutMs(static_cast<std::uint32_t>(config.detector.failure_timeout.count()));
    reg.setPreviousRemoved(previous_removed);
    reg.setPreviousRemovedReason(previous_reason);
    p.conn->send(msg);
    publish(ev);
  }

  void lose(std::uint64_t node, std::string reason) {
    if (auto ev = members.lose(node, std::move(reason))) on_lost(*ev);
  }

  void publish(const membership_event& ev) {
    capnp::MallocMessageBuilder msg{256};
    auto b = detail::start_cluster<detail::cs::MembershipEvent>(msg);
    b.setEpoch(ev.epoch);
    b.setKind(ev.kind == membership_event::kind_t::joined ? detail::cs::MembershipEvent::Kind::JOINED
                                                          : detail::cs::MembershipEvent::Kind::LOST);
    detail::to_wire(ev.node, b.initNode());
    for (auto& [_, p] : peers)
      if (p.subscribed) p.conn->send(msg);
  }

  void fill_status(detail::cs::ClusterStatus::Builder s) {
    s.setEpoch(members.epoch());
    s.setHeadPid(static_cast<std::uint32_t>(::getpid()));
    s.setHeartbeatIntervalMs(static_cast<std::uint32_t>(config.detector.heartbeat_interval.count()));
    s.setFailureTimeoutMs(static_cast<std::uint32_t>(config.detector.failure_timeout.count()));
    auto list = s.initNodes(static_cast<unsigned>(members.nodes().size()));
    unsigned i = 0;
    for (const auto& [id, r] : members.nodes()) detail::to_wire(r, list[i++]);
  }

  void on_kv_set(net::connection& c, std::uint64_t rid, detail::cs::KvSet::Reader r) {
    const std::string key = r.getKey().cStr();
    auto v = r.getValue();
    std::string value{reinterpret_cast<const char*>(v.begin()), v.size()};
    send_ack(c, rid);
    auto range = kv_waiters.equal_range(key);
    for (auto it = range.first; it != range.second; ++it) {
      loop.cancel(it->second.timer);
      if (auto w = it->second.conn.lock()) send_kv(*w, it->second.request_id, &value);
    }
    kv_waiters.erase(range.first, range.second);
    kv[key] = std::move(value);
  }

  void send_kv(net::connection& c, std::uint64_t rid, const std::string* value) {
    capnp::MallocMessageBuilder msg{128};
    auto reply = detail::start_cluster<detail::cs::KvReply>(msg, rid);
    reply.setFound(value != nullptr);
    if (value) reply.setValue(kj::arrayPtr(reinterpret_cast<const kj::byte*>(value->data()), value->size()));
    c.send(msg);
  }

  void on_kv_get(net::connection& c, std::uint64_t rid, detail::cs::KvGet::Reader r) {
    const std::string key = r.getKey().cStr();
    if (auto it = kv.find(key); it != kv.end()) {
      send_kv(c, rid, &it->second);
      return;
    }
    if (r.getWaitMs() == 0) {
      send_kv(c, rid, nullptr);
      return;
    }
    const auto wait = std::min(std::chrono::milliseconds{r.getWaitMs()}, config.max_kv_wait);
    std::weak_ptr<net::connection> wc = c.shared_from_this();
    std::weak_ptr<impl> weak = shared_from_this();
    auto entry = kv_waiters.emplace(key, kv_waiter{wc, rid, 0});
    entry->second.timer = loop.schedule(wait, [weak, wc, rid, key, wait]() {
      auto self = weak.lock();
      if (!self) return;
      auto range = self->kv_waiters.equal_range(key);
      for (auto it = range.first; it != range.second; ++it) {
        if (it->second.request_id == rid && it->second.conn.lock() == wc.lock()) {
          self->kv_waiters.erase(it);
          break;
        }
      }
      if (auto conn = wc.lock())
        send_error(*conn, rid, errc::timeout, fmt::format("key '{}' was not set within {} ms", key, wait.count()));
    });
  }

  void arm_detector() {
    const auto period = std::max(std::chrono::milliseconds{1}, config.detector.heartbeat_interval / 4);
    std::weak_ptr<impl> weak = shared_from_this();
    detector_timer = loop.schedule(period, [weak]() {
      auto self = weak.lock();
      if (!self || self->stopped) return;
      for (auto& ev : self->members.expire(Clock::now(), self->config.detector.failure_timeout)) self->on_lost(ev);
      self->arm_detector();
    });
  }

  void on_lost(const membership_event& ev) {
    log::get("actors")->warn("head: node {} ({}) lost: {}; epoch {}", ev.node.id, ev.node.address, ev.node.lost_reason,
                             ev.epoch);
    for (auto it = names.begin(); it != names.end();)
      it = it->second.address == ev.node.address ? names.erase(it) : std::next(it);
    if (auto c = node_conns.find(ev.node.id); c != node_conns.end()) {
      auto pit = peers.find(c->second);
      node_conns.erase(c);
      if (pit != peers.end()) {
        pit->second.node_id = 0;
        capnp::MallocMessageBuilder msg{128};
        auto rm = detail::start_cluster<detail::cs::Removed>(msg);
        rm.setNodeId(ev.node.id);
        rm.setEpoch(ev.epoch);
        rm.setReason(ev.node.lost_reason);
        pit->second.conn->send(msg);
        pit->second.conn->close(error{errc::cancelled, "node removed from the cluster"});
      }
    }
    publish(ev);
  }

  void shutdown() {
    if (stopped) return;
    stopped = true;
    if (detector_timer) loop.cancel(detector_timer);
    if (listener) listener->close();
    std::vector<std::shared_ptr<net::connection>> conns;
    for (auto& [_, p] : peers) conns.push_back(p.conn);
    for (auto& c : conns) c->close(error{errc::cancelled, "head stopping"});
  }
};

expected<std::unique_ptr<head_service>> head_service::start(net::event_loop& loop, head_config config,
                                                            std::function<void()> on_shutdown) {
  FLEXSP_TRY(config.validate());
  auto i = std::make_shared<impl>(loop, config, std::move(on_shutdown));
  std::weak_ptr<impl> weak = i;
  FLEXSP_TRY_ASSIGN(i->listener, net::listener::open(loop, config.bind, config.transport,
                                                     [weak](std::shared_ptr<net::connection> c) {
                                                       if (auto self = weak.lock()) self->accept(std::move(c));
                                                     }));
  loop.post([i]() { i->arm_detector(); });
  log::get("actors")->info("head: listening on {}:{} (heartbeat {} ms, failure timeout {} ms)", config.bind.host,
                           i->listener->port(), config.detector.heartbeat_interval.count(),
                           config.detector.failure_timeout.count());
  return std::unique_ptr<head_service>{new head_service{std::move(i)}};
}

head_service::~head_service() { stop(); }

std::uint16_t head_service::port() const { return impl_->listener->port(); }

void head_service::stop() {
  auto i = impl_;
  if (impl_->loop.in_loop_thread()) {
    i->shutdown();
  } else {
    impl_->loop.post([i]() { i->shutdown(); });
  }
}

}  // namespace flexsp::actors
