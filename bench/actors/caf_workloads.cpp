// The same workloads on CAF 0.17, written the way CAF's own benchmarks write them
// (event-based actors, atoms, request/then).

#include <atomic>
#include <chrono>
#include <latch>
#include <vector>

#include <caf/all.hpp>

#include "workloads.hpp"

namespace flexsp::bench {
namespace {

using bench_clock = std::chrono::steady_clock;
using ping_atom = caf::atom_constant<caf::atom("ping")>;
using go_atom = caf::atom_constant<caf::atom("go")>;
using quit_atom = caf::atom_constant<caf::atom("quit")>;

double ns_since(bench_clock::time_point t0) {
  return static_cast<double>(std::chrono::duration_cast<std::chrono::nanoseconds>(bench_clock::now() - t0).count());
}
std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(bench_clock::now().time_since_epoch()).count();
}

struct caf_config : caf::actor_system_config {
  explicit caf_config(std::size_t workers) { set("scheduler.max-threads", workers); }
};

caf::behavior ponger(caf::event_based_actor* self) {
  return {[self](ping_atom, std::uint64_t n) { self->send(caf::actor_cast<caf::actor>(self->current_sender()), ping_atom::value, n); }};
}

struct pinger_state {
  bench_clock::time_point start, sent_at;
};
caf::behavior pinger(caf::stateful_actor<pinger_state>* self, caf::actor peer, std::uint64_t total, workload_result* out,
                     std::latch* done) {
  return {
      [=](go_atom) {
        self->state.start = bench_clock::now();
        self->state.sent_at = self->state.start;
        self->send(peer, ping_atom::value, std::uint64_t{0});
      },
      [=](ping_atom, std::uint64_t n) {
        if (n % kSampleEvery == 0) out->latencies_ns.push_back(ns_since(self->state.sent_at));
        if (n + 1 == total) {
          out->seconds = ns_since(self->state.start) / 1e9;
          out->operations = static_cast<double>(total);
          out->correct = true;
          done->count_down();
          return;
        }
        if ((n + 1) % kSampleEvery == 0) self->state.sent_at = bench_clock::now();
        self->send(peer, ping_atom::value, n + 1);
      },
  };
}

caf::behavior server(caf::event_based_actor*) {
  return {[](std::uint64_t x) { return x + 1; }};
}

struct coordinator_state {
  std::uint64_t done_rounds = 0, sum = 0, errors = 0;
  std::size_t pending = 0;
  bench_clock::time_point start, round_start;
};
using coordinator_actor = caf::stateful_actor<coordinator_state>;

void fan_out_round(coordinator_actor* self, const std::vector<caf::actor>& servers, std::uint64_t rounds,
                   workload_result* out, std::latch* done);

void fan_out_reply(coordinator_actor* self, const std::vector<caf::actor>& servers, std::uint64_t rounds,
                   workload_result* out, std::latch* done, bool ok, std::uint64_t value) {
  auto& st = self->state;
  if (ok)
    st.sum += value;
  else
    st.errors++;
  if (--st.pending != 0) return;
  out->latencies_ns.push_back(ns_since(st.round_start));
  if (++st.done_rounds < rounds) {
    fan_out_round(self, servers, rounds, out, done);
    return;
  }
  out->seconds = ns_since(st.start) / 1e9;
  out->operations = static_cast<double>(rounds * servers.size());
  out->correct = st.errors == 0 && st.sum == rounds * 36;
  done->count_down();
}

void fan_out_round(coordinator_actor* self, const std::vector<caf::actor>& servers, std::uint64_t rounds,
                   workload_result* out, std::latch* done) {
  self->state.round_start = bench_clock::now();
  self->state.pending = servers.size();
  for (std::size_t i = 0; i < servers.size(); ++i)
    self->request(servers[i], caf::infinite, std::uint64_t{i})
        .then([=](std::uint64_t r) { fan_out_reply(self, servers, rounds, out, done, true, r); },
              [=](caf::error&) { fan_out_reply(self, servers, rounds, out, done, false, 0); });
}

caf::behavior coordinator(coordinator_actor* self, std::vector<caf::actor> servers, std::uint64_t rounds,
                          workload_result* out, std::latch* done) {
  return {[=](go_atom) {
    self->state.start = bench_clock::now();
    fan_out_round(self, servers, rounds, out, done);
  }};
}

struct sink_state {
  std::uint64_t received = 0;
};
caf::behavior sink(caf::stateful_actor<sink_state>* self, std::uint64_t expected, workload_result* out,
                   std::latch* done) {
  return {[=](std::int64_t stamp) {
    if (stamp != 0) out->latencies_ns.push_back(static_cast<double>(now_ns() - stamp));
    if (++self->state.received == expected) {
      out->correct = true;
      done->count_down();
    }
  }};
}

caf::behavior sender(caf::event_based_actor* self, caf::actor to, std::uint64_t count) {
  return {[=](go_atom) {
    for (std::uint64_t i = 0; i < count; ++i) self->send(to, i % kSampleEvery == 0 ? now_ns() : std::int64_t{0});
  }};
}

caf::behavior ephemeral(caf::event_based_actor* self, std::atomic<std::uint64_t>* left, std::latch* done) {
  self->attach_functor([left, done](const caf::error&) {
    if (left->fetch_sub(1, std::memory_order_acq_rel) == 1) done->count_down();
  });
  return {[self](quit_atom) { self->quit(); }};
}

}  // namespace

