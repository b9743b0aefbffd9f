#include "flexsp/actors/remote.hpp"

#include <algorithm>
#include <map>
#include <mutex>
#include <unordered_map>

#include "flexsp/core/detail/watchers.hpp"
#include "flexsp/core/log.hpp"
#include "flexsp/core/timer.hpp"

namespace flexsp::actors {

using Clock = std::chrono::steady_clock;

namespace {

/// Timers for proxies' ask deadlines; shared so that a proxy outliving its host keeps them.
struct proxy_clock {
  core::steady_clock_source clock;
  core::timer_service timers{clock};
};

/// A control block standing for an actor in another process (see remote.hpp).
class remote_proxy final : public core::abstract_actor {
public:
  remote_proxy(std::uint64_t id, std::weak_ptr<actor_host> host, remote_address where,
               const actor_host::proxy_table& table, std::shared_ptr<proxy_clock> clock)
      : abstract_actor{id, "remote:" + where.to_string()},
        host_{std::move(host)},
        where_{std::move(where)},
        table_{table},
        clock_{std::move(clock)} {}

  expected<void> enqueue(core::message_ptr m) override {
    if (watchers_.fired()) return fail(std::move(m), error{errc::disconnected, fmt::format("{} is down", name())});
    auto host = host_.lock();
    if (!host) return fail(std::move(m), error{errc::cancelled, "actor host is stopped"});
    const actor_host::proxy_entry* entry = nullptr;
    for (const auto& [vt, e] : table_)
      if (vt == m->vtable) entry = &e;
    if (!entry) {
      if (m->is_system) {
        // A linked local actor terminated: its exit signal goes to the remote partner.
        if (const auto* e = core::detail::exit_notice_of(*m))
          host->relay_link(where_, id(), actor_host::link_op::exit, e->reason);
        return {};
      }
      return fail(std::move(m), error{errc::unimplemented, fmt::format("{} cannot be sent to another process (no wire codec)",
                                                                       m->vtable->type_name)});
    }
    const core::message& msg = *m;
    auto encode = [entry, &msg](capnp::AnyPointer::Builder b) { entry->encode(msg, b); };
    if (!entry->take_reply) return host->send(where_, entry->type_id, encode);
    auto done = entry->take_reply(*m);
    // The ask's own deadline completes it; this one only bounds the host's bookkeeping.
    host->request(where_, entry->type_id, encode, std::chrono::minutes{10}, std::move(done));
    return {};
  }
  void stop(core::stop_mode) override {}
  void kill() override {}
  bool alive() const noexcept override { return !watchers_.fired(); }
  void attach(core::detail::intrusive_ptr<core::abstract_actor> watcher, core::watch_kind kind) override {
    watchers_.add(*this, std::move(watcher), kind);
    watch_remote();
    if (kind == core::watch_kind::link)
      if (auto host = host_.lock()) host->relay_link(where_, id(), actor_host::link_op::link);
  }
  void attach(std::function<void(const core::down_msg&)> callback) override {
    watchers_.add(*this, std::move(callback));
    watch_remote();
  }
  void detach(const core::abstract_actor* watcher, core::watch_kind kind) override {
    watchers_.remove(watcher, kind);
    if (kind == core::watch_kind::link)
      if (auto host = host_.lock()) host->relay_link(where_, id(), actor_host::link_op::unlink);
  }
  core::timer_service& timers() const noexcept override { return clock_->timers; }

  /// The remote actor terminated or became unreachable.
  void down(core::exit_reason reason, std::string what) { watchers_.fire(*this, reason, std::move(what)); }
  const remote_address& where() const noexcept { return where_; }
  const actor_host::proxy_table* table() const noexcept { return &table_; }

private:
  expected<void> fail(core::message_ptr m, error why) {
    if (m->vtable->fail) m->vtable->fail(*m, why);
    return unexpected<error>{std::move(why)};
  }
  void watch_remote();

