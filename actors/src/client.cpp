#include "flexsp/actors/client.hpp"

#include <algorithm>
#include <future>
#include <variant>
#include <mutex>
#include <unordered_map>

#include "cluster_wire.hpp"
#include "wire_convert.hpp"

namespace flexsp::actors {

using wire::body_kind;

std::size_t cluster_status::alive_count() const {
  std::size_t n = 0;
  for (const auto& r : nodes) n += r.state == node_state::alive;
  return n;
}

namespace {
cluster_status status_from_wire(detail::cs::ClusterStatus::Reader s) {
  cluster_status out;
  out.epoch = s.getEpoch();
  out.head_pid = s.getHeadPid();
  out.heartbeat_interval = std::chrono::milliseconds{s.getHeartbeatIntervalMs()};
  out.failure_timeout = std::chrono::milliseconds{s.getFailureTimeoutMs()};
  for (auto n : s.getNodes()) out.nodes.push_back(detail::from_wire(n));
  return out;
}

error error_from_wire(wire::schema::ErrorReply::Reader e) {
  const std::string kind = e.getKind().cStr();
  errc k = errc::failed;
  for (auto candidate : {errc::failed, errc::invalid_argument, errc::not_found, errc::timeout, errc::overloaded,
                         errc::disconnected, errc::cancelled, errc::protocol, errc::io, errc::unimplemented})
    if (to_string(candidate) == kind) k = candidate;
  return error{k, e.getMessage().cStr()};
}
}  // namespace

struct cluster_client::impl {
  using reply_handler = std::function<void(expected<wire::envelope_reader>)>;
  net::event_loop loop;
  std::shared_ptr<net::connection> conn;
  std::mutex mutex;
  std::unordered_map<std::uint64_t, reply_handler> pending;
  std::uint64_t next_request = 1;
  event_handler on_event;
  std::optional<error> closed;

  void on_message(wire::envelope_reader env) {
    if (detail::holds<detail::cs::MembershipEvent>(env)) {
      event_handler h;
      {
        std::lock_guard lock{mutex};
        h = on_event;
      }
      if (!h) return;
      auto e = detail::cluster_body<detail::cs::MembershipEvent>(env);
      membership_event ev;
      ev.epoch = e.getEpoch();
      ev.kind = e.getKind() == detail::cs::MembershipEvent::Kind::JOINED ? membership_event::kind_t::joined
                                                                         : membership_event::kind_t::lost;
      ev.node = detail::from_wire(e.getNode());
      h(ev);
      return;
    }
    reply_handler h;
    {
      std::lock_guard lock{mutex};
      auto it = pending.find(env.getRequestId());
      if (it == pending.end()) return;
      h = std::move(it->second);
      pending.erase(it);
    }
    h(env);
  }

  void on_closed(const error& why) {
    std::unordered_map<std::uint64_t, reply_handler> failed;
    {
      std::lock_guard lock{mutex};
      closed = why;
      failed.swap(pending);
    }
    const error e{errc::disconnected, fmt::format("connection to the head lost: {}", why.message())};
    for (auto& [_, h] : failed) h(unexpected<error>{e});
  }

