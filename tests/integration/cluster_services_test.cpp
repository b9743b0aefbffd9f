// Head, nodes, client and remote actors in one process over loopback, with short timings.
#include <atomic>
#include <future>
#include <condition_variable>
#include <mutex>
#include <thread>

#include <gtest/gtest.h>

#include <capnp/any.h>
#include <capnp/message.h>

#include "flexsp/actors/client.hpp"
#include "flexsp/actors/device_actor.hpp"
#include "probe_messages.hpp"
#include "flexsp/actors/head.hpp"
#include "flexsp/actors/node.hpp"
#include "flexsp/core/actor.hpp"
#include "flexsp/core/actor_system.hpp"
#include "flexsp/core/wire/envelope.hpp"

// A runtime actor reached from another host. Its messages reuse the probe schema's structs.
namespace flexsp::actors {
struct add_msg {
  std::uint64_t n = 0;
};
struct total_query {};
struct total_msg {
  std::uint64_t sum = 0;
  std::uint64_t count = 0;
  std::uint64_t out_of_order = 0;
};
struct fail_query {
  std::uint64_t code = 0;
};
template <>
struct wire_codec<add_msg> {
  using schema = testing::schema::Note;
  static void encode(const add_msg& m, schema::Builder b) { b.setSequence(m.n); }
  static add_msg decode(schema::Reader r) { return {r.getSequence()}; }
};
template <>
struct wire_codec<total_query> {
  using schema = testing::schema::GetStats;
  static void encode(const total_query&, schema::Builder) {}
  static total_query decode(schema::Reader) { return {}; }
};
template <>
struct wire_codec<total_msg> {
  using schema = testing::schema::ProbeStats;
  static void encode(const total_msg& m, schema::Builder b) {
    b.setNotes(m.count);
    b.setLastSequence(m.sum);
    b.setOutOfOrder(m.out_of_order);
  }
  static total_msg decode(schema::Reader r) { return {r.getLastSequence(), r.getNotes(), r.getOutOfOrder()}; }
};
template <>
struct wire_codec<fail_query> {
  using schema = testing::schema::Ping;
  static void encode(const fail_query& m, schema::Builder b) { b.setSequence(m.code); }
  static fail_query decode(schema::Reader r) { return {r.getSequence()}; }
};
}  // namespace flexsp::actors

namespace {
/// Carries a pointer: it cannot leave the process (no wire codec).
struct local_only {
  std::shared_ptr<int> value;
};
class adder : public flexsp::core::actor<adder> {
public:
  using interface = flexsp::core::interface<flexsp::actors::add_msg, flexsp::actors::total_query,
                                            flexsp::actors::fail_query, local_only>;
  void handle(local_only) {}
  void handle(flexsp::actors::add_msg m) {
    if (m.n != count_ + 1) ++out_of_order_;
    ++count_;
    sum_ += m.n;
  }
  flexsp::actors::total_msg handle(flexsp::actors::total_query) { return {sum_, count_, out_of_order_}; }
  flexsp::expected<flexsp::actors::total_msg> handle(flexsp::actors::fail_query q) {
    return flexsp::make_error(flexsp::errc::invalid_argument, "refused code {}", q.code);
  }

private:
  std::uint64_t sum_ = 0, count_ = 0, out_of_order_ = 0;
};
}  // namespace

namespace {

using namespace flexsp;
using namespace flexsp::actors;
using namespace std::chrono_literals;

net::transport_config transport(const std::string& secret = "unit-secret") {
  net::transport_config t;
  t.secret.assign(secret.begin(), secret.end());
  t.handshake_timeout = 2000ms;
  return t;
}

// Polls `cond` until true or 10 s passed.
template <class F>
bool eventually(F cond) {
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (std::chrono::steady_clock::now() < deadline) {
    if (cond()) return true;
    std::this_thread::sleep_for(5ms);
  }
  return cond();
}

// The interface is the contract: a type outside it does not compile, local or remote.
static_assert(core::handles<adder, add_msg>);
static_assert(!core::handles<adder, flexsp::testing::ping>);

struct ClusterServices : ::testing::Test {
  net::event_loop head_loop;
  std::unique_ptr<head_service> head;
  net::endpoint head_address;

