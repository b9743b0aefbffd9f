// The benchmark workloads on flexsp::core.

#include <atomic>
#include <chrono>
#include <latch>
#include <vector>

#include "flexsp/core/actor_system.hpp"
#include "workloads.hpp"

namespace flexsp::bench {
namespace {

using namespace flexsp::core;
using bench_clock = std::chrono::steady_clock;

double ns_since(bench_clock::time_point t0) {
  return static_cast<double>(std::chrono::duration_cast<std::chrono::nanoseconds>(bench_clock::now() - t0).count());
}

actor_system_config pool(const workload_params& p) {
  actor_system_config cfg;
  cfg.workers = p.workers;
  cfg.scheduling = p.sharing ? scheduling_policy::sharing : scheduling_policy::stealing;
  return cfg;
}

// --- ping-pong: two actors bounce one message; one round trip = ping + pong ---

struct ball {
  std::uint64_t n;
};
class pinger;
class ponger : public actor<ponger> {
public:
  void handle(const actor_ref<pinger>& peer) { peer_ = peer; }
  void handle(const ball& b);

private:
  actor_ref<pinger> peer_;
};
class pinger : public actor<pinger> {
public:
  pinger(std::uint64_t total, workload_result* out, std::latch* done) : total_{total}, out_{out}, done_{done} {}
  void handle(const actor_ref<ponger>& peer) {
    peer_ = peer;
    start_ = bench_clock::now();
    sent_at_ = start_;
    peer_.tell(ball{0});
  }
  void handle(const ball& b) {
    if (b.n % kSampleEvery == 0) out_->latencies_ns.push_back(ns_since(sent_at_));
    if (b.n + 1 == total_) {
      out_->seconds = ns_since(start_) / 1e9;
      out_->operations = static_cast<double>(total_);
      out_->correct = true;
      done_->count_down();
      return;
    }
    if ((b.n + 1) % kSampleEvery == 0) sent_at_ = bench_clock::now();
    peer_.tell(ball{b.n + 1});
  }

private:
  std::uint64_t total_;
  workload_result* out_;
  std::latch* done_;
  actor_ref<ponger> peer_;
  bench_clock::time_point start_, sent_at_;
};
void ponger::handle(const ball& b) { peer_.tell(b); }

// --- fan-out: one coordinator requests from 8 servers, waits for all 8 replies, repeats ---

struct work {
  std::uint64_t x;
};
struct go {};
class server : public actor<server> {
public:
  std::uint64_t handle(const work& w) { return w.x + 1; }
};
class coordinator : public actor<coordinator> {
public:
  coordinator(std::vector<actor_ref<server>> servers, std::uint64_t rounds, workload_result* out, std::latch* done)
      : servers_{std::move(servers)}, rounds_{rounds}, out_{out}, done_{done} {}
  void handle(go) {
    start_ = bench_clock::now();
    round();
  }

private:
  void round() {
    round_start_ = bench_clock::now();
    pending_ = servers_.size();
    for (std::size_t i = 0; i < servers_.size(); ++i)
      request(servers_[i], work{i}, duration::max(), [this](expected<std::uint64_t> r) { reply(r); });
  }
  void reply(const expected<std::uint64_t>& r) {
    if (!r) {
      errors_++;
    } else {
      sum_ += *r;
    }
    if (--pending_ != 0) return;
    out_->latencies_ns.push_back(ns_since(round_start_));
    if (++done_rounds_ < rounds_) {
      round();
      return;
    }
    out_->seconds = ns_since(start_) / 1e9;
    out_->operations = static_cast<double>(rounds_ * servers_.size());
    // sum over one round of (i + 1) for i < 8 is 36
    out_->correct = errors_ == 0 && sum_ == rounds_ * 36;
    done_->count_down();
  }
  std::vector<actor_ref<server>> servers_;
  std::uint64_t rounds_, done_rounds_ = 0, sum_ = 0, errors_ = 0;
  std::size_t pending_ = 0;
  workload_result* out_;
  std::latch* done_;
  bench_clock::time_point start_, round_start_;
};

// --- many senders: 100 actors each send M messages into one mailbox ---

struct item {
  std::int64_t stamp_ns;  // send time for sampled messages, else 0
};
class sink : public actor<sink> {
public:
  sink(std::uint64_t expected, workload_result* out, std::latch* done)
      : expected_{expected}, out_{out}, done_{done} {}
  void handle(const item& m) {
    if (m.stamp_ns != 0) out_->latencies_ns.push_back(static_cast<double>(now_ns() - m.stamp_ns));
    if (++received_ == expected_) {
      out_->correct = true;
      done_->count_down();
    }
  }
  static std::int64_t now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(bench_clock::now().time_since_epoch()).count();
  }

private:
  std::uint64_t expected_, received_ = 0;
  workload_result* out_;
  std::latch* done_;
};
class sender : public actor<sender> {
public:
  sender(actor_ref<sink> to, std::uint64_t count) : to_{std::move(to)}, count_{count} {}
  void handle(go) {
    for (std::uint64_t i = 0; i < count_; ++i) to_.tell(item{i % kSampleEvery == 0 ? sink::now_ns() : 0});
  }

private:
  actor_ref<sink> to_;
  std::uint64_t count_;
};

// --- spawn+stop: spawn an actor, tell it to quit, until all N have terminated ---

struct quit_now {};
class ephemeral : public actor<ephemeral> {
public:
  explicit ephemeral(std::atomic<std::uint64_t>* left, std::latch* done) : left_{left}, done_{done} {}
  void handle(quit_now) { quit(); }
  void on_stop(exit_reason) override {
    if (left_->fetch_sub(1, std::memory_order_acq_rel) == 1) done_->count_down();
  }

private:
  std::atomic<std::uint64_t>* left_;
  std::latch* done_;
};

}  // namespace

