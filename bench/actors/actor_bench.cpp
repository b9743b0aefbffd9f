// Actor runtime throughput, flexsp::core side by side with CAF 0.17 in the same process.
//
//   flexsp_bench_actors [--reps N] [--scale F] [--workers N] [--sharing]
//
// --sharing runs our side with one shared run queue instead of work stealing.
//
// Workloads (each run alone, in a fresh runtime, so idle threads of one cannot slow the other;
// runs of the two runtimes alternate and the median of --reps runs is reported):
//   ping-pong    two actors bounce one message; round trips/s; latency = one round trip
//   fan-out      one actor requests from 8 servers and waits for all 8 replies; requests/s;
//                latency = one round of 8
//   100-senders  100 actors send into one mailbox; msgs/s; latency = send to handle
//   spawn-stop   spawn an actor and tell it to quit, from one thread; actors/s; latency =
//                the spawn call
// Prints `<workload>: ours <x>/s, caf <y>/s, ratio ours/caf <r>` plus latency percentiles and
// a correctness verdict; exits 1 if any run delivered wrong results.

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "workloads.hpp"

namespace {

using flexsp::bench::workload_params;
using flexsp::bench::workload_result;

struct summary {
  double rate = 0;  // median operations/s
  std::vector<double> latencies_ns;
  bool correct = true;
};

double percentile(std::vector<double>& v, double q) {
  if (v.empty()) return 0;
  const auto k = static_cast<std::size_t>(q * static_cast<double>(v.size() - 1));
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k), v.end());
  return v[k];
}

void add_run(summary& s, std::vector<double>& rates, workload_result r) {
  rates.push_back(r.seconds > 0 ? r.operations / r.seconds : 0);
  s.correct = s.correct && r.correct;
  s.latencies_ns.insert(s.latencies_ns.end(), r.latencies_ns.begin(), r.latencies_ns.end());
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

std::string latency_text(summary& s) {
  if (s.latencies_ns.empty()) return "n/a";
  char buf[128];
  std::snprintf(buf, sizeof buf, "p50 %.2f p90 %.2f p99 %.2f p99.9 %.2f us", percentile(s.latencies_ns, 0.5) / 1e3,
                percentile(s.latencies_ns, 0.9) / 1e3, percentile(s.latencies_ns, 0.99) / 1e3,
                percentile(s.latencies_ns, 0.999) / 1e3);
  return buf;
}

using runner = std::function<workload_result(const workload_params&)>;

bool run_workload(const char* name, const char* unit_note, const runner& ours, const runner& caf, int reps,
                  const workload_params& p) {
  summary o, c;
  std::vector<double> orates, crates;
  for (int i = 0; i < reps; ++i) {
    add_run(o, orates, ours(p));
    if (caf) add_run(c, crates, caf(p));
  }
  o.rate = median(orates);
  if (caf) {
    c.rate = median(crates);
    std::printf("%s: ours %.0f/s, caf %.0f/s, ratio ours/caf %.2f\n", name, o.rate, c.rate,
                c.rate > 0 ? o.rate / c.rate : 0.0);
  } else {
    std::printf("%s: ours %.0f/s, caf n/a, ratio ours/caf n/a\n", name, o.rate);
  }
  std::printf("  %s latency (%s): ours %s; caf %s\n", name, unit_note, latency_text(o).c_str(),
              caf ? latency_text(c).c_str() : "n/a");
  const bool ok = o.correct && (!caf || c.correct);
  std::printf("  %s correct: ours %s, caf %s\n", name, o.correct ? "yes" : "NO",
              caf ? (c.correct ? "yes" : "NO") : "n/a");
  std::fflush(stdout);
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 3;
  double scale = 1.0;
  workload_params p;
  p.workers = std::max(1u, std::thread::hardware_concurrency());
  for (int i = 1; i < argc; ++i) {
    const bool has_value = i + 1 < argc;
    if (!std::strcmp(argv[i], "--reps") && has_value) {
      reps = std::max(1, std::atoi(argv[++i]));
    } else if (!std::strcmp(argv[i], "--scale") && has_value) {
      scale = std::max(0.001, std::atof(argv[++i]));
    } else if (!std::strcmp(argv[i], "--sharing")) {
      p.sharing = true;
    } else if (!std::strcmp(argv[i], "--workers") && has_value) {
      p.workers = static_cast<std::size_t>(std::max(1, std::atoi(argv[++i])));
    } else {
      std::fprintf(stderr, "usage: %s [--reps N] [--scale F] [--workers N] [--sharing]\n", argv[0]);
      return 2;
    }
  }
  auto scaled = [scale](std::uint64_t n) { return std::max<std::uint64_t>(16, static_cast<std::uint64_t>(n * scale)); };
  p.ping_pong_round_trips = scaled(p.ping_pong_round_trips);
  p.fan_out_rounds = scaled(p.fan_out_rounds);
  p.messages_per_sender = scaled(p.messages_per_sender);
  p.spawns = scaled(p.spawns);
  std::printf("actor runtimes: %zu workers, %d reps (median), scale %.3f, ours %s\n", p.workers, reps, scale,
              p.sharing ? "work sharing" : "work stealing");

  namespace b = flexsp::bench;
#ifdef FLEXSP_BENCH_HAVE_CAF
  const runner caf_pp = b::caf_ping_pong, caf_fo = b::caf_fan_out, caf_ms = b::caf_many_senders,
               caf_ss = b::caf_spawn_stop;
#else
  const runner caf_pp, caf_fo, caf_ms, caf_ss;
#endif
  bool ok = true;
  ok &= run_workload("ping-pong", "round trip", b::ours_ping_pong, caf_pp, reps, p);
  ok &= run_workload("fan-out", "round of 8 requests", b::ours_fan_out, caf_fo, reps, p);
  ok &= run_workload("100-senders", "send to handle", b::ours_many_senders, caf_ms, reps, p);
  ok &= run_workload("spawn-stop", "spawn call", b::ours_spawn_stop, caf_ss, reps, p);
  return ok ? 0 : 1;
}