  void SetUp() override {
    head_loop.start();
    head_config hc;
    hc.bind = {"127.0.0.1", 0};
    hc.detector = {50ms, 400ms};
    hc.transport = transport();
    hc.membership_log = 3;
    auto h = head_service::start(head_loop, hc);
    ASSERT_TRUE(h) << h.error().to_string();
    head = std::move(*h);
    head_address = {"127.0.0.1", head->port()};
  }
  void TearDown() override {
    if (head) head->stop();
    head_loop.stop();
  }

  struct node_proc {
    net::event_loop loop;
    std::unique_ptr<node_service> node;
    std::atomic<int> registrations{0};
    std::mutex fatal_mutex;
    std::optional<error> fatal;  // set on the node's loop thread
    std::optional<error> fatal_error() {
      std::lock_guard lock{fatal_mutex};
      return fatal;
    }
    ~node_proc() {
      if (node) node->stop();
      loop.stop();
    }
  };

  std::unique_ptr<node_proc> start_node(const std::string& devices, const std::string& secret = "unit-secret") {
    auto p = std::make_unique<node_proc>();
    p->loop.start();
    node_config nc;
    nc.head = head_address;
    nc.devices = *parse_devices(devices, 0);
    nc.transport = transport(secret);
    nc.give_up_after = 2s;
    auto* raw = p.get();
    auto n = node_service::start(
        p->loop, nc, [raw](const registration&) { ++raw->registrations; },
        [raw](const error& e) {
          std::lock_guard lock{raw->fatal_mutex};
          raw->fatal = e;
        });
    EXPECT_TRUE(n) << n.error().to_string();
    p->node = std::move(*n);
    return p;
  }

  /// An actor host in "another process": its own I/O thread, stopped with it.
  struct other_host {
    net::event_loop loop;
    std::shared_ptr<actor_host> host;
    other_host() {
      loop.start();
      actor_host_config hc;
      hc.transport = transport();
      auto h = actor_host::start(loop, hc);
      EXPECT_TRUE(h) << h.error().to_string();
      if (h) host = *h;
    }
    ~other_host() {
      if (host) host->stop();
      loop.stop();
    }
  };

