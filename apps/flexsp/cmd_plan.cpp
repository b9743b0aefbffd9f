// `flexsp plan` and `flexsp plan-replay`: the planner alone, on a batch of lengths or on a
// dataset replayed with the paper's protocol.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "flexsp/actors/job_spec.hpp"
#include "flexsp/actors/step_protocol.hpp"
#include "flexsp/kernels/model.hpp"
#include "flexsp/scheduler/dataset.hpp"
#include "flexsp/scheduler/planner.hpp"
#include "flexsp/scheduler/synthetic.hpp"

namespace flexsp::app {
namespace {

namespace sch = flexsp::scheduler;

// A failure the user can fix; main() prints it and exits with 1.
struct plan_failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

template <class T>
T unwrap(expected<T> r, const char* what) {
  if (!r) throw plan_failure{fmt::format("{}: {}", what, r.error().message())};
  return std::move(*r);
}

struct common_args {
  int devices{64};
  int devices_per_node{0};
  std::string profile{"gpt-7b"};
  double mem_limit_gb{0};
  double time_limit_ms{1000};
  bool any_degree{false};
  bool milp{false};
  bool json{false};
  std::string svg;  ///< also draw the plan (plan) or the strategies (plan-replay) into this file
};

/// Writes `text` to `path` (the --svg file), or throws naming it.
void write_svg(const std::string& path, const std::string& text) {
  std::ofstream out{path};
  out << text;
  if (!out.flush()) throw plan_failure{fmt::format("--svg: cannot write {}", path)};
  std::fprintf(stderr, "flexsp: picture written to %s\n", path.c_str());
}

void add_common(CLI::App* cmd, common_args& a) {
  cmd->add_option("--devices", a.devices, "number of devices N")->check(positive_number)->capture_default_str();
  cmd->add_option("--devices-per-node", a.devices_per_node, "devices per node K (default: the profile's, 8 for built-ins)")
      ->check(positive_number);
  cmd->add_option("--profile", a.profile, "built-in profile (gpt-7b, gpt-13b, gpt-30b) or a JSON profile file")
      ->capture_default_str();
  cmd->add_option("--mem-limit-gb", a.mem_limit_gb, "usable device memory in GB (default: the profile's)")
      ->check(positive_number);
  cmd->add_option("--time-limit-ms", a.time_limit_ms, "wall-clock planning budget per batch, ms")
      ->check(positive_number)->capture_default_str();
  cmd->add_flag("--any-degree", a.any_degree, "allow SP degrees that are not powers of two");
  cmd->add_flag("--milp", a.milp, "polish flexsp plans with the CBC MILP for the rest of the time limit");
  cmd->add_flag("--json", a.json, "print JSON instead of a table");
  cmd->add_option("--svg", a.svg, "also draw an SVG picture: the plan's SP groups over devices and time (plan), or "
                                  "the strategies' predicted times (plan-replay)");
}

sch::profile load_profile(common_args& a) {
  auto p = unwrap(sch::load_profile(a.profile), "--profile");
  if (a.mem_limit_gb > 0) p.mem_limit_gb = a.mem_limit_gb;
  if (a.devices_per_node <= 0) a.devices_per_node = p.devices_per_node;
  return p;
}

std::vector<std::int64_t> read_lengths_arg(const std::string& path) {
  if (path == "-") return unwrap(sch::read_lengths(std::cin, "stdin"), "--lengths");
  return unwrap(sch::read_lengths_file(path), "--lengths");
}

double percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const auto i = static_cast<std::size_t>(std::min<double>(static_cast<double>(v.size()) - 1, std::ceil(q * static_cast<double>(v.size())) - 1));
  return v[i];
}

struct plan_args {
  std::string lengths;
  std::string synthetic;
  int batch_size{512};
  int batch_index{0};
  std::int64_t context_limit{0};
  std::uint64_t seed{1};
  std::string strategy{"flexsp"};
};

/// Batch `index` of `batch_size` from `all` (the last one may be short), after dropping lengths
/// above `context_limit` (0: none); says on stderr what it took from where.
std::vector<std::int64_t> lengths_batch(const std::vector<std::int64_t>& all, const std::string& source,
                                        const plan_args& a) {
  std::vector<std::int64_t> kept;
  kept.reserve(all.size());
  for (auto l : all)
    if (a.context_limit <= 0 || l <= a.context_limit) kept.push_back(l);
  const std::size_t dropped = all.size() - kept.size();
  const auto size = static_cast<std::size_t>(a.batch_size);
  const std::size_t batches = (kept.size() + size - 1) / size;
  const std::string dropped_note =
      dropped ? fmt::format(" ({} longer than --context-limit {} dropped)", dropped, a.context_limit) : std::string{};
  if (kept.empty()) throw plan_failure{fmt::format("--lengths: {} holds no sequence to plan{}", source, dropped_note)};
  if (static_cast<std::size_t>(a.batch_index) >= batches)
    throw plan_failure{fmt::format("--batch-index {}: {} holds {} sequences{}, {} batch{} of {} (indexes 0..{})",
                                   a.batch_index, source, kept.size(), dropped_note, batches, batches == 1 ? "" : "es",
                                   size, batches - 1)};
  const std::size_t first = static_cast<std::size_t>(a.batch_index) * size;
  const std::size_t last = std::min(kept.size(), first + size);
  if (batches > 1 || dropped)
    std::fprintf(stderr, "flexsp plan: %s holds %zu sequences%s: planning batch %d of %zu (sequences %zu..%zu; "
                 "--batch-size and --batch-index pick another)\n",
                 source.c_str(), kept.size(), dropped_note.c_str(), a.batch_index, batches, first, last - 1);
  return {kept.begin() + static_cast<std::ptrdiff_t>(first), kept.begin() + static_cast<std::ptrdiff_t>(last)};
}

void run_plan(common_args& a, const plan_args& pa) {
  if (pa.lengths.empty() == pa.synthetic.empty())
    throw plan_failure{"give exactly one of --lengths FILE|- and --synthetic KIND"};
  std::vector<std::int64_t> lengths;
  if (!pa.synthetic.empty()) {
    lengths = unwrap(sch::synthetic_lengths(static_cast<std::size_t>(pa.batch_size), pa.seed, pa.synthetic), "--synthetic");
    std::fprintf(stderr, "flexsp plan: %d synthetic %s lengths (seed %llu)\n", pa.batch_size, pa.synthetic.c_str(),
                 static_cast<unsigned long long>(pa.seed));
  } else {
    lengths = lengths_batch(read_lengths_arg(pa.lengths), pa.lengths == "-" ? "stdin" : pa.lengths, pa);
  }
  sch::planner_options opts;
  opts.strategy = pa.strategy;
  opts.time_limit_ms = a.time_limit_ms;
  opts.any_degree = a.any_degree;
  opts.use_milp = a.milp;
  if (auto v = opts.validate_options(); !v) throw plan_failure{fmt::format("--strategy: {}", v.error().message())};
  auto prof = load_profile(a);
  auto pl = unwrap(sch::planner::create(std::move(prof), sch::cluster{a.devices, a.devices_per_node}, opts), "planner");
  std::fprintf(stderr, "flexsp plan: planning %zu sequences on %d devices (%s)...\n", lengths.size(), a.devices,
               pa.strategy.c_str());
  auto p = unwrap(pl.make_plan(lengths), "plan");
  std::fprintf(stderr, "flexsp plan: done in %.1f ms\n", p.solve_ms);
  if (!a.svg.empty()) write_svg(a.svg, sch::plan_to_svg(p, lengths));
  if (a.json) {
    std::printf("%s\n", sch::plan_to_json(p).c_str());
  } else {
    std::printf("%s", sch::plan_to_table(p).c_str());
  }
}

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::size_t pos = 0;
  while (pos <= s.size()) {
    const auto comma = s.find(',', pos);
    auto item = s.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    if (!item.empty()) out.push_back(item);
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  return out;
}

struct replay_args {
  std::string dataset;
  int batch_size{512};
  int iterations{40};
  int start{0};
  std::int64_t context_limit{384000};
  std::string strategies{"flexsp,static:64,batchada"};
};

void run_replay(common_args& a, const replay_args& r) {
  const auto strategies = split_list(r.strategies);
  if (strategies.empty()) throw plan_failure{"--strategies: give at least one strategy"};
  sch::planner_options opts;
  opts.time_limit_ms = a.time_limit_ms;
  opts.any_degree = a.any_degree;
  opts.use_milp = a.milp;
  auto prof = load_profile(a);
  auto pl = unwrap(sch::planner::create(std::move(prof), sch::cluster{a.devices, a.devices_per_node}, opts), "planner");
  for (const auto& s : strategies) {
    auto check = opts;
    check.strategy = s;
    if (auto v = check.validate_options(); !v) throw plan_failure{fmt::format("--strategies: {}", v.error().message())};
  }
  std::fprintf(stderr, "flexsp plan-replay: reading %s\n", r.dataset.c_str());
  const auto lengths = unwrap(sch::read_lengths_file(r.dataset), "--dataset");
  std::size_t dropped = 0;
  const auto batches = sch::paper_batches(lengths, 2 * a.devices, r.context_limit, static_cast<std::size_t>(r.batch_size),
                                          static_cast<std::size_t>(r.start), static_cast<std::size_t>(r.iterations), &dropped);
  if (dropped)
    std::fprintf(stderr, "flexsp plan-replay: %zu sequences longer than --context-limit %lld after padding to %d dropped\n",
                 dropped, static_cast<long long>(r.context_limit), 2 * a.devices);
  if (batches.empty()) throw plan_failure{fmt::format("--dataset: {} holds no full batch of {} from batch {}", r.dataset, r.batch_size, r.start)};
  std::map<std::string, double> total;
  std::map<std::string, std::vector<double>> solve;
  std::map<std::string, int> failed;
  std::map<std::string, std::string> first_error;
  double lb_total = 0;
  nlohmann::json jb = nlohmann::json::array();
  const std::string first = strategies.front();
  for (std::size_t b = 0; b < batches.size(); ++b) {
    nlohmann::json row{{"batch", r.start + static_cast<int>(b)}};
    double lb = 0;
    std::string line;
    for (const auto& s : strategies) {
      auto p = pl.make_plan(batches[b], s);
      if (!p) {
        if (!failed[s]++) first_error[s] = p.error().message();
        row[s] = {{"error", p.error().message()}};
        line += fmt::format("  {} infeasible", s);
        continue;
      }
      lb = p->lower_bound_ms;
      total[s] += p->predicted_ms;
      solve[s].push_back(p->solve_ms);
      row[s] = {{"predicted_ms", p->predicted_ms}, {"solve_ms", p->solve_ms}, {"status", p->status},
                {"micro_batches", p->micro_batches.size()}, {"gap_to_lower_bound", p->gap()}};
      if (p->uniform_degree > 0) row[s]["uniform_degree"] = p->uniform_degree;
      line += fmt::format("  {} {:.0f} ms ({:.1f} ms)", s, p->predicted_ms, p->solve_ms);
    }
    lb_total += lb;
    row["lower_bound_ms"] = lb;
    if (row[first].contains("predicted_ms"))
      for (const auto& s : strategies)
        if (s != first && row[s].contains("predicted_ms"))
          row[s]["speedup_of_" + first] = row[s]["predicted_ms"].get<double>() / row[first]["predicted_ms"].get<double>();
    jb.push_back(row);
    std::fprintf(stderr, "batch %zu/%zu:%s\n", b + 1, batches.size(), line.c_str());
  }
  nlohmann::json summary;
  summary["batches"] = batches.size();
  summary["dropped_by_context_limit"] = dropped;
  summary["lower_bound_ms"] = lb_total;
  for (const auto& s : strategies) {
    nlohmann::json js;
    js["failed_batches"] = failed[s];
    if (failed[s]) js["first_error"] = first_error[s];
    js["predicted_ms"] = failed[s] ? nlohmann::json(nullptr) : nlohmann::json(total[s]);
    js["solve_ms_p50"] = percentile(solve[s], 0.5);
    js["solve_ms_p99"] = percentile(solve[s], 0.99);
    js["solve_ms_max"] = percentile(solve[s], 1.0);
    if (!failed[s] && !failed[first] && total[first] > 0) js["speedup_of_" + first] = total[s] / total[first];
    if (!failed[s] && total[s] > 0) js["gap_to_lower_bound"] = 1 - lb_total / total[s];
    summary["strategies"][s] = js;
  }
  if (!a.svg.empty()) {
    std::vector<std::pair<std::string, double>> bars;
    for (const auto& st : strategies)
      if (!failed[st]) bars.emplace_back(st, total[st]);
    bars.emplace_back("lower bound", lb_total);
    write_svg(a.svg, sch::strategies_to_svg(bars, fmt::format("{} batches of {} on {} devices: predicted time per "
                                                              "strategy",
                                                              batches.size(), r.batch_size, a.devices)));
  }
  if (a.json) {
    std::printf("%s\n", nlohmann::json{{"summary", summary}, {"per_batch", jb}}.dump(2).c_str());
    return;
  }
  std::printf("%zu batches of %d from %s (pad to %d, limit %lld), %d devices (%d per node)\n", batches.size(),
              r.batch_size, r.dataset.c_str(), 2 * a.devices, static_cast<long long>(r.context_limit), a.devices,
              a.devices_per_node);
  std::printf("%-12s %14s %12s %10s %10s %10s %8s\n", "strategy", "predicted_ms", first == "flexsp" ? "flexsp_x" : "first_x",
              "solve_p50", "solve_p99", "solve_max", "gap_lb");
  for (const auto& s : strategies) {
    if (failed[s]) {
      std::printf("%-12s %14s (fails on %d batches: %s)\n", s.c_str(), "-", failed[s], first_error[s].c_str());
      continue;
    }
    std::printf("%-12s %14.0f %11.3fx %10.1f %10.1f %10.1f %7.2f%%\n", s.c_str(), total[s],
                failed[first] ? 0.0 : total[s] / total[first], percentile(solve[s], 0.5), percentile(solve[s], 0.99),
                percentile(solve[s], 1.0), 100 * (1 - lb_total / total[s]));
  }
  std::printf("lower bound total %.0f ms\n", lb_total);
  std::printf("%s: the strategy's predicted time over %s's (1.500x: 1.5 times as long; below 1: faster)\n"
              "solve_*: planner time per batch (ms); gap_lb: how far the predicted time is above the lower bound\n",
              first == "flexsp" ? "flexsp_x" : "first_x", first.c_str());
  if (dropped) std::printf("%zu sequences longer than the context limit were dropped\n", dropped);
}

// The memory model of a job spec: what a device holds for the model's states and per token of
// a micro-batch (kernels::estimate_memory, the accounting the scheduler plans with), and the
// longest sequence each SP degree fits within the limit.
void print_memory_model(const std::string& spec_path, double limit_gb, bool json, int devices, int per_node) {
  std::ifstream in{spec_path};
  if (!in) throw plan_failure{fmt::format("--job: cannot read {}", spec_path)};
  std::stringstream text;
  text << in.rdbuf();
  const auto spec = unwrap(actors::parse_job_spec(text.str()), "--job");
  const auto config = actors::kernel_config(spec.model);
  if (limit_gb <= 0) limit_gb = spec.memory_limit_gb;
  constexpr double kMiB = 1024.0 * 1024.0;
  // The devices sharing the model states: zero3 all of --devices, hsdp a shard group (the spec's
  // shard_group, else a node's devices), cut the way the job would cut them.
  std::vector<std::uint32_t> world(static_cast<std::size_t>(devices));
  for (std::size_t i = 0; i < world.size(); ++i) world[i] = static_cast<std::uint32_t>(i);
  const auto assignment = actors::assign_shards(world, spec.sharding, spec.shard_group,
                                                static_cast<std::uint32_t>(per_node > 0 ? per_node : 8));
  const int shards = std::max(1, assignment.group_size);
  const double states =
      16.0 * static_cast<double>(kernels::shard_layout::of(config, shards, 0).local_size());
  nlohmann::json j{{"parameters", config.parameter_count()},
                   {"sharding", std::string{actors::to_string(spec.sharding)}},
                   {"state_shards", shards},
                   {"model_states_mib", states / kMiB},
                   {"memory_limit_gb", limit_gb},
                   {"degrees", nlohmann::json::array()}};
  if (!json) {
    std::printf("model: %s, %lld layers x %lld, %lld heads (%lld K/V), %lld parameters\n",
                std::string{kernels::to_string(config.family)}.c_str(), static_cast<long long>(config.layers),
                static_cast<long long>(config.d_model), static_cast<long long>(config.heads),
                static_cast<long long>(config.kv()), static_cast<long long>(config.parameter_count()));
    std::printf("model states per device (fp32 parameters, gradients, two AdamW moments; %s): %.1f MiB\n",
                shards == 1 ? "replicated" : fmt::format("{}, 1/{} of them", actors::to_string(spec.sharding), shards).c_str(),
                states / kMiB);
    std::printf("memory limit per device: %s\n",
                limit_gb > 0 ? fmt::format("{} GB", limit_gb).c_str() : "what the devices report (give --mem-limit-gb)");
    std::printf("%6s %18s %12s %22s\n", "degree", "MiB per 1K tokens", "fixed MiB", "longest sequence (tokens)");
  }
  for (int degree : {1, 2, 4, 8, 16}) {
    if (degree > 1 && degree > config.heads) break;
    const auto m = kernels::estimate_memory(config, degree, shards);
    const double per_rank_token = m.per_token / degree;
    long long longest = -1;
    if (limit_gb > 0)
      longest = static_cast<long long>(std::max(0.0, (limit_gb * 1024.0 * kMiB - m.fixed) / per_rank_token));
    j["degrees"].push_back({{"degree", degree},
                            {"bytes_per_token", m.per_token},
                            {"fixed_bytes", m.fixed},
                            {"longest_sequence", longest}});
    if (!json)
      std::printf("%6d %18.2f %12.1f %22s\n", degree, 1024.0 * m.per_token / degree / kMiB, m.fixed / kMiB,
                  longest < 0 ? "-" : std::to_string(longest).c_str());
  }
  if (json) std::printf("%s\n", j.dump(2).c_str());
}

}  // namespace