  std::weak_ptr<actor_host> host_;
  remote_address where_;
  const actor_host::proxy_table& table_;
  std::shared_ptr<proxy_clock> clock_;
  core::detail::watcher_list watchers_;
  std::atomic<bool> watching_{false};
};

core::exit_reason parse_exit_reason(std::string_view s) {
  for (auto r : {core::exit_reason::normal, core::exit_reason::exception, core::exit_reason::killed,
                 core::exit_reason::linked, core::exit_reason::shutdown, core::exit_reason::unreachable})
    if (core::to_string(r) == s) return r;
  return core::exit_reason::unreachable;
}

}  // namespace

struct actor_host::impl {
  struct peer {
    std::shared_ptr<net::connection> conn;
    enum class state_t { idle, connecting, up, down, dead } state = state_t::idle;
    std::vector<std::unique_ptr<capnp::MallocMessageBuilder>> queued;  // while connecting
    Clock::time_point retry_after{};
    std::string reason;
    net::backoff backoff;
  };
  struct pending {
    reply_fn done;
    std::uint64_t timer = 0;
    std::string host;
    const net::connection* conn = nullptr;
  };

  impl(net::event_loop& l, actor_host_config c) : loop{l}, config{std::move(c)} {}

  net::event_loop& loop;
  actor_host_config config;
  std::string address;
  std::unique_ptr<net::listener> listener;

  std::shared_ptr<proxy_clock> clock = std::make_shared<proxy_clock>();

  std::mutex mutex;  // guards everything below
  struct actor_entry {
    std::shared_ptr<async_dispatch_fn> async;
    core::any_ref target;                                    // runtime actors: for monitors
    std::vector<std::weak_ptr<net::connection>> monitors;   // peers watching it
  };
  // Proxies by address (and class), and those whose remote actor is monitored.
  std::map<std::pair<std::string, std::uint64_t>, std::vector<core::detail::intrusive_ptr<remote_proxy>>> proxies;
  std::map<std::pair<std::string, std::uint64_t>, std::vector<core::detail::intrusive_ptr<remote_proxy>>> watched;
  std::uint64_t next_proxy = 1;
  std::unordered_map<std::uint64_t, actor_entry> actors;
  std::uint64_t next_actor = max_well_known_id + 1;
  std::map<std::string, peer> peers;
  std::unordered_map<std::uint64_t, pending> asks;
  std::uint64_t next_request = 1;
  std::vector<std::shared_ptr<net::connection>> inbound;
  struct inbound_link {
    std::uint64_t target = 0;  // our actor
    std::uint64_t source = 0;  // the peer's proxy standing for its linked actor
    friend bool operator==(const inbound_link&, const inbound_link&) = default;
  };
  // Links peers made to our actors, by the connection they came on: its loss exits the targets.
  std::unordered_map<const net::connection*, std::vector<inbound_link>> links;
  bool stopped = false;
  std::weak_ptr<actor_host> owner;

  static std::unique_ptr<capnp::MallocMessageBuilder> build(std::uint64_t target, std::uint64_t request_id,
                                                           std::uint64_t type_id, const encode_fn& encode) {
    auto msg = std::make_unique<capnp::MallocMessageBuilder>(128);
    auto a = wire::start_envelope(*msg).getBody().initActor();
    a.setTarget(target);
    a.setRequestId(request_id);
    a.setTypeId(type_id);
    encode(a.getPayload());
    return msg;
  }

  // Called with the mutex held. Returns the connection to send on now, or queues/fails.
  expected<std::shared_ptr<net::connection>> route(const std::string& host, std::unique_ptr<capnp::MallocMessageBuilder>& msg) {
    if (stopped) return make_error(errc::cancelled, "actor host is stopped");
    auto& p = peers[host];
    switch (p.state) {
      case peer::state_t::up: return p.conn;
      case peer::state_t::dead: return make_error(errc::disconnected, "{} left the cluster: {}", host, p.reason);
      case peer::state_t::down:
        if (Clock::now() < p.retry_after)
          return make_error(errc::disconnected, "{} is unreachable ({}); next attempt in {} ms", host, p.reason,
                            std::chrono::duration_cast<std::chrono::milliseconds>(p.retry_after - Clock::now()).count());
        [[fallthrough]];
      case peer::state_t::idle:
        p.state = peer::state_t::connecting;
        p.queued.push_back(std::move(msg));
        start_connect(host);
        return std::shared_ptr<net::connection>{};
      case peer::state_t::connecting:
        p.queued.push_back(std::move(msg));
        return std::shared_ptr<net::connection>{};
    }
    return std::shared_ptr<net::connection>{};
  }

