#pragma once
// The four actor-runtime workloads, implemented once for flexsp::core and once for CAF 0.17
// (caf_workloads.cpp, built only when CAF is found), driven by actor_bench.cpp.

#include <cstddef>
#include <cstdint>
#include <vector>

namespace flexsp::bench {

struct workload_params {
  std::size_t workers = 2;
  bool sharing = false;  // ours: scheduling_policy::sharing instead of stealing
  std::uint64_t ping_pong_round_trips = 400'000;
  std::uint64_t fan_out_rounds = 40'000;  // 8 requests per round
  std::uint32_t senders = 100;
  std::uint64_t messages_per_sender = 5'000;
  std::uint64_t spawns = 50'000;
};

struct workload_result {
  double operations = 0;  // round trips, requests, messages or spawn+stops completed
  double seconds = 0;
  std::vector<double> latencies_ns;  // sampled, workload-specific (see actor_bench.cpp)
  bool correct = false;
};

workload_result ours_ping_pong(const workload_params& p);
workload_result ours_fan_out(const workload_params& p);
workload_result ours_many_senders(const workload_params& p);
workload_result ours_spawn_stop(const workload_params& p);

#ifdef FLEXSP_BENCH_HAVE_CAF
workload_result caf_ping_pong(const workload_params& p);
workload_result caf_fan_out(const workload_params& p);
workload_result caf_many_senders(const workload_params& p);
workload_result caf_spawn_stop(const workload_params& p);
#endif

/// Every how many operations a latency sample is taken (keeps clock reads off most messages).
inline constexpr std::uint64_t kSampleEvery = 16;

}  // namespace flexsp::bench