void add_plan_commands(CLI::App& root) {
  {
    auto* cmd = root.add_subcommand("plan", "Plan one batch: SP groups, micro-batches and predicted step time");
    auto a = std::make_shared<common_args>();
    auto pa = std::make_shared<plan_args>();
    cmd->add_option("--lengths", pa->lengths, "file of sequence lengths, one per line (.gz allowed), or - for stdin");
    cmd->add_option("--synthetic", pa->synthetic, "draw lengths from a built-in distribution instead (wikipedia)");
    cmd->add_option("--batch-size", pa->batch_size,
                    "sequences per batch: drawn with --synthetic; with --lengths, the file is cut into batches of this "
                    "many and --batch-index picks one")
        ->check(positive_number)->capture_default_str();
    cmd->add_option("--batch-index", pa->batch_index, "with --lengths: which batch of the file to plan (from 0)")
        ->check(non_negative_number)->capture_default_str();
    cmd->add_option("--context-limit", pa->context_limit,
                    "with --lengths: drop sequences longer than this many tokens first, and say how many (default: keep all)")
        ->check(non_negative_number);
    cmd->add_option("--seed", pa->seed, "seed of --synthetic")->capture_default_str();
    cmd->add_option("--strategy", pa->strategy, "flexsp, milp (the paper's pipeline), static:D or batchada")->capture_default_str();
    auto job = std::make_shared<std::string>();
    cmd->add_option("--job", *job,
                    "print the memory model of this job spec (model states, bytes per token and the longest "
                    "sequence each SP degree fits within --mem-limit-gb or the spec's memory_limit_gb; a sharded "
                    "spec's states are cut over --devices, or hsdp groups of --devices-per-node)");
    add_common(cmd, *a);
    cmd->callback([a, pa, job]() {
      if (!job->empty()) {
        print_memory_model(*job, a->mem_limit_gb, a->json, a->devices, a->devices_per_node);
        return;
      }
      run_plan(*a, *pa);
    });
  }
  {
    auto* cmd = root.add_subcommand("plan-replay", "Replay a dataset through the planner with the FlexSP paper's protocol");
    auto a = std::make_shared<common_args>();
    auto r = std::make_shared<replay_args>();
    cmd->add_option("--dataset", r->dataset, "lengths file, one per line (.gz allowed)")->required();
    cmd->add_option("--batch-size", r->batch_size, "sequences per batch")->check(positive_number)->capture_default_str();
    cmd->add_option("--iterations", r->iterations, "batches to plan")->check(positive_number)->capture_default_str();
    cmd->add_option("--start", r->start, "first batch")->check(non_negative_number)->capture_default_str();
    cmd->add_option("--context-limit", r->context_limit, "drop sequences longer than this after padding")
        ->check(positive_number)->capture_default_str();
    cmd->add_option("--strategies", r->strategies, "comma-separated strategies; speedups are relative to the first")
        ->capture_default_str();
    add_common(cmd, *a);
    cmd->callback([a, r]() { run_replay(*a, *r); });
  }
}

}  // namespace flexsp::app