  // Sends a request built by `fill` and decodes the reply with `decode` on the I/O thread.
  template <class T, class Fill, class Decode>
  expected<T> call(std::chrono::milliseconds timeout, Fill&& fill, Decode&& decode) {
    auto promise = std::make_shared<std::promise<expected<T>>>();
    auto future = promise->get_future();
    std::uint64_t rid;
    {
      std::lock_guard lock{mutex};
      if (closed) return make_error(errc::disconnected, "connection to the head lost: {}", closed->message());
      rid = next_request++;
      pending[rid] = [promise, decode = std::forward<Decode>(decode)](expected<wire::envelope_reader> env) {
        if (!env) {
          promise->set_value(unexpected<error>{std::move(env).error()});
          return;
        }
        if (env->getBody().which() == body_kind::ERROR) {
          promise->set_value(unexpected<error>{error_from_wire(env->getBody().getError())});
          return;
        }
        promise->set_value(decode(*env));
      };
    }
    capnp::MallocMessageBuilder msg{256};
    fill(msg, rid);
    conn->send(msg);
    if (future.wait_for(timeout) != std::future_status::ready) {
      std::lock_guard lock{mutex};
      pending.erase(rid);
      return make_error(errc::timeout, "the head did not answer within {} ms", timeout.count());
    }
    return future.get();
  }
};

cluster_client::cluster_client(std::unique_ptr<impl> i) : impl_{std::move(i)} {}

cluster_client::~cluster_client() {
  if (impl_->conn) impl_->conn->close(error{errc::cancelled, "client closed"});
  impl_->loop.stop();
}

expected<std::unique_ptr<cluster_client>> cluster_client::connect(const net::endpoint& head,
                                                                  net::transport_config transport) {
  auto i = std::make_unique<impl>();
  i->loop.start();
  FLEXSP_TRY_ASSIGN(i->conn, net::connect_blocking(i->loop, head, wire::schema::Role::CLIENT, std::move(transport)));
  impl* raw = i.get();
  i->conn->start([raw](net::connection&, wire::envelope_reader env) { raw->on_message(env); },
                 [raw](net::connection&, const error& why) { raw->on_closed(why); });
  return std::unique_ptr<cluster_client>{new cluster_client{std::move(i)}};
}

bool cluster_client::connected() const { return impl_->conn && impl_->conn->is_open(); }

expected<cluster_status> cluster_client::status() {
  return impl_->call<cluster_status>(
      request_timeout, [](auto& msg, auto rid) { detail::start_cluster<detail::cs::StatusRequest>(msg, rid); },
      [](wire::envelope_reader env) -> expected<cluster_status> {
        if (!detail::holds<detail::cs::Status>(env)) return make_error(errc::protocol, "expected a status reply");
        return status_from_wire(detail::cluster_body<detail::cs::Status>(env).getStatus());
      });
}

namespace {
expected<void> expect_ack(wire::envelope_reader env) {
  if (env.getBody().which() != body_kind::ACK)
    return make_error(errc::protocol, "expected an ack, got {}", wire::body_name(env.getBody().which()));
  return {};
}

expected<void> to_void(expected<std::monostate> r) {
  if (!r) return unexpected<error>{std::move(r).error()};
  return {};
}

expected<std::monostate> decode_ack(wire::envelope_reader env) {
  FLEXSP_TRY(expect_ack(env));
  return std::monostate{};
}

std::optional<std::string> kv_value(detail::cs::KvReply::Reader r) {
  if (!r.getFound()) return std::nullopt;
  auto v = r.getValue();
  return std::string{reinterpret_cast<const char*>(v.begin()), v.size()};
}
}  // namespace

expected<void> cluster_client::kv_set(const std::string& key, const std::string& value) {
  return to_void(impl_->call<std::monostate>(
      request_timeout,
      [&](auto& msg, auto rid) {
        auto kv = detail::start_cluster<detail::cs::KvSet>(msg, rid);
        kv.setKey(key);
        kv.setValue(kj::arrayPtr(reinterpret_cast<const kj::byte*>(value.data()), value.size()));
      },
      decode_ack));
}

expected<std::optional<std::string>> cluster_client::kv_get(const std::string& key) {
  return impl_->call<std::optional<std::string>>(
      request_timeout, [&](auto& msg, auto rid) { detail::start_cluster<detail::cs::KvGet>(msg, rid).setKey(key); },
      [](wire::envelope_reader env) -> expected<std::optional<std::string>> {
        if (!detail::holds<detail::cs::KvReply>(env)) return make_error(errc::protocol, "expected a kv reply");
        return kv_value(detail::cluster_body<detail::cs::KvReply>(env));
      });
}

expected<std::string> cluster_client::kv_wait(const std::string& key, std::chrono::milliseconds wait) {
  const auto ms = std::clamp<std::int64_t>(wait.count(), 1, 0xffffffffLL);
  return impl_->call<std::string>(
      wait + request_timeout,
      [&](auto& msg, auto rid) {
        auto get = detail::start_cluster<detail::cs::KvGet>(msg, rid);
        get.setKey(key);
        get.setWaitMs(static_cast<std::uint32_t>(ms));
      },
      [key](wire::envelope_reader env) -> expected<std::string> {
        if (!detail::holds<detail::cs::KvReply>(env)) return make_error(errc::protocol, "expected a kv reply");
        auto v = kv_value(detail::cluster_body<detail::cs::KvReply>(env));
        if (!v) return make_error(errc::not_found, "key '{}' is not set", key);
        return std::move(*v);
      });
}

expected<void> cluster_client::register_name(const std::string& name, const remote_address& where) {
  return to_void(impl_->call<std::monostate>(
      request_timeout,
      [&](auto& msg, auto rid) {
        auto r = detail::start_cluster<detail::cs::NameRegister>(msg, rid);
        r.setName(name);
        r.setAddress(where.host);
        r.setActorId(where.actor_id);
      },
      decode_ack));
}

expected<remote_address> cluster_client::lookup(const std::string& name) {
  return impl_->call<remote_address>(
      request_timeout,
      [&](auto& msg, auto rid) { detail::start_cluster<detail::cs::NameLookup>(msg, rid).setName(name); },
      [name](wire::envelope_reader env) -> expected<remote_address> {
        if (!detail::holds<detail::cs::NameReply>(env)) return make_error(errc::protocol, "expected a name reply");
        auto r = detail::cluster_body<detail::cs::NameReply>(env);
        if (!r.getFound()) return make_error(errc::not_found, "no actor is named '{}'", name);
        return remote_address{r.getAddress().cStr(), r.getActorId()};
      });
}

expected<cluster_status> cluster_client::subscribe(event_handler handler) {
  {
    std::lock_guard lock{impl_->mutex};
    impl_->on_event = std::move(handler);
  }
  return impl_->call<cluster_status>(
      request_timeout, [](auto& msg, auto rid) { detail::start_cluster<detail::cs::Subscribe>(msg, rid); },
      [](wire::envelope_reader env) -> expected<cluster_status> {
        if (!detail::holds<detail::cs::Subscribed>(env)) return make_error(errc::protocol, "expected subscribed");
        return status_from_wire(detail::cluster_body<detail::cs::Subscribed>(env).getStatus());
      });
}

expected<void> cluster_client::shutdown_head() {
  return to_void(impl_->call<std::monostate>(
      request_timeout, [](auto& msg, auto rid) { wire::start_envelope(msg, rid).getBody().setShutdown(); }, decode_ack));
}

}  // namespace flexsp::actors
