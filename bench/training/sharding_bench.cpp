// Sharded model states (label perf): one job trained with replicate, zero3 and hsdp states on an
// embedded cluster of 2 nodes x 4 CPU devices (hsdp: a shard group per node), in turns within
// one run. Per mode: model-state bytes per device (parameters, gradients, both AdamW moments; the
// devices' own count) and its ratio to replicate, tokens/s and its ratio to replicate, the share
// of step time spent waiting for parameter gathers and in gradient reduce-scatters, and the
// largest relative loss difference from replicate over the run.
//
//   build/bench/flexsp_bench_sharding [--quick] [--steps N] [--rounds R] [--layers L] [--d-model D]
#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "flexsp/actors/embedded.hpp"
#include "flexsp/core/log.hpp"

namespace {

using namespace flexsp;
using namespace flexsp::actors;

struct mode_run {
  double state_mb = 0;
  double tokens = 0;
  double step_ms = 0;
  double shard_comm_ms = 0;
  std::vector<double> losses;
  bool ok = false;
};

mode_run train(embedded_cluster& cluster, sharding_mode mode, std::uint64_t steps, std::uint32_t layers,
               std::uint32_t d_model) {
  job_spec spec;
  spec.name = fmt::format("shard-{}", to_string(mode));
  spec.steps = steps;
  spec.batch_size = 32;
  spec.seed = 3;
  spec.model.layers = layers;
  spec.model.d_model = d_model;
  spec.model.heads = 8;
  spec.model.max_seq = 2048;
  spec.calibrate = false;
  spec.milp = false;
  spec.checkpoints_off = true;
  spec.sharding = mode;
  mode_run out;
  auto job = cluster.jobs().submit(spec, [&out](const step_metrics& m) {
    out.state_mb = std::max(out.state_mb, m.state_mb);
    out.tokens += static_cast<double>(m.tokens);
    out.step_ms += m.step_ms;
    out.shard_comm_ms += m.shard_comm_ms;
    out.losses.push_back(m.loss);
  });
  if (!job) {
    fmt::print(stderr, "submit: {}\n", job.error().to_string());
    return out;
  }
  const auto st = (*job)->wait();
  out.ok = st.state == job_state::succeeded && out.losses.size() == steps;
  if (!out.ok) fmt::print(stderr, "{}: {} {}\n", spec.name, to_string(st.state), st.error);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  std::uint64_t steps = 10;
  int rounds = 2;
  std::uint32_t layers = 4, d_model = 256;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) {
      steps = 4;
      rounds = 1;
    } else if (std::strcmp(argv[i], "--steps") == 0 && i + 1 < argc) {
      steps = std::stoull(argv[++i]);
    } else if (std::strcmp(argv[i], "--rounds") == 0 && i + 1 < argc) {
      rounds = std::atoi(argv[++i]);
    } else if (std::strcmp(argv[i], "--layers") == 0 && i + 1 < argc) {
      layers = static_cast<std::uint32_t>(std::atoi(argv[++i]));
    } else if (std::strcmp(argv[i], "--d-model") == 0 && i + 1 < argc) {
      d_model = static_cast<std::uint32_t>(std::atoi(argv[++i]));
    } else {
      fmt::print(stderr, "usage: {} [--quick] [--steps N] [--rounds R] [--layers L] [--d-model D]\n", argv[0]);
      return 2;
    }
  }
  (void)log::configure("warn");
  auto cluster = embedded_cluster::start(2, 4);
  if (!cluster) {
    fmt::print(stderr, "embedded cluster: {}\n", cluster.error().to_string());
    return 1;
  }
  const sharding_mode modes[] = {sharding_mode::replicate, sharding_mode::zero3, sharding_mode::hsdp};
  std::map<sharding_mode, mode_run> total;
  int rc = 0;
  for (int r = 0; r < rounds; ++r)
    for (auto mode : modes) {
      auto m = train(**cluster, mode, steps, layers, d_model);
      if (!m.ok) rc = 1;
      auto& t = total[mode];
      t.state_mb = m.state_mb;
      t.tokens += m.tokens;
      t.step_ms += m.step_ms;
      t.shard_comm_ms += m.shard_comm_ms;
      t.losses = m.losses;  // every round runs the same job: the same losses
      t.ok = m.ok;
    }
  const auto& base = total[sharding_mode::replicate];
  fmt::print("## sharded model states: 2 nodes x 4 CPU devices, GPT {}x{} (heads 8), batch 32, {} steps x {} rounds\n",
             layers, d_model, steps, rounds);
  fmt::print("| mode | states MiB per device | / replicate | tokens/s | / replicate | gathers + reduce-scatters, share "
             "of step | max loss rel. diff vs replicate |\n|---|---|---|---|---|---|---|\n");
  for (auto mode : modes) {
    const auto& m = total[mode];
    const double tps = m.tokens / std::max(1e-9, m.step_ms / 1000.0);
    const double base_tps = base.tokens / std::max(1e-9, base.step_ms / 1000.0);
    double diff = 0;
    for (std::size_t i = 0; i < std::min(m.losses.size(), base.losses.size()); ++i)
      diff = std::max(diff, std::abs(m.losses[i] - base.losses[i]) / std::max(1e-12, std::abs(base.losses[i])));
    fmt::print("| {} | {:.2f} | {:.3f} | {:.0f} | {:.2f}x | {:.1f}% | {:.1e} |\n", to_string(mode), m.state_mb,
               m.state_mb / std::max(1e-12, base.state_mb), tps, tps / std::max(1e-9, base_tps),
               100 * m.shard_comm_ms / std::max(1e-9, m.step_ms), diff);
    nlohmann::json j{{"bench", "sharding"},
                     {"mode", to_string(mode)},
                     {"state_mb", m.state_mb},
                     {"state_vs_replicate", m.state_mb / std::max(1e-12, base.state_mb)},
                     {"tokens_per_s", tps},
                     {"tokens_vs_replicate", tps / std::max(1e-9, base_tps)},
                     {"shard_comm_share", m.shard_comm_ms / std::max(1e-9, m.step_ms)},
                     {"max_loss_rel_diff", diff}};
    fmt::print("{}\n", j.dump());
    if (diff > 1e-5) rc = 1;
  }
  return rc;
}