  void start_connect(const std::string& host) {
    auto ep = net::endpoint::parse(host);
    auto owner_ref = owner;
    if (!ep) {
      loop.post([owner_ref, host, e = ep.error()]() {
        if (auto o = owner_ref.lock()) o->impl_->on_connected(host, unexpected<error>{e});
      });
      return;
    }
    net::connect(loop, *ep, wire::schema::Role::PEER, config.transport,
                 [owner_ref, host](expected<std::shared_ptr<net::connection>> c) {
                   if (auto o = owner_ref.lock()) o->impl_->on_connected(host, std::move(c));
                 });
  }

  void on_connected(const std::string& host, expected<std::shared_ptr<net::connection>> c) {
    std::shared_ptr<net::connection> conn;
    std::vector<reply_fn> failed;
    std::vector<core::detail::intrusive_ptr<remote_proxy>> gone;
    error failure{errc::disconnected, ""};
    {
      std::lock_guard lock{mutex};
      auto& p = peers[host];
      if (p.state != peer::state_t::connecting) {
        if (c) (*c)->abort(error{errc::cancelled, "peer no longer wanted"});
        return;
      }
      if (c && !stopped) {
        p.state = peer::state_t::up;
        p.conn = *c;
        p.backoff.reset();
        conn = *c;
        // Queued messages leave before any later send: both happen under this lock.
        for (auto& m : p.queued) conn->send(*m);
        p.queued.clear();
        for (auto& [_, a] : asks)
          if (a.host == host && a.conn == nullptr) a.conn = conn.get();
      } else {
        p.queued.clear();
        p.state = peer::state_t::down;
        p.reason = c ? std::string{"actor host stopped"} : c.error().message();
        p.retry_after = Clock::now() + p.backoff.next();
        // A refused handshake (wrong secret) will not get better by retrying: it stays `failed`.
        const auto kind = !c && c.error().kind() == errc::failed ? errc::failed : errc::disconnected;
        failure = error{kind, fmt::format("cannot reach {}: {}", host, p.reason)};
        failed = take_asks_locked(host, nullptr);
        gone = take_watched_locked(host);
      }
    }
    for (auto& px : gone) px->down(core::exit_reason::unreachable, failure.message());
    if (conn) {
      attach(conn, host);
    } else {
      if (!failed.empty()) log::get("net")->info("{}; failing {} pending asks", failure.message(), failed.size());
      for (auto& f : failed) f(unexpected<error>{failure}, 0);
    }
  }

  // Takes the monitored proxies of `host` out (mutex held): they go down, and so leave the cache.
  // Proxies nobody monitors stay up: their next send reconnects (after the backoff), as a
  // broken connection need not mean a dead process.
  std::vector<core::detail::intrusive_ptr<remote_proxy>> take_watched_locked(const std::string& host) {
    std::vector<core::detail::intrusive_ptr<remote_proxy>> out;
    for (auto it = watched.begin(); it != watched.end();) {
      if (it->first.first == host) {
        for (auto& p : it->second) out.push_back(std::move(p));
        it = watched.erase(it);
      } else {
        ++it;
      }
    }
    for (auto& p : out) {
      auto c = proxies.find({p->where().host, p->where().actor_id});
      if (c == proxies.end()) continue;
      std::erase(c->second, p);
      if (c->second.empty()) proxies.erase(c);
    }
    return out;
  }