  std::unique_ptr<cluster_client> client() {
    auto c = cluster_client::connect(head_address, transport());
    EXPECT_TRUE(c) << c.error().to_string();
    return std::move(*c);
  }
};

TEST_F(ClusterServices, NodesRegisterAndStatusListsTheirDevices) {
  auto a = start_node("cpu:2");
  auto b = start_node("cpu:1");
  ASSERT_TRUE(eventually([&]() { return a->node->node_id() != 0 && b->node->node_id() != 0; }));
  auto c = client();
  auto s = c->status();
  ASSERT_TRUE(s) << s.error().to_string();
  EXPECT_EQ(s->epoch, 2u);
  ASSERT_EQ(s->nodes.size(), 2u);
  EXPECT_EQ(s->alive_count(), 2u);
  const auto& first = s->nodes[0].id == a->node->node_id() ? s->nodes[0] : s->nodes[1];
  ASSERT_EQ(first.devices.size(), 2u);
  EXPECT_EQ(first.devices[1].to_string(), "cpu:1");
  EXPECT_EQ(first.address, a->node->actor_address());
  EXPECT_EQ(s->heartbeat_interval, 50ms);
}

TEST_F(ClusterServices, KvStoreSetsGetsAndWaits) {
  auto c1 = client();
  auto c2 = client();
  auto missing = c1->kv_get("k");
  ASSERT_TRUE(missing);
  EXPECT_FALSE(missing->has_value());
  std::thread setter([&]() {
    std::this_thread::sleep_for(50ms);
    EXPECT_TRUE(c2->kv_set("k", std::string("v\0x", 3)));
  });
  auto waited = c1->kv_wait("k", 5000ms);
  setter.join();
  ASSERT_TRUE(waited) << waited.error().to_string();
  EXPECT_EQ(*waited, std::string("v\0x", 3));
  auto got = c2->kv_get("k");
  ASSERT_TRUE(got && got->has_value());
  auto timeout = c1->kv_wait("never", 100ms);
  ASSERT_FALSE(timeout);
  EXPECT_EQ(timeout.error().kind(), errc::timeout) << timeout.error().to_string();
}

TEST_F(ClusterServices, DeviceActorsAreFoundByNameAndAnswerAcrossHosts) {
  auto n = start_node("cpu:2");
  ASSERT_TRUE(eventually([&]() { return n->node->node_id() != 0; }));
  auto c = client();
  const std::string name = fmt::format("device/{}/cpu:1", n->node->node_id());
  expected<remote_address> where = make_error(errc::not_found, "");
  ASSERT_TRUE(eventually([&]() { return (where = c->lookup(name)).has_value(); })) << where.error().to_string();

  other_host other;
  ASSERT_TRUE(other.host);
  auto ref = other.host->proxy<device_actor>(*where);
  auto info = ref.ask(describe_device{}, 2000ms).get();
  ASSERT_TRUE(info) << info.error().to_string();
  EXPECT_EQ(info->device, "cpu:1");
  EXPECT_EQ(info->node_id, n->node->node_id());
  EXPECT_TRUE(info->jobs.empty());

  auto unknown = other.host->proxy<device_actor>({where->host, 999}).ask(describe_device{}, 2000ms).get();
  ASSERT_FALSE(unknown);
  EXPECT_EQ(unknown.error().kind(), errc::not_found);
}

TEST_F(ClusterServices, AskToAStoppedNodeFailsFastInsteadOfTimingOut) {
  auto n = start_node("cpu:1");
  ASSERT_TRUE(eventually([&]() { return n->node->node_id() != 0; }));
  other_host other;
  ASSERT_TRUE(other.host);
  expected<remote_address> where = make_error(errc::not_found, "");
  ASSERT_TRUE(eventually([&]() { return (where = client()->lookup(fmt::format("device/{}/cpu:0", n->node->node_id()))).has_value(); }));
  auto ref = other.host->proxy<device_actor>(*where);
  ASSERT_TRUE(ref.ask(describe_device{}, 2000ms).get());
  n.reset();  // closes the node's actor host and its connections
  const auto t0 = std::chrono::steady_clock::now();
  auto r = ref.ask(describe_device{}, 30000ms).get();
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().kind(), errc::disconnected) << r.error().to_string();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 5s);
}

TEST_F(ClusterServices, SubscribersSeeAJoinAndALossExactlyOnce) {
  auto c = client();
  std::mutex m;
  std::vector<membership_event> events;
  auto initial = c->subscribe([&](const membership_event& e) {
    std::lock_guard lock{m};
    events.push_back(e);
  });
  ASSERT_TRUE(initial);
  EXPECT_EQ(initial->epoch, 0u);
  auto n = start_node("cpu:1");
  ASSERT_TRUE(eventually([&]() { return n->node->node_id() != 0; }));
  const auto id = n->node->node_id();
  n.reset();
  ASSERT_TRUE(eventually([&]() {
    std::lock_guard lock{m};
    return events.size() >= 2;
  }));
  std::this_thread::sleep_for(600ms);  // longer than the failure timeout: no second loss may follow
  std::lock_guard lock{m};
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].kind, membership_event::kind_t::joined);
  EXPECT_EQ(events[1].kind, membership_event::kind_t::lost);
  EXPECT_EQ(events[1].node.id, id);
  EXPECT_EQ(events[1].epoch, 2u);
}