workload_result ours_ping_pong(const workload_params& p) {
  workload_result out;
  out.latencies_ns.reserve(p.ping_pong_round_trips / kSampleEvery + 1);
  std::latch done{1};
  actor_system sys{pool(p)};
  auto a = sys.spawn<pinger>(p.ping_pong_round_trips, &out, &done);
  auto b = sys.spawn<ponger>();
  b.tell(a);
  a.tell(b);
  done.wait();
  return out;
}

workload_result ours_fan_out(const workload_params& p) {
  workload_result out;
  out.latencies_ns.reserve(p.fan_out_rounds);
  std::latch done{1};
  actor_system sys{pool(p)};
  std::vector<actor_ref<server>> servers;
  for (int i = 0; i < 8; ++i) servers.push_back(sys.spawn<server>());
  sys.spawn<coordinator>(servers, p.fan_out_rounds, &out, &done).tell(go{});
  done.wait();
  return out;
}

workload_result ours_many_senders(const workload_params& p) {
  workload_result out;
  const std::uint64_t total = p.senders * p.messages_per_sender;
  out.latencies_ns.reserve(total / kSampleEvery + p.senders);
  std::latch done{1};
  actor_system sys{pool(p)};
  auto s = sys.spawn<sink>(total, &out, &done);
  std::vector<actor_ref<sender>> senders;
  for (std::uint32_t i = 0; i < p.senders; ++i) senders.push_back(sys.spawn<sender>(s, p.messages_per_sender));
  const auto t0 = bench_clock::now();
  for (auto& x : senders) x.tell(go{});
  done.wait();
  out.seconds = ns_since(t0) / 1e9;
  out.operations = static_cast<double>(total);
  return out;
}

workload_result ours_spawn_stop(const workload_params& p) {
  workload_result out;
  out.latencies_ns.reserve(p.spawns / kSampleEvery + 1);
  std::atomic<std::uint64_t> left{p.spawns};
  std::latch done{1};
  actor_system sys{pool(p)};
  const auto t0 = bench_clock::now();
  for (std::uint64_t i = 0; i < p.spawns; ++i) {
    const bool sample = i % kSampleEvery == 0;
    const auto s0 = sample ? bench_clock::now() : bench_clock::time_point{};
    sys.spawn<ephemeral>(&left, &done).tell(quit_now{});
    if (sample) out.latencies_ns.push_back(ns_since(s0));
  }
  done.wait();
  out.seconds = ns_since(t0) / 1e9;
  out.operations = static_cast<double>(p.spawns);
  out.correct = left.load() == 0;
  return out;
}

}  // namespace flexsp::bench