workload_result caf_ping_pong(const workload_params& p) {
  workload_result out;
  out.latencies_ns.reserve(p.ping_pong_round_trips / kSampleEvery + 1);
  std::latch done{1};
  caf_config cfg{p.workers};
  caf::actor_system sys{cfg};
  auto b = sys.spawn(ponger);
  auto a = sys.spawn(pinger, b, p.ping_pong_round_trips, &out, &done);
  caf::anon_send(a, go_atom::value);
  done.wait();
  return out;
}

workload_result caf_fan_out(const workload_params& p) {
  workload_result out;
  out.latencies_ns.reserve(p.fan_out_rounds);
  std::latch done{1};
  caf_config cfg{p.workers};
  caf::actor_system sys{cfg};
  std::vector<caf::actor> servers;
  for (int i = 0; i < 8; ++i) servers.push_back(sys.spawn(server));
  caf::anon_send(sys.spawn(coordinator, servers, p.fan_out_rounds, &out, &done), go_atom::value);
  done.wait();
  return out;
}

workload_result caf_many_senders(const workload_params& p) {
  workload_result out;
  const std::uint64_t total = p.senders * p.messages_per_sender;
  out.latencies_ns.reserve(total / kSampleEvery + p.senders);
  std::latch done{1};
  caf_config cfg{p.workers};
  caf::actor_system sys{cfg};
  auto s = sys.spawn(sink, total, &out, &done);
  std::vector<caf::actor> senders;
  for (std::uint32_t i = 0; i < p.senders; ++i) senders.push_back(sys.spawn(sender, s, p.messages_per_sender));
  const auto t0 = bench_clock::now();
  for (auto& x : senders) caf::anon_send(x, go_atom::value);
  done.wait();
  out.seconds = ns_since(t0) / 1e9;
  out.operations = static_cast<double>(total);
  return out;
}

workload_result caf_spawn_stop(const workload_params& p) {
  workload_result out;
  out.latencies_ns.reserve(p.spawns / kSampleEvery + 1);
  std::atomic<std::uint64_t> left{p.spawns};
  std::latch done{1};
  caf_config cfg{p.workers};
  caf::actor_system sys{cfg};
  const auto t0 = bench_clock::now();
  for (std::uint64_t i = 0; i < p.spawns; ++i) {
    const bool sample = i % kSampleEvery == 0;
    const auto s0 = sample ? bench_clock::now() : bench_clock::time_point{};
    caf::anon_send(sys.spawn(ephemeral, &left, &done), quit_atom::value);
    if (sample) out.latencies_ns.push_back(ns_since(s0));
  }
  done.wait();
  out.seconds = ns_since(t0) / 1e9;
  out.operations = static_cast<double>(p.spawns);
  out.correct = left.load() == 0;
  return out;
}

}  // namespace flexsp::bench
