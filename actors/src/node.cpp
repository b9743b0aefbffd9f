#include "flexsp/actors/node.hpp"

#include <unistd.h>

#include <algorithm>
#include <atomic>

#include "flexsp/actors/device_actor.hpp"
#include "flexsp/core/log.hpp"
#include "flexsp/kernels/ops.hpp"
#include "cluster_wire.hpp"
#include "wire_convert.hpp"

namespace flexsp::actors {

using wire::body_kind;
using Clock = std::chrono::steady_clock;

expected<void> node_config::validate() const {
  if (devices.empty()) return make_error(errc::invalid_argument, "a node needs at least one device");
  if (head.port == 0) return make_error(errc::invalid_argument, "head address {} has no port", head.to_string());
  return transport.validate();
}

struct node_service::impl : std::enable_shared_from_this<impl> {
  impl(net::event_loop& l, node_config c) : loop{l}, config{std::move(c)}, backoff{config.reconnect} {}
  impl(const impl&) = delete;
  impl& operator=(const impl&) = delete;

  // Runs the device actors and their trainers' blocking workers; destroyed last.
  std::unique_ptr<core::actor_system> system;
  net::event_loop& loop;
  node_config config;
  std::shared_ptr<actor_host> host;
  struct device_entry {
    device_id device;
    core::actor_ref<device_actor> ref;
    std::uint64_t actor_id = 0;  // in `host`
  };
  std::vector<device_entry> devices;
  std::shared_ptr<net::connection> conn;
  std::atomic<std::uint64_t> node_id{0};
  std::uint64_t previous_id = 0;
  int cpu_devices = 0;  // counted in kernels::add_cpu_devices while the node lives
  std::uint64_t sequence = 0;
  std::uint64_t heartbeat_timer = 0;
  std::chrono::milliseconds interval{500};
  std::chrono::milliseconds timeout{3000};
  Clock::time_point last_heard{};
  Clock::time_point unreachable_since{};
  net::backoff backoff;
  bool stopped = false;
  std::function<void(const registration&)> on_registered;
  std::function<void(const error&)> on_fatal;

  void connect() {
    if (stopped) return;
    std::weak_ptr<impl> weak = shared_from_this();
    net::connect(loop, config.head, wire::schema::Role::NODE, config.transport,
                 [weak](expected<std::shared_ptr<net::connection>> c) {
                   if (auto self = weak.lock()) self->on_connected(std::move(c));
                 });
  }

  void retry(const error& why) {
    if (stopped) return;
    const auto now = Clock::now();
    if (unreachable_since == Clock::time_point{}) unreachable_since = now;
    if (config.give_up_after.count() > 0 && now - unreachable_since > config.give_up_after) {
      log::get("actors")->error("node: the head at {} has been unreachable for {} ms; giving up ({})",
                                config.head.to_string(), config.give_up_after.count(), why.message());
      stopped = true;
      if (on_fatal) on_fatal(error{errc::disconnected, fmt::format("head {} unreachable: {}", config.head.to_string(), why.message())});
      return;
    }
    const auto delay = backoff.next();
    log::get("actors")->info("node: {}; reconnecting to {} in {} ms", why.message(), config.head.to_string(), delay.count());
    std::weak_ptr<impl> weak = shared_from_this();
    loop.schedule(delay, [weak]() {
      if (auto self = weak.lock()) self->connect();
    });
  }

  void on_connected(expected<std::shared_ptr<net::connection>> c) {
    if (stopped) {
      if (c) (*c)->abort(error{errc::cancelled, "node stopping"});
      return;
    }
    if (!c) {
      // A rejected secret will not get better by retrying.
      if (c.error().kind() == errc::failed && c.error().message().find("rejected") != std::string::npos) {
        log::get("actors")->error("node: {}", c.error().message());
        stopped = true;
        if (on_fatal) on_fatal(c.error());
        return;
      }
      retry(c.error());
      return;
    }
    conn = std::move(*c);
    std::weak_ptr<impl> weak = shared_from_this();
    conn->start(
        [weak](net::connection& cn, wire::envelope_reader env) {
          if (auto self = weak.lock()) self->on_message(cn, env);
        },
        [weak](net::connection& cn, const error& why) {
          if (auto self = weak.lock()) self->on_closed(cn, why);
        });
    capnp::MallocMessageBuilder msg{256};
    auto reg = detail::start_cluster<detail::cs::RegisterNode>(msg, 1);
    reg.setActorAddress(host->address());
    detail::to_wire(config.devices, reg.initDevices(static_cast<unsigned>(config.devices.size())));
    reg.setPreviousId(previous_id);
    reg.setPid(static_cast<std::uint32_t>(::getpid()));
    conn->send(msg);
    last_heard = Clock::now();
  }

