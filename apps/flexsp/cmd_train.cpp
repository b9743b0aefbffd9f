// `flexsp train`: head, node(s) and one job in this process (CPU devices by default, GPUs on
// request), sensible defaults.
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "embedded_setup.hpp"
#include "flexsp/actors/embedded.hpp"
#include "flexsp/actors/job_spec.hpp"
#include "flexsp/core/config.hpp"
#include "flexsp/core/log.hpp"

namespace flexsp::app {

namespace {

struct train_flags {
  std::string devices = "cpu:8";
  int nodes = 1;
  std::uint64_t steps = 30;
  std::uint32_t batch_size = 64;
  std::string strategy = "flexsp";
  std::uint64_t seed = 1;
  std::string metrics;
  std::string config;
  std::string checkpoint_dir;
  std::uint32_t checkpoint_every = 0;
  double memory_limit_gb = 0;
  std::string sharding;
  std::uint32_t shard_group = 0;
  std::string data;
  bool no_calibrate = false;
  bool no_milp = false;
  std::string attention;
  std::string matmul;
  std::string model;
  std::string heartbeat = "200ms";
  std::string failure_timeout = "1s";
};

std::atomic<actors::scheduled_job*> g_running{nullptr};

extern "C" void on_interrupt(int) {
  if (auto* j = g_running.load()) j->cancel();
}

int run_train(const train_flags& f, const CLI::App& cmd) {
  // The job's own progress lines say what happens; service logs only when asked for.
  if (default_log_levels(cmd))
    (void)log::configure("warn");
  auto parsed = read_spec_json(f.config);
  if (!parsed) {
    fmt::print(stderr, "flexsp train: {}\n", parsed.error().message());
    return 2;
  }
  auto spec_json = std::move(*parsed);
  auto set = [&](const char* flag, const char* key, auto value) {
    if (cmd.count(flag) > 0 || !spec_json.contains(key)) spec_json[key] = value;
  };
  set("--steps", "steps", f.steps);
  set("--batch-size", "batch_size", f.batch_size);
  set("--strategy", "strategy", f.strategy);
  set("--seed", "seed", f.seed);
  if (!spec_json.contains("name")) spec_json["name"] = "train";
  if (f.no_calibrate) spec_json["calibrate"] = false;
  if (f.no_milp) spec_json["milp"] = false;
  for (const auto& [key, value] :
       {std::pair{"preset", &f.model}, std::pair{"attention", &f.attention}, std::pair{"matmul", &f.matmul}}) {
    if (value->empty()) continue;
    if (!spec_json.contains("model") || !spec_json["model"].is_object()) spec_json["model"] = nlohmann::json::object();
    spec_json["model"][key] = *value;
  }
  if (f.checkpoint_every > 0 && f.checkpoint_dir.empty()) {
    fmt::print(stderr, "flexsp train: --checkpoint-every needs --checkpoint-dir\n");
    return 2;
  }
  if (!f.checkpoint_dir.empty())
    spec_json["checkpoint"] = {{"dir", f.checkpoint_dir}, {"every", f.checkpoint_every}};
  if (f.memory_limit_gb > 0) spec_json["memory_limit_gb"] = f.memory_limit_gb;
  if (!f.sharding.empty()) spec_json["sharding"] = f.sharding;
  if (!f.data.empty()) spec_json["data"] = {{"prepared", f.data}};
  if (f.shard_group > 0) spec_json["shard_group"] = f.shard_group;
  auto spec = actors::parse_job_spec(spec_json.dump());
  if (!spec) {
    fmt::print(stderr, "flexsp train: invalid job: {}\n", spec.error().message());
    return 2;
  }
  std::unique_ptr<std::ofstream> metrics_out;
  if (!f.metrics.empty()) {
    metrics_out = std::make_unique<std::ofstream>(f.metrics, std::ios::trunc);
    if (!*metrics_out) {
      fmt::print(stderr, "flexsp train: --metrics: cannot write {}\n", f.metrics);
      return 2;
    }
  }
  const auto t0 = std::chrono::steady_clock::now();
  actors::failure_detector_config detector;
  auto interval = parse_duration_ms(f.heartbeat);
  auto timeout = parse_duration_ms(f.failure_timeout);
  if (!interval || !timeout) {
    fmt::print(stderr, "flexsp train: {}\n",
               !interval ? "--heartbeat-interval: " + interval.error().message()
                         : "--failure-timeout: " + timeout.error().message());
    return 2;
  }
  detector.heartbeat_interval = *interval;
  detector.failure_timeout = *timeout;
  auto run = start_embedded(f.devices, f.nodes, detector);
  if (!run) {
    fmt::print(stderr, "flexsp train: {}\n", run.error().message());
    return exit_status(run.error());
  }
  auto& cluster = run->cluster;
  // Nothing else joins this cluster: a job whose devices are missing would only wait and fail.
  if (const auto why = actors::cuda_only_reason(spec->model); !why.empty() && run->kinds.find("cuda") == std::string::npos) {
    fmt::print(stderr, "flexsp train: {}; --devices gave {} {} devices\n", why, run->devices, run->kinds);
    if (default_log_levels(cmd)) (void)log::configure("error");  // the teardown is not news
    return 2;
  }
  fmt::print("flexsp train: {} {} devices on {} node(s); GPT {} layers, d_model {}, {} heads, max_seq {}; {} steps of {} "
             "sequences ({}), strategy {}\n",
             run->devices, run->kinds, f.nodes, spec->model.layers, spec->model.d_model, spec->model.heads, spec->model.max_seq,
             spec->steps, spec->batch_size, !spec->prepared.empty() ? "prepared data " + spec->prepared.front().dir
             : spec->data_path.empty() ? "synthetic " + spec->synthetic + " lengths"
                                       : spec->data_path,
             spec->strategy.to_string());
  std::fflush(stdout);
  std::uint64_t milp_solves = 0;
  double sum_step = 0, sum_solve = 0, sum_overhead = 0, sum_err = 0, sum_pred = 0;
  double peak_memory_mb = 0, predicted_memory_mb = 0, state_mb = 0, sum_shard_comm = 0;
  std::uint64_t tokens = 0, steps = 0, retried = 0;
  auto on_metrics = [&](const actors::step_metrics& m) {
    if (metrics_out) {
      *metrics_out << m.to_json() << "\n";
      metrics_out->flush();
    }
    std::string plan;
    for (const auto& mb : m.plan) plan += fmt::format("{}[{}]", plan.empty() ? "" : " ", fmt::join(mb, ","));
    fmt::print("step {:>3}/{}  loss {:.3f}  {:>5} tokens {:>3} seqs  plan {}  solve {:.1f} ms{}  step {:.0f} ms (predicted "
               "{:.0f}){}\n",
               m.step + 1, spec->steps, m.loss, m.tokens, m.sequences, plan, m.solve_ms,
               m.milp_solves ? fmt::format(" ({} CBC)", m.milp_solves) : std::string{}, m.step_ms, m.predicted_ms,
               m.retried ? fmt::format("  retried {}", m.retried) : std::string{});
    std::fflush(stdout);
    sum_step += m.step_ms;
    sum_solve += m.solve_ms;
    milp_solves += static_cast<std::uint64_t>(m.milp_solves);
    sum_overhead += m.overhead_ms;
    sum_err += m.group_error;
    sum_pred += m.predicted_ms;
    peak_memory_mb = std::max(peak_memory_mb, m.peak_memory_mb);
    predicted_memory_mb = std::max(predicted_memory_mb, m.predicted_memory_mb);
    state_mb = std::max(state_mb, m.state_mb);
    sum_shard_comm += m.shard_comm_ms;
    tokens += m.tokens;
    retried += m.retried;
    ++steps;
  };
  auto on_log = [](const std::string& line) {
    fmt::print("  [job] {}\n", line);
    std::fflush(stdout);
  };
  auto job = cluster->jobs().submit(*spec, on_metrics, on_log);
  if (!job) {
    fmt::print(stderr, "flexsp train: {}\n", job.error().to_string());
    return 1;
  }
  g_running = job->get();
  std::signal(SIGINT, on_interrupt);
  std::signal(SIGTERM, on_interrupt);
  const auto final = (*job)->wait();
  g_running = nullptr;
  // Tearing the embedded cluster down closes every connection; that is not news.
  if (default_log_levels(cmd))
    (void)log::configure("error");
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double n = static_cast<double>(std::max<std::uint64_t>(1, steps));
  fmt::print("\nsummary: job {} {} after {} of {} steps in {:.1f} s\n", final.id, to_string(final.state), final.steps_done,
             final.steps_total, wall);
  if (steps > 0) {
    fmt::print("  loss {:.3f} -> {:.3f}\n", final.first_loss, final.last_loss);
    fmt::print("  mean step {:.0f} ms (predicted {:.0f} ms, mean group error {:.1f}%), {:.0f} tokens/s\n", sum_step / n,
               sum_pred / n, 100 * sum_err / n, static_cast<double>(tokens) / (sum_step / 1000.0));
    fmt::print("  device memory at its highest {:.1f} MiB (the planner's largest group: {:.1f} MiB per device)\n",
               peak_memory_mb, predicted_memory_mb);
    fmt::print("  model states {:.2f} MiB per device (sharding {}){}\n", state_mb, to_string(spec->sharding),
               spec->sharding == actors::sharding_mode::replicate
                   ? std::string{}
                   : fmt::format("; parameter gathers and gradient reduce-scatters {:.1f}% of step time",
                                 100 * sum_shard_comm / std::max(1e-9, sum_step)));
    fmt::print("  planner {:.1f} ms per batch (hidden behind the previous step), {} CBC MILP solves in all; scheduler "
               "overhead {:.1f}% of step time\n",
               sum_solve / n, milp_solves, 100 * sum_overhead / std::max(1e-9, sum_step));
    if (final.state == actors::job_state::succeeded)
      fmt::print("  retried attempts {}; replicas identical (state checksum {:016x})\n", retried, final.final_checksum);
  }
  if (final.state != actors::job_state::succeeded && final.aborted_attempts > 0)
    fmt::print("  aborted attempts {} (each re-planned)\n", final.aborted_attempts);
  if (!f.metrics.empty()) fmt::print("  metrics: {}\n", f.metrics);
  if (final.state != actors::job_state::succeeded) {
    fmt::print(stderr, "flexsp train: job {}: {}\n", to_string(final.state), final.error);
    return 1;
  }
  return 0;
}

}  // namespace

void add_train_command(CLI::App& root) {
  auto f = std::make_shared<train_flags>();
  auto* cmd = root.add_subcommand("train", "train a small model (GPT-2 or LLaMA family) in this process (head, node and job) on CPU devices or GPUs");
  cmd->add_option("--devices", f->devices,
                  "devices: cpu:N, cuda:all, cuda:0,1, or auto (every GPU when the CUDA backend is usable, else "
                  "cpu:1); a job trains on one kind")
      ->capture_default_str();
  cmd->add_option("--nodes", f->nodes, "split the devices over this many embedded nodes")->capture_default_str();
  cmd->add_option("--steps", f->steps, "training steps")->capture_default_str();
  cmd->add_option("--batch-size", f->batch_size, "sequences per global batch")->capture_default_str();
  cmd->add_option("--strategy", f->strategy, "flexsp, static:D or batchada")->capture_default_str();
  cmd->add_option("--seed", f->seed, "seed of parameters and data")->capture_default_str();
  cmd->add_option("--metrics", f->metrics, "write per-step metrics as JSON lines to this file");
  cmd->add_option("--config", f->config, "job spec JSON (flags given on the command line win)");
  cmd->add_option("--checkpoint-dir", f->checkpoint_dir, "write checkpoints here (and resume from the latest)");
  cmd->add_option("--checkpoint-every", f->checkpoint_every, "checkpoint every K steps (0: at the end)");
  cmd->add_option("--memory-limit-gb", f->memory_limit_gb,
                  "memory per device the planner keeps every group under, GB (default: what the devices report)")
      ->check(positive_number);
  cmd->add_option("--data", f->data, "train on this prepared dataset (flexsp data prepare)");
  cmd->add_option("--sharding", f->sharding,
                  "model states: replicate (every device keeps all), zero3 (sharded over all devices) or hsdp "
                  "(sharded within shard groups, replicated across them)")
      ->check(CLI::IsMember({"replicate", "zero3", "hsdp"}));
  cmd->add_option("--shard-group", f->shard_group, "hsdp: devices per shard group (default: one node's devices)")
      ->check(positive_number);
  cmd->add_option("--heartbeat-interval", f->heartbeat, "heartbeat interval of the embedded nodes")->capture_default_str();
  cmd->add_option("--failure-timeout", f->failure_timeout,
                  "heartbeat silence after which a node is lost (nodes in this process are lost only when their "
                  "actors stop)")
      ->capture_default_str();
  cmd->add_flag("--no-calibrate", f->no_calibrate, "skip the profiling phase (use default CPU constants)");
  cmd->add_flag("--no-milp", f->no_milp,
               "plan with the layout search alone (by default CBC polishes micro-batches the search did not "
               "prove within 5% of optimal; --config can set milp_min_gap)");
  std::vector<std::string> presets;
  std::string preset_help = "model preset:";
  for (const auto& p : actors::model_presets()) {
    presets.emplace_back(p.name);
    preset_help += fmt::format("\n  {}: {}", p.name, p.description);
  }
  cmd->add_option("--model", f->model, preset_help)->check(CLI::IsMember(presets));
  cmd->add_option("--attention", f->attention,
                  "attention element type: fp32 (default) or bf16 (mixed precision, CUDA devices only)")
      ->check(CLI::IsMember({"fp32", "bf16"}));
  cmd->add_option("--matmul", f->matmul,
                  "GEMM arithmetic: fp32 (default) or tf32 (tensor cores on fp32 data, CUDA devices only)")
      ->check(CLI::IsMember({"fp32", "tf32"}));
  cmd->callback([f, cmd]() {
    const int rc = run_train(*f, *cmd);
    if (rc != 0) std::exit(rc);
  });
}

}  // namespace flexsp::app