TEST_F(ClusterServices, AMessageTheClusterActorDoesNotHandleFailsOnlyThatAsk) {
  net::event_loop loop;
  loop.start();
  auto conn = net::connect_blocking(loop, head_address, wire::schema::Role::PEER, transport());
  ASSERT_TRUE(conn) << conn.error().to_string();
  std::promise<std::string> reply;
  (*conn)->start(
      [&reply](net::connection&, wire::envelope_reader env) {
        if (env.getBody().which() != wire::body_kind::ACTOR) return;
        auto a = env.getBody().getActor();
        if (a.getIsReply() && a.getRequestId() == 5) reply.set_value(a.getErrorKind().cStr());
      },
      [](net::connection&, const error&) {});
  capnp::MallocMessageBuilder msg;
  auto a = wire::start_envelope(msg).getBody().initActor();
  a.setTarget(cluster_actor_id);
  a.setRequestId(5);
  a.setTypeId(0x1234567890abcdefull);  // no message of the cluster actor has this id
  a.getPayload().initAsAnyStruct(1, 0);
  (*conn)->send(msg);
  auto f = reply.get_future();
  ASSERT_EQ(f.wait_for(10s), std::future_status::ready) << "the head answers the ask with an error";
  EXPECT_EQ(f.get(), "protocol");
  EXPECT_TRUE((*conn)->is_open());
  auto c = client();
  auto s = c->status();
  ASSERT_TRUE(s) << "the head keeps serving: " << s.error().to_string();
  (*conn)->close(error{errc::cancelled, "done"});
  loop.stop();
}

TEST_F(ClusterServices, AMembershipWatchGetsEveryChangeAfterItsEpochOrAResyncWhenTheLogIsShorter) {
  other_host other;
  ASSERT_TRUE(other.host);
  auto cluster = other.host->proxy<cluster_actor>({head_address.to_string(), cluster_actor_id});
  // Nothing after epoch 0 yet: a watch without a wait answers at once, empty.
  auto empty = cluster.ask(watch_membership{0, 0}, 5s).get();
  ASSERT_TRUE(empty) << empty.error().to_string();
  EXPECT_TRUE(empty->changes.empty());
  EXPECT_FALSE(empty->resync);
  // A waiting watch is answered by the next change.
  auto waiting = cluster.ask(watch_membership{0, 5000}, 10s);
  auto a = start_node("cpu:1");
  auto first = waiting.get();
  ASSERT_TRUE(first) << first.error().to_string();
  ASSERT_EQ(first->changes.size(), 1u);
  EXPECT_EQ(first->changes[0].epoch, 1u);
  EXPECT_EQ(first->changes[0].kind, membership_kind::joined);
  ASSERT_TRUE(eventually([&]() { return a->node->node_id() != 0; }));
  auto b = start_node("cpu:1");
  auto c = start_node("cpu:1");
  ASSERT_TRUE(eventually([&]() { return b->node->node_id() != 0 && c->node->node_id() != 0; }));
  a.reset();  // epoch 4: lost
  ASSERT_TRUE(eventually([&]() {
    auto s = client()->status();
    return s && s->epoch == 4;
  }));
  // The head keeps 3 changes (epochs 2-4): from epoch 1 every later change comes back, in order.
  auto later = cluster.ask(watch_membership{1, 0}, 5s).get();
  ASSERT_TRUE(later);
  ASSERT_EQ(later->changes.size(), 3u);
  EXPECT_EQ(later->changes[0].epoch, 2u);
  EXPECT_EQ(later->changes[2].kind, membership_kind::lost);
  // From epoch 0 the log falls short: the answer is the whole view instead.
  auto behind = cluster.ask(watch_membership{0, 0}, 5s).get();
  ASSERT_TRUE(behind);
  EXPECT_TRUE(behind->resync);
  EXPECT_EQ(behind->view.epoch, 4u);
  EXPECT_EQ(behind->view.nodes.size(), 3u);
  // A heartbeat for a membership that ended says so.
  auto ack = cluster.ask(node_heartbeat{first->changes[0].node.id, 1}, 5s).get();
  ASSERT_TRUE(ack);
  EXPECT_FALSE(ack->member);
  EXPECT_FALSE(ack->reason.empty());
}

TEST_F(ClusterServices, ANodeWithTheWrongSecretIsRejectedAndGivesUp) {
  auto n = start_node("cpu:1", "not-the-secret");
  ASSERT_TRUE(eventually([&]() { return n->fatal_error().has_value(); }));
  const auto fatal = n->fatal_error();
  EXPECT_NE(fatal->message().find("rejected"), std::string::npos) << fatal->to_string();
  auto s = client()->status();
  ASSERT_TRUE(s);
  EXPECT_TRUE(s->nodes.empty());
}