  void on_message(net::connection& c, wire::envelope_reader env) {
    last_heard = Clock::now();
    auto body = env.getBody();
    if (body.which() == body_kind::SERVICE) {
      on_cluster_message(c, env);
      return;
    }
    switch (body.which()) {
      case body_kind::ACK: break;
      case body_kind::ERROR:
        log::get("actors")->warn("node: the head answered with an error: {}", body.getError().getMessage().cStr());
        break;
      default:
        log::get("actors")->warn("node: unexpected {} from the head", wire::body_name(body.which()));
    }
  }

  void on_cluster_message(net::connection& c, wire::envelope_reader env) {
    using namespace detail;
    const auto type = cluster_type(env);
    if (type == capnp::typeId<cs::Registered>()) {
      on_registered_msg(cluster_body<cs::Registered>(env));
    } else if (type == capnp::typeId<cs::Heartbeat>()) {
      // the head's echo: last_heard is updated for every message
    } else if (type == capnp::typeId<cs::Removed>()) {
      auto r = cluster_body<cs::Removed>(env);
      log::get("actors")->warn("node: removed from the cluster as node {} at epoch {}: {}; rejoining as a new member",
                               r.getNodeId(), r.getEpoch(), r.getReason().cStr());
      c.close(error{errc::cancelled, "removed by the head"});
    } else if (type == capnp::typeId<cs::MembershipEvent>()) {
      auto e = cluster_body<cs::MembershipEvent>(env);
      const std::string address = e.getNode().getAddress().cStr();
      if (address == host->address()) return;
      if (e.getKind() == cs::MembershipEvent::Kind::LOST)
        host->mark_dead(address, fmt::format("node {} lost at epoch {}: {}", e.getNode().getId(), e.getEpoch(),
                                             e.getNode().getLostReason().cStr()));
      else
        host->mark_alive(address);
    } else if (type == capnp::typeId<cs::Subscribed>()) {
      for (auto n : cluster_body<cs::Subscribed>(env).getStatus().getNodes())
        if (!n.getAlive() && n.getAddress() != host->address())
          host->mark_dead(n.getAddress().cStr(), fmt::format("node {} is not a member", n.getId()));
    } else {
      log::get("actors")->warn("node: unexpected cluster message {:#018x} from the head", type);
    }
  }

  void on_registered_msg(detail::cs::Registered::Reader r) {
    registration reg{r.getNodeId(), r.getEpoch(), r.getPreviousRemoved(), r.getPreviousRemovedReason().cStr()};
    node_id = reg.node_id;
    backoff.reset();
    unreachable_since = {};
    interval = std::chrono::milliseconds{std::max<std::uint32_t>(1, r.getHeartbeatIntervalMs())};
    timeout = std::chrono::milliseconds{std::max<std::uint32_t>(2, r.getFailureTimeoutMs())};
    if (reg.previous_removed)
      log::get("actors")->warn("node: previous membership as node {} had been ended by the head ({}); rejoined as node {} at epoch {}",
                               previous_id, reg.previous_reason, reg.node_id, reg.epoch);
    else
      log::get("actors")->info("node: registered as node {} at epoch {} ({} devices, actors at {})", reg.node_id,
                               reg.epoch, devices.size(), host->address());
    for (auto& d : devices) {
      d.ref.tell(set_node_id{reg.node_id});
      capnp::MallocMessageBuilder msg{128};
      auto n = detail::start_cluster<detail::cs::NameRegister>(msg, 2);
      n.setName(fmt::format("device/{}/{}", reg.node_id, d.device.to_string()));
      n.setAddress(host->address());
      n.setActorId(d.actor_id);
      conn->send(msg);
    }
    capnp::MallocMessageBuilder sub{64};
    detail::start_cluster<detail::cs::Subscribe>(sub, 3);
    conn->send(sub);
    arm_heartbeat();
    if (on_registered) on_registered(reg);
  }

