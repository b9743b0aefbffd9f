// The FlexSP paper's planner protocol on the Wikipedia length sample: gpt-7b, 64 devices (8 per
// node), 384K context limit, batches of 512, 40 iterations, 30 GB. Prints planning time, plan
// quality against long solves, speedups over the baselines and the bucketing token error.
//
//   flexsp_bench_planner [--dataset FILE] [--iterations 40] [--long-batches 5] [--long-limit-ms 60000]
//                        [--time-limit-ms 1000] [--milp-min-gap G (turns the CBC stage on)]
//                        [--paper-limit-ms 10000] [--devices 64] [--devices-per-node 8]
#include <time.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include "flexsp/scheduler/bucketing.hpp"
#include "flexsp/scheduler/dataset.hpp"
#include "flexsp/scheduler/planner.hpp"

namespace sch = flexsp::scheduler;

namespace {

double percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const auto i = static_cast<std::size_t>(
      std::min<double>(static_cast<double>(v.size()) - 1, std::ceil(q * static_cast<double>(v.size())) - 1));
  return v[i];
}

// CPU time of this thread: what planning costs on one core, whatever else the machine runs.
double thread_cpu_ms() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) * 1e3 + static_cast<double>(ts.tv_nsec) / 1e6;
}

}  // namespace