  // Sends a down notice for actor `target` of this host on `conn`.
  static void send_down(net::connection& conn, std::uint64_t target, core::exit_reason reason, const std::string& what) {
    capnp::MallocMessageBuilder msg{128};
    auto a = wire::start_envelope(msg).getBody().initActor();
    a.setTarget(target);
    a.setControl(wire::schema::ActorControl::DOWN);
    a.setErrorKind(std::string{core::to_string(reason)});
    a.setErrorMessage(what);
    conn.send(msg);
  }

  // A peer asks to monitor one of our actors.
  void on_monitor(net::connection& c, std::uint64_t target) {
    core::any_ref ref;
    bool known = false;
    std::weak_ptr<net::connection> weak = c.shared_from_this();
    {
      std::lock_guard lock{mutex};
      auto it = actors.find(target);
      if (it != actors.end()) {
        known = true;
        it->second.monitors.push_back(weak);
        ref = it->second.target;
      }
    }
    if (!known) {
      send_down(c, target, core::exit_reason::normal, fmt::format("no actor {} in {}", target, address));
      return;
    }
    if (ref.valid())
      ref.get()->attach([weak, target](const core::down_msg& d) {
        if (auto conn = weak.lock()) send_down(*conn, target, d.reason, d.what);
      });
  }

  // A peer links to one of our actors, unlinks, or reports that its linked actor terminated.
  void on_link(net::connection& c, wire::schema::ActorMessage::Reader a) {
    const inbound_link l{a.getTarget(), a.getSource()};
    const auto op = a.getControl();
    {
      std::lock_guard lock{mutex};
      auto& list = links[&c];
      auto it = std::find(list.begin(), list.end(), l);
      if (op == wire::schema::ActorControl::LINK) {
        list.push_back(l);
        return;
      }
      if (it != list.end()) list.erase(it);
      if (list.empty()) links.erase(&c);
      if (op == wire::schema::ActorControl::UNLINK) return;
    }
    deliver_exit(c.peer(), l, parse_exit_reason(a.getErrorKind().cStr()));
  }

  // Delivers a linked partner's exit signal to our actor `l.target` (if it is still published).
  void deliver_exit(const std::string& peer, const inbound_link& l, core::exit_reason reason) {
    core::any_ref target;
    {
      std::lock_guard lock{mutex};
      if (auto it = actors.find(l.target); it != actors.end()) target = it->second.target;
    }
    if (!target.valid()) return;
    // The partner's identity: a proxy that carries nothing (it only names the linked actor).
    static const actor_host::proxy_table no_messages;
    core::any_ref source{core::detail::make_intrusive<remote_proxy>((std::uint64_t{1} << 62) | l.source, owner, remote_address{peer, l.source},
                                                                    no_messages, clock)};
    (void)target.get()->enqueue(core::detail::make_exit_notice(core::exit_msg{std::move(source), reason}));
  }

  // A peer reports that an actor we monitor terminated.
  void on_down(const std::string& host, wire::schema::ActorMessage::Reader a) {
    std::vector<core::detail::intrusive_ptr<remote_proxy>> gone;
    const auto key = std::make_pair(host, a.getTarget());
    {
      std::lock_guard lock{mutex};
      if (auto it = watched.find(key); it != watched.end()) {
        gone = std::move(it->second);
        watched.erase(it);
      }
      if (auto it = proxies.find(key); it != proxies.end()) {
        for (auto& p : it->second) gone.push_back(p);
        proxies.erase(it);
      }
    }
    const auto reason = parse_exit_reason(a.getErrorKind().cStr());
    for (auto& p : gone) p->down(reason, a.getErrorMessage().cStr());
  }

  // Collects pending asks to fail (mutex held). conn == nullptr: all asks to `host`.
  std::vector<reply_fn> take_asks_locked(const std::string& host, const net::connection* conn) {
    std::vector<reply_fn> out;
    for (auto it = asks.begin(); it != asks.end();) {
      // A closed connection fails only the asks sent on it: asks queued for a newer connection
      // attempt (conn still null) wait for that attempt.
      if (it->second.host == host && (conn == nullptr || it->second.conn == conn)) {
        if (it->second.timer) loop.cancel(it->second.timer);
        out.push_back(std::move(it->second.done));
        it = asks.erase(it);
      } else {
        ++it;
      }
    }
    return out;
  }

