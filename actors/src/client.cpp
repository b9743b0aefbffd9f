#include "flexsp/actors/client.hpp"

#include <map>

#include "flexsp/core/actor.hpp"
#include "flexsp/core/log.hpp"

namespace flexsp::actors {

std::size_t cluster_status::alive_count() const {
  std::size_t n = 0;
  for (const auto& r : nodes) n += r.state == node_state::alive;
  return n;
}

cluster_status from_wire(const cluster_view& v) {
  cluster_status out;
  out.epoch = v.epoch;
  out.head_pid = v.head_pid;
  out.heartbeat_interval = std::chrono::milliseconds{v.heartbeat_interval_ms};
  out.failure_timeout = std::chrono::milliseconds{v.failure_timeout_ms};
  for (const auto& n : v.nodes) out.nodes.push_back(from_wire(n));
  return out;
}

namespace {

/// Upper bound of one membership watch; the head answers at once when membership changes.
constexpr std::chrono::milliseconds kWatchWait{10000};

/// Long-polls the cluster actor for membership changes and hands each to a handler, once, in
/// epoch order.
class membership_watcher : public core::actor<membership_watcher> {
public:
  struct poll {};
  using interface = core::interface<poll>;

  membership_watcher(std::weak_ptr<actor_host> host, net::endpoint head, core::actor_ref<cluster_actor> cluster,
                     cluster_status initial, cluster_client::event_handler handler)
      : host_{std::move(host)}, head_{std::move(head)}, cluster_{std::move(cluster)}, after_{initial.epoch},
        handler_{std::move(handler)} {
    for (const auto& n : initial.nodes) known_[n.id] = n.state == node_state::alive;
  }
  void on_start() override { watch(); }
  void handle(poll) { watch(); }

private:
  void watch() {
    // A proxy that went down (the head's connection broke) stays down: a new one reconnects.
    if (!cluster_.alive())
      if (auto host = host_.lock()) cluster_ = cluster_at(*host, head_);
    request(cluster_, watch_membership{after_, static_cast<std::uint32_t>(kWatchWait.count())}, kWatchWait * 2,
            [this](expected<membership_update> u) {
              if (!u) {
                (void)send_after(std::chrono::milliseconds{200}, poll{});
                return;
              }
              if (u->resync) resync(u->view);
              for (const auto& c : u->changes) {
                if (c.epoch <= after_) continue;
                after_ = c.epoch;
                auto ev = membership_event{c.kind == membership_kind::joined ? membership_event::kind_t::joined
                                                                             : membership_event::kind_t::lost,
                                           c.epoch, from_wire(c.node)};
                known_[ev.node.id] = ev.kind == membership_event::kind_t::joined;
                handler_(ev);
              }
              watch();
            });
  }
  // The head no longer remembers every change since `after_`: report the difference.
  void resync(const cluster_view& v) {
    for (const auto& n : v.nodes) {
      auto it = known_.find(n.id);
      const bool was_alive = it != known_.end() && it->second;
      if (n.alive == was_alive) continue;
      known_[n.id] = n.alive;
      handler_(membership_event{n.alive ? membership_event::kind_t::joined : membership_event::kind_t::lost, v.epoch,
                                from_wire(n)});
    }
    after_ = v.epoch;
  }

  std::weak_ptr<actor_host> host_;
  net::endpoint head_;
  core::actor_ref<cluster_actor> cluster_;
  std::uint64_t after_;
  cluster_client::event_handler handler_;
  std::map<std::uint64_t, bool> known_;
};

}  // namespace

struct cluster_client::impl {
  // Only for `connect`: the client's own I/O thread and actor system.
  std::unique_ptr<net::event_loop> loop;
  std::unique_ptr<core::actor_system> own_system;
  std::shared_ptr<actor_host> host;
  core::actor_system* system = nullptr;
  net::endpoint head;
  std::mutex mutex;
  std::vector<core::actor_ref<membership_watcher>> watchers;

  /// The cluster actor's proxy; a new one when the last went down (a proxy whose connection
  /// broke while something monitored it stays down; a new one connects again).
  core::actor_ref<cluster_actor> current() {
    std::lock_guard lock{mutex};
    if (!cluster.alive()) cluster = cluster_at(*host, head);
    return cluster;
  }
  core::actor_ref<cluster_actor> cluster;