/// Two actor hosts over loopback; the server publishes an adder of its actor system.
struct RemoteActors : ::testing::Test {
  core::actor_system system{core::actor_system_config{.workers = 2}};
  net::event_loop server_loop, client_loop;
  std::shared_ptr<actor_host> server, client;
  core::actor_ref<adder> local;
  remote_address where;

  void SetUp() override {
    server_loop.start();
    client_loop.start();
    actor_host_config hc;
    hc.transport = transport();
    auto s = actor_host::start(server_loop, hc);
    auto c = actor_host::start(client_loop, hc);
    ASSERT_TRUE(s && c);
    server = *s;
    client = *c;
    local = system.spawn<adder>();
    where = {server->address(), server->publish(local)};
  }
  void TearDown() override {
    client->stop();
    server->stop();
    client_loop.stop();
    server_loop.stop();
  }
};

/// Collects one down notice.
struct down_catcher {
  std::mutex mutex;
  std::condition_variable cv;
  std::optional<core::down_msg> down;
  std::function<void(const core::down_msg&)> callback() {
    return [this](const core::down_msg& d) {
      std::lock_guard lock{mutex};
      down = d;
      cv.notify_all();
    };
  }
  std::optional<core::down_msg> wait(std::chrono::milliseconds within = 10s) {
    std::unique_lock lock{mutex};
    cv.wait_for(lock, within, [this]() { return down.has_value(); });
    return down;
  }
};

TEST_F(RemoteActors, TypedRemoteRefsHaveTheLocalApiAndKeepOrder) {
  core::actor_ref<adder> remote = client->proxy<adder>(where);
  constexpr std::uint64_t kCount = 3000;
  for (std::uint64_t i = 1; i <= kCount; ++i) remote.tell(add_msg{i});
  // The same call shape as a local actor_ref: ask(msg, timeout).get().
  auto total = remote.ask(total_query{}, std::chrono::seconds{5}).get();
  ASSERT_TRUE(total) << total.error().to_string();
  EXPECT_EQ(total->count, kCount);
  EXPECT_EQ(total->out_of_order, 0u);
  EXPECT_EQ(total->sum, kCount * (kCount + 1) / 2);
  auto same_locally = local.ask(total_query{}, std::chrono::seconds{5}).get();
  ASSERT_TRUE(same_locally);
  EXPECT_EQ(same_locally->sum, total->sum);

  auto refused = remote.ask(fail_query{7}, std::chrono::seconds{5}).get();
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().kind(), errc::invalid_argument);
  EXPECT_NE(refused.error().message().find("refused code 7"), std::string::npos) << refused.error().to_string();

  local.stop();
  expected<total_msg> after_stop = total_msg{};
  ASSERT_TRUE(eventually([&]() {
    after_stop = remote.ask(total_query{}, std::chrono::seconds{5}).get();
    return !after_stop;
  }));
  EXPECT_EQ(after_stop.error().kind(), errc::disconnected) << after_stop.error().to_string();
}

TEST_F(RemoteActors, AProxyIsTheSameHandleAsALocalReference) {
  core::actor_ref<adder> remote = client->proxy<adder>(where);
  EXPECT_EQ(client->proxy<adder>(where), remote) << "one proxy per remote actor";
  constexpr std::uint64_t kCount = 3000;
  for (std::uint64_t i = 1; i <= kCount; ++i) remote.tell(add_msg{i});
  auto total = remote.ask(total_query{}, 5s).get();
  ASSERT_TRUE(total) << total.error().to_string();
  EXPECT_EQ(total->count, kCount);
  EXPECT_EQ(total->out_of_order, 0u);
  auto refused = remote.ask(fail_query{7}, 5s).get();
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().kind(), errc::invalid_argument);
  auto not_wire = remote.try_tell(local_only{});
  ASSERT_FALSE(not_wire);
  EXPECT_EQ(not_wire.error().kind(), errc::unimplemented) << not_wire.error().to_string();
}