  void attach(const std::shared_ptr<net::connection>& conn, const std::string& outbound_host) {
    auto owner_ref = owner;
    conn->start(
        [owner_ref, outbound_host](net::connection& c, wire::envelope_reader env) {
          if (auto o = owner_ref.lock()) o->impl_->on_message(c, outbound_host, env);
        },
        [owner_ref, outbound_host](net::connection& c, const error& why) {
          if (auto o = owner_ref.lock()) o->impl_->on_closed(c, outbound_host, why);
        });
  }

  void on_closed(net::connection& c, const std::string& outbound_host, const error& why) {
    std::vector<reply_fn> failed;
    std::vector<core::detail::intrusive_ptr<remote_proxy>> gone;
    {
      std::unique_lock lock{mutex};
      std::erase_if(inbound, [&c](const auto& p) { return p.get() == &c; });
      if (outbound_host.empty()) {
        auto it = links.find(&c);
        if (it == links.end()) return;
        auto lost = std::move(it->second);
        links.erase(it);
        lock.unlock();
        for (const auto& l : lost)
          deliver_exit(c.peer(), l, core::exit_reason::unreachable);
        return;
      }
      auto& p = peers[outbound_host];
      if (p.conn.get() == &c) {
        p.conn.reset();
        if (p.state == peer::state_t::up) {
          p.state = peer::state_t::down;
          p.reason = why.message();
          p.retry_after = Clock::now() + p.backoff.next();
        }
      }
      failed = take_asks_locked(outbound_host, &c);
      gone = take_watched_locked(outbound_host);
    }
    for (auto& px : gone)
      px->down(core::exit_reason::unreachable, fmt::format("connection to {} lost: {}", outbound_host, why.message()));
    if (!failed.empty())
      log::get("net")->info("connection to {} closed ({}); failing {} pending asks", outbound_host, why.message(),
                            failed.size());
    const error e{errc::disconnected, fmt::format("connection to {} lost: {}", outbound_host, why.message())};
    for (auto& f : failed) f(unexpected<error>{e}, 0);
  }

  void on_message(net::connection& c, const std::string& outbound_host, wire::envelope_reader env) {
    if (env.getBody().which() != wire::body_kind::ACTOR) {
      c.close(error{errc::protocol, "unexpected " + wire::body_name(env.getBody().which()) + " on an actor channel"});
      return;
    }
    auto a = env.getBody().getActor();
    switch (a.getControl()) {
      case wire::schema::ActorControl::NONE: break;
      case wire::schema::ActorControl::MONITOR: on_monitor(c, a.getTarget()); return;
      case wire::schema::ActorControl::DOWN:
        if (!outbound_host.empty()) on_down(outbound_host, a);
        return;
      case wire::schema::ActorControl::LINK:
      case wire::schema::ActorControl::UNLINK:
      case wire::schema::ActorControl::EXIT: on_link(c, a); return;
      default: c.close(error{errc::protocol, "unknown actor control notice"}); return;
    }
    if (a.getIsReply()) {
      on_reply(a);
      return;
    }
    actor_entry entry;
    {
      std::lock_guard lock{mutex};
      auto it = actors.find(a.getTarget());
      if (it != actors.end()) entry = it->second;
    }
    if (!entry.async) {
      if (a.getRequestId() != 0)
        send_reply(c, a.getRequestId(),
                   make_error(errc::not_found, "no actor {} in {}", a.getTarget(), address), 0, {});
      else
        log::get("actors")->debug("dropped tell to actor {}: no such actor in {}", a.getTarget(), address);
      return;
    }
    on_async(c, a, *entry.async);
  }