int main(int argc, char** argv) {
  std::string dataset = std::string{FLEXSP_SHARED_DATA_DIR} + "/wikipedia_lengths.txt.gz";
  int iterations = 40, long_batches = 5, devices = 64, per_node = 8;
  double long_limit_ms = 60000, time_limit_ms = 1000, milp_min_gap = -1, paper_limit_ms = 10000;
  int max_layouts = -1;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i];
    const char* v = argv[i + 1];
    if (k == "--dataset") dataset = v;
    else if (k == "--iterations") iterations = std::atoi(v);
    else if (k == "--long-batches") long_batches = std::atoi(v);
    else if (k == "--long-limit-ms") long_limit_ms = std::atof(v);
    else if (k == "--time-limit-ms") time_limit_ms = std::atof(v);
    else if (k == "--milp-min-gap") milp_min_gap = std::atof(v);
    else if (k == "--paper-limit-ms") paper_limit_ms = std::atof(v);
    else if (k == "--max-layouts") max_layouts = std::atoi(v);
    else if (k == "--devices") devices = std::atoi(v);
    else if (k == "--devices-per-node") per_node = std::atoi(v);
    else {
      std::fprintf(stderr, "unknown option %s\n", k.c_str());
      return 2;
    }
  }
  auto lengths = sch::read_lengths_file(dataset);
  if (!lengths) {
    std::fprintf(stderr, "bench_planner: %s\n", lengths.error().to_string().c_str());
    return 1;
  }
  const auto batches = sch::paper_batches(*lengths, 2 * devices, 384000, 512, 0, static_cast<std::size_t>(iterations));
  auto prof = *sch::builtin_profile("gpt-7b");
  prof.mem_limit_gb = 30;
  sch::planner_options opts;
  opts.time_limit_ms = time_limit_ms;
  if (milp_min_gap >= 0) {
    opts.use_milp = true;
    opts.milp_min_gap = milp_min_gap;
  }
  if (max_layouts > 0) opts.max_layouts = max_layouts;
  auto pl = sch::planner::create(prof, sch::cluster{devices, per_node}, opts);
  if (!pl) {
    std::fprintf(stderr, "bench_planner: %s\n", pl.error().to_string().c_str());
    return 1;
  }
  std::vector<std::string> statics;
  for (int d = 1; d <= devices; d *= 2) statics.push_back("static:" + std::to_string(d));

  std::vector<double> solve_ms, cpu_ms, flexsp_ms, batchada_ms, lb_ms;
  std::map<std::string, double> static_total;
  std::map<std::string, int> static_infeasible;
  int wrong = 0, worse_than_batchada = 0, milp_batches = 0;
  std::int64_t bucket_err = 0, bucket_tokens = 0;
  double mb_bucket_err = 0;
  for (std::size_t b = 0; b < batches.size(); ++b) {
    const auto& batch = batches[b];
    const double cpu0 = thread_cpu_ms();
    auto p = pl->make_plan(batch);
    cpu_ms.push_back(thread_cpu_ms() - cpu0);
    if (!p) {
      std::fprintf(stderr, "batch %zu: %s\n", b, p.error().to_string().c_str());
      ++wrong;
      continue;
    }
    if (auto v = sch::validate_plan(*p, pl->model(), batch); !v) ++wrong;
    if (p->predicted_ms < p->lower_bound_ms * (1 - 1e-9)) ++wrong;
    solve_ms.push_back(p->solve_ms);
    flexsp_ms.push_back(p->predicted_ms);
    lb_ms.push_back(p->lower_bound_ms);
    if (p->milp_solves > 0) ++milp_batches;
    auto ada = pl->make_plan(batch, "batchada");
    batchada_ms.push_back(ada ? ada->predicted_ms : NAN);
    if (ada && p->predicted_ms > ada->predicted_ms * (1 + 1e-9)) ++worse_than_batchada;
    for (const auto& s : statics) {
      auto sp = pl->make_plan(batch, s);
      if (sp) static_total[s] += sp->predicted_ms;
      else ++static_infeasible[s];
    }
    const auto bk = sch::bucket_lengths(batch, 16);
    bucket_err += bk.error_tokens;
    bucket_tokens += bk.tokens;
    mb_bucket_err += p->bucket_token_error * static_cast<double>(bk.tokens);
    std::fprintf(stderr, "batch %2zu: flexsp %8.1f ms (solve %6.1f ms, %s, mbs %zu) batchada %8.1f (d=%d) lb %8.1f\n", b,
                 p->predicted_ms, p->solve_ms, p->status.c_str(), p->micro_batches.size(), ada ? ada->predicted_ms : 0.0,
                 ada ? ada->uniform_degree : 0, p->lower_bound_ms);
  }
  auto sum = [](const std::vector<double>& v) {
    double s = 0;
    for (double x : v) s += x;
    return s;
  };
  const double flex_total = sum(flexsp_ms);
  std::string best_static;
  for (const auto& [s, t] : static_total)
    if (!static_infeasible[s] && (best_static.empty() || t < static_total[best_static])) best_static = s;

  // Quality against long solves on the first batches: the same planner with a long limit and
  // the MILP stage forced on every micro-batch.
  double short_sum = 0, long_sum = 0, long_solve = 0;
  const int nlong = std::min<int>(long_batches, static_cast<int>(batches.size()));
  if (nlong > 0) {
    sch::planner_options lo = opts;
    lo.time_limit_ms = long_limit_ms;
    lo.use_milp = true;
    lo.milp_min_gap = 0;
    lo.tolerance = 0;
    lo.max_layouts = 1 << 30;
    auto lp = sch::planner::create(prof, sch::cluster{devices, per_node}, lo);
    for (int b = 0; b < nlong; ++b) {
      auto p = lp->make_plan(batches[static_cast<std::size_t>(b)]);
      if (!p) {
        ++wrong;
        continue;
      }
      short_sum += flexsp_ms[static_cast<std::size_t>(b)];
      long_sum += p->predicted_ms;
      long_solve += p->solve_ms;
      std::fprintf(stderr, "long batch %d: %.1f ms (solve %.0f ms, %s) vs %.1f ms\n", b, p->predicted_ms, p->solve_ms,
                   p->status.c_str(), flexsp_ms[static_cast<std::size_t>(b)]);
    }
  }

  // The paper's pipeline (single-degree warm start, bucketed MILP on every micro-batch) on the
  // same batches, with the paper's 10 s limit per batch.
  double paper_sum = 0, paper_short = 0, paper_solve = 0;
  if (nlong > 0 && paper_limit_ms > 0) {
    sch::planner_options po = opts;
    po.strategy = "milp";
    po.time_limit_ms = paper_limit_ms;
    auto pp = sch::planner::create(prof, sch::cluster{devices, per_node}, po);
    for (int b = 0; b < nlong; ++b) {
      auto p = pp->make_plan(batches[static_cast<std::size_t>(b)]);
      if (!p) {
        ++wrong;
        continue;
      }
      paper_sum += p->predicted_ms;
      paper_short += flexsp_ms[static_cast<std::size_t>(b)];
      paper_solve += p->solve_ms;
      std::fprintf(stderr, "paper milp batch %d: %.1f ms (solve %.0f ms, %s) vs %.1f ms\n", b, p->predicted_ms,
                   p->solve_ms, p->status.c_str(), flexsp_ms[static_cast<std::size_t>(b)]);
    }
  }

  std::printf("planner bench: %zu batches of 512, gpt-7b, %d devices (%d per node), 384000 limit, 30 GB, time limit %.0f ms\n",
              batches.size(), devices, per_node, time_limit_ms);
  std::printf("solve time (wall) p50 %.1f ms  p99 %.1f ms  max %.1f ms  (goal: p50 <= 100, p99 <= 1000)\n",
              percentile(solve_ms, 0.5), percentile(solve_ms, 0.99), percentile(solve_ms, 1.0));
  std::printf("solve time (cpu)  p50 %.1f ms  p99 %.1f ms  max %.1f ms  (one thread)\n", percentile(cpu_ms, 0.5),
              percentile(cpu_ms, 0.99), percentile(cpu_ms, 1.0));
  std::printf("batches using the MILP stage: %d of %zu\n", milp_batches, solve_ms.size());
  if (nlong > 0)
    std::printf("quality vs long solve (%d batches, %.0f s limit): flexsp %.1f ms, long %.1f ms, ratio %.4f (goal <= 1.01); long solves took %.1f s\n",
                nlong, long_limit_ms / 1000, short_sum, long_sum, long_sum > 0 ? short_sum / long_sum : 0.0, long_solve / 1000);
  if (paper_sum > 0)
    std::printf("paper pipeline (homogeneous warm start + bucketed CBC MILP, %.0f s limit, %d batches): %.1f ms vs flexsp %.1f ms (flexsp %.3fx faster steps); it took %.1f s\n",
                paper_limit_ms / 1000, nlong, paper_sum, paper_short, paper_sum / paper_short, paper_solve / 1000);
  std::printf("predicted total   flexsp %.0f ms, lower bound %.0f ms (gap %.2f%%)\n", flex_total, sum(lb_ms),
              100 * (1 - sum(lb_ms) / flex_total));
  for (const auto& s : statics) {
    if (static_infeasible[s]) {
      std::printf("  %-10s infeasible on %d batches\n", s.c_str(), static_infeasible[s]);
      continue;
    }
    std::printf("  %-10s %10.0f ms  speedup of flexsp %.3fx\n", s.c_str(), static_total[s], static_total[s] / flex_total);
  }
  std::printf("speedup of flexsp: vs static:%d %.3fx, vs best static (%s) %.3fx, vs batchada %.3fx  (paper: 1.42-1.72x vs DeepSpeed)\n",
              devices, static_total["static:" + std::to_string(devices)] / flex_total, best_static.c_str(),
              static_total[best_static] / flex_total, sum(batchada_ms) / flex_total);
  std::printf("batches where flexsp is slower than batchada: %d\n", worse_than_batchada);
  std::printf("bucketing token error, 16 buckets: %.2f%% per micro-batch (as the MILP buckets), %.2f%% per whole batch (paper: 2.3%% on Wikipedia)\n",
              100.0 * mb_bucket_err / static_cast<double>(bucket_tokens),
              100.0 * static_cast<double>(bucket_err) / static_cast<double>(bucket_tokens));
  std::printf("#wrong %d\n", wrong);
  return wrong == 0 ? 0 : 1;
}