  void arm_heartbeat() {
    if (heartbeat_timer) loop.cancel(heartbeat_timer);
    std::weak_ptr<impl> weak = shared_from_this();
    heartbeat_timer = loop.schedule(interval, [weak]() {
      auto self = weak.lock();
      if (!self || self->stopped || !self->conn || self->node_id == 0) return;
      self->heartbeat_timer = 0;
      const auto silent = Clock::now() - self->last_heard;
      if (silent > self->timeout) {
        self->conn->abort(error{errc::timeout, fmt::format("the head has been silent for {} ms",
                                                           std::chrono::duration_cast<std::chrono::milliseconds>(silent).count())});
        return;
      }
      capnp::MallocMessageBuilder msg{64};
      auto hb = detail::start_cluster<detail::cs::Heartbeat>(msg);
      hb.setNodeId(self->node_id);
      hb.setSequence(++self->sequence);
      self->conn->send(msg);
      self->arm_heartbeat();
    });
  }

  void on_closed(net::connection& c, const error& why) {
    if (conn.get() != &c) return;
    conn.reset();
    if (heartbeat_timer) loop.cancel(heartbeat_timer);
    heartbeat_timer = 0;
    if (node_id != 0) previous_id = node_id;
    node_id = 0;
    retry(why);
  }

  ~impl() {
    if (host) host->stop();
    devices.clear();
    if (system) system->shutdown();  // the device actors and their trainers stop here
    if (cpu_devices > 0) kernels::add_cpu_devices(-cpu_devices);
  }

  void shutdown() {
    if (stopped && !conn) {
      host->stop();
      return;
    }
    stopped = true;
    if (heartbeat_timer) loop.cancel(heartbeat_timer);
    if (conn) conn->close(error{errc::cancelled, "node leaving"});
    host->stop();
  }
};

expected<std::unique_ptr<node_service>> node_service::start(net::event_loop& loop, node_config config,
                                                            std::function<void(const registration&)> on_registered,
                                                            std::function<void(const error&)> on_fatal) {
  FLEXSP_TRY(config.validate());
  auto i = std::make_shared<impl>(loop, config);
  i->on_registered = std::move(on_registered);
  i->on_fatal = std::move(on_fatal);
  actor_host_config hc;
  hc.bind = config.bind;
  hc.advertise_host = config.advertise_host;
  hc.transport = config.transport;
  FLEXSP_TRY_ASSIGN(i->host, actor_host::start(loop, hc));
  i->cpu_devices = static_cast<int>(
      std::count_if(config.devices.begin(), config.devices.end(), [](const device_id& d) { return d.kind == device_kind::cpu; }));
  if (i->cpu_devices > 0)
    log::get("device")->info("{} cpu devices here; CPU GEMM threads per device: {}", i->cpu_devices,
                             kernels::add_cpu_devices(i->cpu_devices));
  // Each device's trainer runs steps and tears down communicators on blocking actors: two
  // threads of the blocking pool per device, so that every device of an SP group can be in a
  // collective at once.
  core::actor_system_config sc;
  sc.workers = 2;
  sc.blocking_workers = 2 * config.devices.size() + 2;
  i->system = std::make_unique<core::actor_system>(sc);
  for (const auto& d : config.devices) {
    auto trainer =
        std::make_shared<device_trainer>(device_context{config.head, config.transport, i->host, d, i->system.get()});
    core::spawn_options o;
    o.name = "device:" + d.to_string();
    auto ref = i->system->spawn<device_actor>(o, d, std::uint64_t{0}, std::move(trainer));
    const auto id = i->host->publish(ref);
    i->devices.push_back({d, std::move(ref), id});
  }
  loop.post([i]() { i->connect(); });
  return std::unique_ptr<node_service>{new node_service{std::move(i)}};
}

node_service::~node_service() { stop(); }

std::uint64_t node_service::node_id() const { return impl_->node_id.load(); }
std::string node_service::actor_address() const { return impl_->host->address(); }
std::shared_ptr<actor_host> node_service::host() const { return impl_->host; }

void node_service::stop() {
  auto i = impl_;
  if (i->loop.in_loop_thread())
    i->shutdown();
  else
    i->loop.post([i]() { i->shutdown(); });
}

}  // namespace flexsp::actors