  static void send_reply(net::connection& c, std::uint64_t rid, const expected<void>& status, std::uint64_t type_id,
                         const encode_fn& encode) {
    capnp::MallocMessageBuilder msg{128};
    auto reply = wire::start_envelope(msg).getBody().initActor();
    reply.setIsReply(true);
    reply.setRequestId(rid);
    if (!status) {
      reply.setErrorKind(std::string{to_string(status.error().kind())});
      reply.setErrorMessage(status.error().message());
    } else {
      reply.setTypeId(type_id);
      if (encode) encode(reply.getPayload());
    }
    c.send(msg);
  }

  void on_async(net::connection& c, wire::schema::ActorMessage::Reader a, async_dispatch_fn& fn) {
    const std::uint64_t rid = a.getRequestId();
    reply_sink sink;
    if (rid != 0) {
      std::weak_ptr<net::connection> weak = c.shared_from_this();
      sink = [weak, rid](expected<void> status, std::uint64_t type_id, const encode_fn& encode) {
        if (auto conn = weak.lock()) send_reply(*conn, rid, status, type_id, encode);
      };
    }
    // Dispatch errors happen before the sink is handed on, so answering here is the only answer.
    if (auto r = fn(a.getTypeId(), a.getPayload(), rid ? &sink : nullptr); !r) {
      if (rid != 0)
        send_reply(c, rid, r, 0, {});
      else
        log::get("actors")->debug("dropped tell to actor {}: {}", a.getTarget(), r.error().message());
    }
  }