class asker : public core::actor<asker> {
public:
  struct go {};
  asker(core::actor_ref<adder> target, std::promise<expected<total_msg>>* out) : target_{std::move(target)}, out_{out} {}
  void handle(go) {
    request(target_, total_query{}, 5s, [this](expected<total_msg> r) { out_->set_value(std::move(r)); });
  }

private:
  core::actor_ref<adder> target_;
  std::promise<expected<total_msg>>* out_;
};

TEST_F(RemoteActors, AnActorsRequestThroughAProxyAnswersAsOneOfItsMessages) {
  local.tell(add_msg{1});
  std::promise<expected<total_msg>> result;
  auto a = system.spawn<asker>(client->proxy<adder>(where), &result);
  a.tell(asker::go{});
  auto fut = result.get_future();
  ASSERT_EQ(fut.wait_for(10s), std::future_status::ready);
  auto r = fut.get();
  ASSERT_TRUE(r) << r.error().to_string();
  EXPECT_EQ(r->sum, 1u);
}

TEST_F(RemoteActors, AMonitorOnAProxyFiresWithTheReasonWhenTheRemoteActorStops) {
  auto remote = client->proxy<adder>(where);
  down_catcher caught;
  system.monitor(remote, caught.callback());
  ASSERT_TRUE(remote.ask(total_query{}, 5s).get());  // the monitor request went out first
  local.kill();
  auto d = caught.wait();
  ASSERT_TRUE(d);
  EXPECT_EQ(d->reason, core::exit_reason::killed);
  EXPECT_EQ(d->source, remote);
  EXPECT_FALSE(remote.alive());
  auto after = remote.try_tell(add_msg{1});
  ASSERT_FALSE(after);
  EXPECT_EQ(after.error().kind(), errc::disconnected);
}

TEST_F(RemoteActors, AMonitorOnAProxyFiresWhenTheConnectionIsLost) {
  auto remote = client->proxy<adder>(where);
  down_catcher caught;
  system.monitor(remote, caught.callback());
  ASSERT_TRUE(remote.ask(total_query{}, 5s).get());
  server->stop();
  auto d = caught.wait();
  ASSERT_TRUE(d);
  EXPECT_EQ(d->reason, core::exit_reason::unreachable);
  EXPECT_NE(d->what.find("lost"), std::string::npos) << d->what;
  EXPECT_TRUE(local.alive()) << "the actor itself is fine; only its process cannot be reached";
}

TEST_F(RemoteActors, AMonitorOnAProxyFiresWhenItsHostIsDeclaredDead) {
  auto remote = client->proxy<adder>(where);
  down_catcher caught;
  system.monitor(remote, caught.callback());
  client->mark_dead(where.host, "node 3 lost: no heartbeat");
  auto d = caught.wait();
  ASSERT_TRUE(d);
  EXPECT_EQ(d->reason, core::exit_reason::unreachable);
  EXPECT_NE(d->what.find("no heartbeat"), std::string::npos) << d->what;
}

TEST_F(RemoteActors, MonitoringAnActorTheHostDoesNotPublishFiresAtOnce) {
  auto remote = client->proxy<adder>({where.host, 4242});
  down_catcher caught;
  system.monitor(remote, caught.callback());
  auto d = caught.wait();
  ASSERT_TRUE(d);
  EXPECT_EQ(d->reason, core::exit_reason::normal);
  EXPECT_NE(d->what.find("no actor 4242"), std::string::npos) << d->what;
}

class watcher : public core::actor<watcher> {
public:
  struct watch {
    core::actor_ref<adder> target;
  };
  explicit watcher(std::promise<core::down_msg>* out) : out_{out} {}
  void handle(watch w) { monitor(w.target); }
  void on_down(const core::down_msg& d) override { out_->set_value(d); }

private:
  std::promise<core::down_msg>* out_;
};

TEST_F(RemoteActors, AnActorMonitoringAProxyGetsItsDownNoticeAsAMessage) {
  std::promise<core::down_msg> down;
  auto w = system.spawn<watcher>(&down);
  w.tell(watcher::watch{client->proxy<adder>(where)});
  ASSERT_TRUE(client->proxy<adder>(where).ask(total_query{}, 5s).get());
  server->remove(where.actor_id);
  auto fut = down.get_future();
  ASSERT_EQ(fut.wait_for(10s), std::future_status::ready);
  EXPECT_EQ(fut.get().reason, core::exit_reason::normal);
}