  ~impl() {
    for (auto& w : watchers) w.stop();
    if (own_system) {
      host->stop();
      own_system->shutdown();
      cluster = {};
      host.reset();  // the host's last reference: it closes on the loop, which still runs
      loop->stop();
    }
  }
};

cluster_client::cluster_client(std::unique_ptr<impl> i) : impl_{std::move(i)} {}
cluster_client::~cluster_client() = default;

expected<std::unique_ptr<cluster_client>> cluster_client::connect(const net::endpoint& head,
                                                                  net::transport_config transport) {
  auto i = std::make_unique<impl>();
  i->loop = std::make_unique<net::event_loop>();
  i->loop->start();
  actor_host_config hc;
  hc.bind = net::endpoint{"127.0.0.1", 0};  // only for replies on our own connections
  hc.transport = std::move(transport);
  FLEXSP_TRY_ASSIGN(i->host, actor_host::start(*i->loop, hc));
  i->own_system = std::make_unique<core::actor_system>(core::actor_system_config{.workers = 1});
  i->system = i->own_system.get();
  i->cluster = cluster_at(*i->host, head);
  i->head = head;
  std::unique_ptr<cluster_client> c{new cluster_client{std::move(i)}};
  FLEXSP_TRY(c->status());
  return c;
}

expected<std::unique_ptr<cluster_client>> cluster_client::attach(std::shared_ptr<actor_host> host,
                                                                 core::actor_system& system, const net::endpoint& head) {
  auto i = std::make_unique<impl>();
  i->system = &system;
  i->cluster = cluster_at(*host, head);
  i->head = head;
  i->host = std::move(host);
  std::unique_ptr<cluster_client> c{new cluster_client{std::move(i)}};
  FLEXSP_TRY(c->status());
  return c;
}

expected<cluster_status> cluster_client::status() {
  FLEXSP_TRY_ASSIGN(auto v, impl_->current().ask(get_cluster_view{}, request_timeout).get());
  return from_wire(v);
}

expected<void> cluster_client::kv_set(const std::string& key, const std::string& value) {
  return impl_->current().ask(kv_write{key, value}, request_timeout).get();
}

expected<std::optional<std::string>> cluster_client::kv_get(const std::string& key) {
  FLEXSP_TRY_ASSIGN(auto v, impl_->current().ask(kv_read{key, 0}, request_timeout).get());
  if (!v.found) return std::optional<std::string>{};
  return std::optional<std::string>{std::move(v.value)};
}

expected<std::string> cluster_client::kv_wait(const std::string& key, std::chrono::milliseconds wait) {
  const auto ms = std::clamp<std::int64_t>(wait.count(), 1, std::numeric_limits<std::uint32_t>::max());
  FLEXSP_TRY_ASSIGN(auto v, impl_->current().ask(kv_read{key, static_cast<std::uint32_t>(ms)}, wait + request_timeout).get());
  if (!v.found) return make_error(errc::timeout, "key '{}' was not set within {} ms", key, wait.count());
  return std::move(v.value);
}

expected<void> cluster_client::register_name(const std::string& name, const remote_address& where) {
  return impl_->current().ask(name_bind{name, where.host, where.actor_id}, request_timeout).get();
}

expected<remote_address> cluster_client::lookup(const std::string& name) {
  FLEXSP_TRY_ASSIGN(auto e, impl_->current().ask(name_resolve{name}, request_timeout).get());
  if (!e.found) return make_error(errc::not_found, "no actor named '{}'", name);
  return remote_address{e.address, e.actor_id};
}

expected<cluster_status> cluster_client::subscribe(event_handler handler) {
  FLEXSP_TRY_ASSIGN(auto s, status());
  core::spawn_options o;
  o.name = "membership-watcher";
  auto w = impl_->system->spawn<membership_watcher>(o, std::weak_ptr<actor_host>{impl_->host}, impl_->head,
                                                    impl_->current(), s, std::move(handler));
  std::lock_guard lock{impl_->mutex};
  impl_->watchers.push_back(std::move(w));
  return s;
}

expected<void> cluster_client::shutdown_head() { return impl_->current().ask(stop_head{}, request_timeout).get(); }

}  // namespace flexsp::actors