  void on_reply(wire::schema::ActorMessage::Reader a) {
    reply_fn done;
    {
      std::lock_guard lock{mutex};
      auto it = asks.find(a.getRequestId());
      if (it == asks.end()) return;  // timed out already
      if (it->second.timer) loop.cancel(it->second.timer);
      done = std::move(it->second.done);
      asks.erase(it);
    }
    if (a.hasErrorKind() && a.getErrorKind().size() > 0) {
      const std::string kind = a.getErrorKind().cStr();
      errc k = errc::failed;
      for (auto candidate : {errc::failed, errc::invalid_argument, errc::not_found, errc::timeout, errc::overloaded,
                             errc::disconnected, errc::cancelled, errc::protocol, errc::io, errc::unimplemented})
        if (to_string(candidate) == kind) k = candidate;
      done(unexpected<error>{error{k, a.getErrorMessage().cStr()}}, 0);
      return;
    }
    done(a.getPayload(), a.getTypeId());
  }
};

expected<std::shared_ptr<actor_host>> actor_host::start(net::event_loop& loop, actor_host_config config) {
  FLEXSP_TRY(config.transport.validate());
  auto i = std::make_unique<impl>(loop, config);
  impl* raw = i.get();
  std::shared_ptr<actor_host> host{new actor_host{std::move(i)}};
  raw->owner = host;
  std::weak_ptr<actor_host> weak = host;
  FLEXSP_TRY_ASSIGN(raw->listener, net::listener::open(loop, config.bind, config.transport,
                                                       [weak](std::shared_ptr<net::connection> c) {
                                                         auto h = weak.lock();
                                                         if (!h) return;
                                                         {
                                                           std::lock_guard lock{h->impl_->mutex};
                                                           h->impl_->inbound.push_back(c);
                                                         }
                                                         h->impl_->attach(c, "");
                                                       }));
  const std::string host_name = config.advertise_host.empty() ? config.bind.host : config.advertise_host;
  raw->address = net::endpoint{host_name, raw->listener->port()}.to_string();
  return host;
}

actor_host::actor_host(std::unique_ptr<impl> i) : impl_{std::move(i)} {}

actor_host::~actor_host() { stop(); }

const std::string& actor_host::address() const noexcept { return impl_->address; }
net::event_loop& actor_host::loop() noexcept { return impl_->loop; }

std::uint64_t actor_host::add_async_actor(async_dispatch_fn fn, core::any_ref target, std::uint64_t well_known_id) {
  std::lock_guard lock{impl_->mutex};
  FLEXSP_EXPECTS(well_known_id <= max_well_known_id, "well-known actor ids are 1 to 15");
  FLEXSP_EXPECTS(well_known_id == 0 || !impl_->actors.contains(well_known_id), "well-known actor id already taken");
  const auto id = well_known_id != 0 ? well_known_id : impl_->next_actor++;
  impl_->actors.emplace(id, impl::actor_entry{std::make_shared<async_dispatch_fn>(std::move(fn)), std::move(target), {}});
  return id;
}

core::detail::intrusive_ptr<core::abstract_actor> actor_host::make_proxy(const remote_address& where,
                                                                         const proxy_table& table) {
  std::lock_guard lock{impl_->mutex};
  auto& list = impl_->proxies[{where.host, where.actor_id}];
  for (auto& p : list)
    if (p->table() == &table && p->alive()) return p;
  auto p = core::detail::make_intrusive<remote_proxy>((std::uint64_t{1} << 63) | impl_->next_proxy++, weak_from_this(),
                                                      where, table, impl_->clock);
  list.push_back(p);
  return p;
}

void actor_host::watch(const remote_address& where, core::abstract_actor& proxy) {
  auto* p = static_cast<remote_proxy*>(&proxy);
  auto msg = std::make_unique<capnp::MallocMessageBuilder>(64);
  {
    auto a = wire::start_envelope(*msg).getBody().initActor();
    a.setTarget(where.actor_id);
    a.setControl(wire::schema::ActorControl::MONITOR);
  }
  error failure{errc::disconnected, ""};
  {
    std::lock_guard lock{impl_->mutex};
    auto conn = impl_->route(where.host, msg);
    if (conn) {
      impl_->watched[{where.host, where.actor_id}].push_back(core::detail::intrusive_ptr<remote_proxy>{p});
      if (*conn) (*conn)->send(*msg);
      return;
    }
    failure = conn.error();
  }
  p->down(core::exit_reason::unreachable, failure.message());
}

void actor_host::relay_link(const remote_address& where, std::uint64_t source, link_op op, core::exit_reason reason) {
  auto msg = std::make_unique<capnp::MallocMessageBuilder>(64);
  {
    auto a = wire::start_envelope(*msg).getBody().initActor();
    a.setTarget(where.actor_id);
    a.setSource(source);
    a.setControl(op == link_op::link     ? wire::schema::ActorControl::LINK
                 : op == link_op::unlink ? wire::schema::ActorControl::UNLINK
                                         : wire::schema::ActorControl::EXIT);
    if (op == link_op::exit) a.setErrorKind(std::string{core::to_string(reason)});
  }
  std::lock_guard lock{impl_->mutex};
  // An unreachable partner learns of the link's end when the connection's loss reaches it.
  if (auto conn = impl_->route(where.host, msg); conn && *conn) (*conn)->send(*msg);
}

void actor_host::remove(std::uint64_t actor_id) {
  std::vector<std::weak_ptr<net::connection>> monitors;
  {
    std::lock_guard lock{impl_->mutex};
    auto it = impl_->actors.find(actor_id);
    if (it == impl_->actors.end()) return;
    monitors = std::move(it->second.monitors);
    impl_->actors.erase(it);
  }
  for (auto& w : monitors)
    if (auto c = w.lock()) impl::send_down(*c, actor_id, core::exit_reason::normal, "no longer published");
}

expected<void> actor_host::send(const remote_address& to, std::uint64_t type_id, const encode_fn& encode) {
  auto msg = impl::build(to.actor_id, 0, type_id, encode);
  std::shared_ptr<net::connection> conn;
  {
    std::lock_guard lock{impl_->mutex};
    FLEXSP_TRY_ASSIGN(conn, impl_->route(to.host, msg));
    // Sent under the lock so that two threads' sends to one peer keep the order they took it in.
    if (conn) conn->send(*msg);
  }
  return {};
}

void actor_host::request(const remote_address& to, std::uint64_t type_id, const encode_fn& encode,
                         std::chrono::milliseconds timeout, reply_fn done) {
  std::optional<error> failure;
  {
    std::lock_guard lock{impl_->mutex};
    const std::uint64_t rid = impl_->next_request++;
    auto msg = impl::build(to.actor_id, rid, type_id, encode);
    auto conn = impl_->route(to.host, msg);
    if (!conn) {
      failure = conn.error();
    } else {
      auto& p = impl_->asks[rid];
      p.done = std::move(done);
      p.host = to.host;
      p.conn = conn->get();
      std::weak_ptr<actor_host> weak = weak_from_this();
      p.timer = impl_->loop.schedule(timeout, [weak, rid, timeout, host = to.host]() {
        auto h = weak.lock();
        if (!h) return;
        reply_fn cb;
        {
          std::lock_guard lock{h->impl_->mutex};
          auto it = h->impl_->asks.find(rid);
          if (it == h->impl_->asks.end()) return;
          cb = std::move(it->second.done);
          h->impl_->asks.erase(it);
        }
        cb(make_error(errc::timeout, "no reply from {} within {} ms", host, timeout.count()), 0);
      });
      if (*conn) (*conn)->send(*msg);
    }
  }
  if (failure) done(unexpected<error>{*failure}, 0);
}

void actor_host::mark_dead(const std::string& host, std::string reason) {
  std::vector<reply_fn> failed;
  std::shared_ptr<net::connection> conn;
  std::vector<core::detail::intrusive_ptr<remote_proxy>> gone;
  {
    std::lock_guard lock{impl_->mutex};
    auto& p = impl_->peers[host];
    p.state = impl::peer::state_t::dead;
    p.reason = reason;
    conn = std::move(p.conn);
    p.queued.clear();
    failed = impl_->take_asks_locked(host, nullptr);
    gone = impl_->take_watched_locked(host);
  }
  if (conn) conn->abort(error{errc::disconnected, reason});
  const error e{errc::disconnected, fmt::format("{} left the cluster: {}", host, reason)};
  for (auto& p : gone) p->down(core::exit_reason::unreachable, e.message());
  for (auto& f : failed) f(unexpected<error>{e}, 0);
}

void actor_host::mark_alive(const std::string& host) {
  std::lock_guard lock{impl_->mutex};
  auto& p = impl_->peers[host];
  if (p.state == impl::peer::state_t::dead || p.state == impl::peer::state_t::down) {
    p.state = impl::peer::state_t::idle;
    p.backoff.reset();
  }
}

void actor_host::stop() {
  std::vector<reply_fn> failed;
  std::vector<std::shared_ptr<net::connection>> conns;
  std::vector<core::detail::intrusive_ptr<remote_proxy>> gone;
  {
    std::lock_guard lock{impl_->mutex};
    if (impl_->stopped) return;
    impl_->stopped = true;
    for (auto& [_, list] : impl_->watched)
      for (auto& p : list) gone.push_back(std::move(p));
    impl_->watched.clear();
    for (auto& [_, list] : impl_->proxies)
      for (auto& p : list) gone.push_back(std::move(p));
    impl_->proxies.clear();
    for (auto& [host, p] : impl_->peers)
      if (p.conn) conns.push_back(p.conn);
    for (auto& c : impl_->inbound) conns.push_back(c);
    for (auto& [rid, p] : impl_->asks) {
      if (p.timer) impl_->loop.cancel(p.timer);
      failed.push_back(std::move(p.done));
    }
    impl_->asks.clear();
  }
  if (impl_->listener) impl_->listener->close();
  for (auto& c : conns) c->close(error{errc::cancelled, "actor host stopped"});
  for (auto& f : failed) f(make_error(errc::cancelled, "actor host stopped"), 0);
  for (auto& p : gone) p->down(core::exit_reason::unreachable, "actor host stopped");
}

void remote_proxy::watch_remote() {
  if (watching_.exchange(true)) return;
  if (auto h = host_.lock()) h->watch(where_, *this);
  else down(core::exit_reason::unreachable, "actor host is stopped");
}

}  // namespace flexsp::actors