TEST_F(RemoteActors, AProxyNobodyMonitorsOutlivesALostConnectionAndReconnects) {
  auto remote = client->proxy<adder>(where);
  ASSERT_TRUE(remote.ask(total_query{}, 5s).get());
  client->mark_dead(where.host, "a partition");  // the connection is cut, sends fail at once
  auto cut = remote.ask(total_query{}, 5s).get();
  ASSERT_FALSE(cut);
  EXPECT_EQ(cut.error().kind(), errc::disconnected);
  EXPECT_TRUE(remote.alive()) << "nobody monitors it: it does not go down";
  client->mark_alive(where.host);
  auto again = remote.ask(total_query{}, 5s).get();
  ASSERT_TRUE(again) << again.error().to_string();
}

class linked_to_remote : public core::actor<linked_to_remote> {
public:
  struct attach {
    core::actor_ref<adder> target;
  };
  void handle(attach a) { link(a.target); }
};

TEST_F(RemoteActors, AnActorLinkedToAProxyTerminatesWhenTheRemoteActorFails) {
  auto remote = client->proxy<adder>(where);
  auto l = system.spawn<linked_to_remote>();
  std::promise<core::down_msg> down;
  system.monitor(l, [&down](const core::down_msg& d) { down.set_value(d); });
  l.tell(linked_to_remote::attach{remote});
  ASSERT_TRUE(remote.ask(total_query{}, 5s).get());  // the link's monitor request went out first
  local.kill();
  auto d = down.get_future();
  ASSERT_EQ(d.wait_for(10s), std::future_status::ready);
  EXPECT_EQ(d.get().reason, core::exit_reason::linked);
}

}  // namespace

namespace {

TEST_F(RemoteActors, ARemoteActorLinkedThroughAProxyExitsWhenItsPartnerTerminates) {
  auto remote = client->proxy<adder>(where);
  auto l = system.spawn<linked_to_remote>();
  std::promise<core::down_msg> down;
  system.monitor(local, [&down](const core::down_msg& d) { down.set_value(d); });
  l.tell(linked_to_remote::attach{remote});
  ASSERT_TRUE(remote.ask(total_query{}, 5s).get());  // the link notice went out first, on the same channel
  l.kill();
  auto d = down.get_future();
  ASSERT_EQ(d.wait_for(10s), std::future_status::ready) << "the remote partner gets the exit signal";
  EXPECT_EQ(d.get().reason, core::exit_reason::linked);
}

TEST_F(RemoteActors, ARemoteActorLinkedThroughAProxyExitsWhenTheLinkingProcessIsLost) {
  auto remote = client->proxy<adder>(where);
  auto l = system.spawn<linked_to_remote>();
  std::promise<core::down_msg> down;
  system.monitor(local, [&down](const core::down_msg& d) { down.set_value(d); });
  l.tell(linked_to_remote::attach{remote});
  ASSERT_TRUE(remote.ask(total_query{}, 5s).get());
  client->stop();  // the linking process's connections close
  auto d = down.get_future();
  ASSERT_EQ(d.wait_for(10s), std::future_status::ready);
  EXPECT_EQ(d.get().reason, core::exit_reason::linked);
}

TEST_F(RemoteActors, ANormalExitOfTheLinkedPartnerLeavesTheRemoteActorRunning) {
  auto remote = client->proxy<adder>(where);
  auto l = system.spawn<linked_to_remote>();
  std::promise<void> gone;
  system.monitor(l, [&gone](const core::down_msg&) { gone.set_value(); });
  l.tell(linked_to_remote::attach{remote});
  ASSERT_TRUE(remote.ask(total_query{}, 5s).get());
  l.stop();  // exits normally: its exit signal (reason normal) is sent, and ignored there
  ASSERT_EQ(gone.get_future().wait_for(10s), std::future_status::ready);
  auto still = remote.ask(total_query{}, 5s).get();
  ASSERT_TRUE(still) << still.error().to_string();
  EXPECT_TRUE(local.alive());
}

}  // namespace
