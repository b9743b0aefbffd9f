#include "flexsp/scheduler/milp.hpp"

#include <coin/Cbc_C_Interface.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>
#include <mutex>
#include <numeric>

#include "flexsp/core/check.hpp"
#include "flexsp/core/log.hpp"
#include "flexsp/scheduler/bucketing.hpp"

namespace flexsp::scheduler {
namespace {

// CBC keeps global state in its command-line driver (CbcMain1), so solves never overlap.
std::mutex& cbc_mutex() {
  static std::mutex m;
  return m;
}

struct cbc_deleter {
  void operator()(Cbc_Model* m) const { Cbc_deleteModel(m); }
};
using cbc_ptr = std::unique_ptr<Cbc_Model, cbc_deleter>;

struct candidate {
  int degree;
  int copy;
  int y;                                  // column of "used"
  std::vector<std::pair<int, int>> x;     // (bucket, column)
};

}  // namespace

expected<milp_result> solve_milp(const cost_model& model, std::span<const std::int64_t> lengths,
                                 const milp_options& opts) {
  const int n = model.devices();
  std::vector<int> degrees = opts.degrees.empty() ? allowed_degrees(n, false) : opts.degrees;
  std::sort(degrees.begin(), degrees.end());
  milp_result result;
  if (lengths.empty()) {
    result.status = "optimal";
    result.solution.feasible = result.solution.proven = true;
    return result;
  }
  const auto bk = bucket_lengths(lengths, std::max(1, opts.buckets));
  result.token_error = bk.token_error();
  const std::size_t Q = bk.bounds.size();
  for (std::size_t i = 0; i < lengths.size(); ++i)
    if (model.min_degree(lengths[i], degrees) == 0)
      return make_error(errc::invalid_argument, "sequence {} of {} tokens fits no degree up to {} ({} tokens)", i,
                        lengths[i], degrees.back(), model.token_capacity(degrees.back()));

  const double beta1 = model.prof().beta1;
  cbc_ptr m{Cbc_newModel()};
  int cols = 0;
  auto add_col = [&](const std::string& name, double lb, double ub, double obj, bool integer) {
    Cbc_addCol(m.get(), name.c_str(), lb, ub, obj, integer ? 1 : 0, 0, nullptr, nullptr);
    return cols++;
  };
  double ub = 1e12;
  // Rounding lengths up to bucket bounds can push a group of the warm start over its memory;
  // such a start is not feasible for the bucketed model and is not passed on.
  bool use_start = opts.warm_start && opts.warm_start->feasible;
  if (use_start) {
    for (const auto& g : opts.warm_start->groups) {
      std::int64_t tokens = 0;
      for (int i : g.members)
        tokens += bk.bounds[static_cast<std::size_t>(bk.bucket_of(lengths[static_cast<std::size_t>(i)]))];
      if (tokens > model.token_capacity(g.degree) ||
          std::find(degrees.begin(), degrees.end(), g.degree) == degrees.end())
        use_start = false;
    }
  }
  if (use_start) {
    // the warm start costed on bucket bounds bounds C from above
    double worst = 0;
    for (const auto& g : opts.warm_start->groups) {
      double load = 0;
      for (int i : g.members)
        load += model.seq_cost_ms(g.degree, bk.bounds[static_cast<std::size_t>(bk.bucket_of(lengths[static_cast<std::size_t>(i)]))]);
      worst = std::max(worst, load);
    }
    ub = beta1 + worst;
  }
  const int c_col = add_col("C", std::max(0.0, opts.lower_bound_ms), ub * (1 + 1e-9) + 1e-6, 1.0, false);
  std::vector<candidate> cands;
  for (int d : degrees) {
    const auto cap = model.token_capacity(d);
    int eligible = 0;
    for (std::size_t q = 0; q < Q; ++q)
      if (bk.bounds[q] <= cap) eligible += bk.counts[q];
    const int copies = std::min(n / d, eligible);
    for (int i = 0; i < copies; ++i) {
      candidate c{d, i, add_col(fmt::format("y_{}_{}", d, i), 0, 1, 0, true), {}};
      for (std::size_t q = 0; q < Q; ++q)
        if (bk.bounds[q] <= cap)
          c.x.emplace_back(static_cast<int>(q), add_col(fmt::format("x_{}_{}_{}", q, d, i), 0, bk.counts[q], 0, true));
      cands.push_back(std::move(c));
    }
  }
  int rows = 0;
  std::vector<int> idx;
  std::vector<double> val;
  auto add_row = [&](char sense, double rhs) {
    Cbc_addRow(m.get(), "", static_cast<int>(idx.size()), idx.data(), val.data(), sense, rhs);
    ++rows;
    idx.clear();
    val.clear();
  };
  for (std::size_t ci = 0; ci < cands.size(); ++ci) {
    const auto& c = cands[ci];
    // time: beta1 * y + sum cost * x <= C
    idx.push_back(c.y);
    val.push_back(beta1);
    for (auto [q, col] : c.x) {
      idx.push_back(col);
      val.push_back(model.seq_cost_ms(c.degree, bk.bounds[static_cast<std::size_t>(q)]));
    }
    idx.push_back(c_col);
    val.push_back(-1.0);
    add_row('L', 0.0);
    // memory: sum bound * x <= cap * y
    for (auto [q, col] : c.x) {
      idx.push_back(col);
      val.push_back(static_cast<double>(bk.bounds[static_cast<std::size_t>(q)]));
    }
    idx.push_back(c.y);
    val.push_back(-static_cast<double>(model.token_capacity(c.degree)));
    add_row('L', 0.0);
    if (ci + 1 < cands.size() && cands[ci + 1].degree == c.degree) {
      const auto& nx = cands[ci + 1];
      idx = {c.y, nx.y};
      val = {1.0, -1.0};
      add_row('G', 0.0);
      for (auto [q, col] : c.x) {
        idx.push_back(col);
        val.push_back(model.seq_cost_ms(c.degree, bk.bounds[static_cast<std::size_t>(q)]));
      }
      for (auto [q, col] : nx.x) {
        idx.push_back(col);
        val.push_back(-model.seq_cost_ms(nx.degree, bk.bounds[static_cast<std::size_t>(q)]));
      }
      add_row('G', 0.0);
    }
  }
  for (const auto& c : cands) {
    idx.push_back(c.y);
    val.push_back(c.degree);
  }
  add_row('L', n);
  for (std::size_t q = 0; q < Q; ++q) {
    for (const auto& c : cands)
      for (auto [qq, col] : c.x)
        if (static_cast<std::size_t>(qq) == q) {
          idx.push_back(col);
          val.push_back(1.0);
        }
    add_row('E', bk.counts[q]);
  }
  result.columns = cols;
  result.rows = rows;

  // Warm start: the incumbent's groups, in the symmetry-breaking order (per degree, by load).
  std::vector<double> start_values;
  if (use_start) {
    start_values.assign(static_cast<std::size_t>(cols), 0.0);
    start_values[static_cast<std::size_t>(c_col)] = ub;
    bool ok = true;
    for (int d : degrees) {
      std::vector<std::vector<int>> per_group;
      for (const auto& g : opts.warm_start->groups) {
        if (g.degree != d) continue;
        std::vector<int> cnt(Q, 0);
        for (int i : g.members) ++cnt[static_cast<std::size_t>(bk.bucket_of(lengths[static_cast<std::size_t>(i)]))];
        per_group.push_back(std::move(cnt));
      }
      auto load = [&](const std::vector<int>& cnt) {
        double t = 0;
        for (std::size_t q = 0; q < Q; ++q) t += cnt[q] * model.seq_cost_ms(d, bk.bounds[q]);
        return t;
      };
      std::sort(per_group.begin(), per_group.end(),
                [&](const auto& a, const auto& b) { return load(a) > load(b); });
      std::size_t gi = 0;
      for (const auto& c : cands) {
        if (c.degree != d || gi >= per_group.size()) continue;
        start_values[static_cast<std::size_t>(c.y)] = 1;
        for (auto [q, col] : c.x) start_values[static_cast<std::size_t>(col)] = per_group[gi][static_cast<std::size_t>(q)];
        ++gi;
      }
      if (gi < per_group.size()) ok = false;
    }
    if (!ok) {
      log::get("scheduler")->warn("MILP warm start does not match the candidate groups; solving without it");
      start_values.clear();
    }
  }

  const auto t0 = std::chrono::steady_clock::now();
  {
    std::lock_guard lock{cbc_mutex()};
    Cbc_setLogLevel(m.get(), 0);
    Cbc_setParameter(m.get(), "log", "0");
    Cbc_setParameter(m.get(), "slog", "0");
    Cbc_setParameter(m.get(), "timeMode", "elapsed");
    Cbc_setParameter(m.get(), "threads", "0");
    Cbc_setParameter(m.get(), "sec", fmt::format("{:.3f}", std::max(0.001, opts.time_limit_ms / 1000.0)).c_str());
    Cbc_setParameter(m.get(), "ratioGap", "0.0001");
    // CBC 2.10's preprocessing can crash in CglPreProcess::postProcess on these models (seen with
    // a MIP start on small micro-batches); the search is sound without it.
    Cbc_setParameter(m.get(), "preprocess", "off");
    if (!start_values.empty()) {
      std::vector<int> all(static_cast<std::size_t>(cols));
      std::iota(all.begin(), all.end(), 0);
      Cbc_setMIPStartI(m.get(), cols, all.data(), start_values.data());
    }
    const int rc = Cbc_solve(m.get());
    if (rc != 0 && Cbc_status(m.get()) < 0)
      return make_error(errc::failed, "CBC failed to solve the micro-batch MILP (Cbc_solve returned {})", rc);
  }
  result.solve_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();

  const double* sol = Cbc_bestSolution(m.get());
  result.bound_ms = Cbc_getBestPossibleObjValue(m.get());
  if (Cbc_isProvenInfeasible(m.get()) && !sol) {
    result.status = "infeasible";
  } else if (!sol) {
    result.status = "no_solution";
  } else {
    result.status = Cbc_isProvenOptimal(m.get()) ? "optimal" : "time_limit";
    result.objective_ms = Cbc_getObjValue(m.get());
    result.bound_ms = std::min(result.bound_ms, result.objective_ms);
    result.gap = result.objective_ms > 0 ? std::max(0.0, 1.0 - result.bound_ms / result.objective_ms) : 0;
    // Map bucket counts back to concrete sequences, longest first within each bucket.
    std::vector<std::vector<int>> by_bucket(Q);
    for (std::size_t i = 0; i < lengths.size(); ++i)
      by_bucket[static_cast<std::size_t>(bk.bucket_of(lengths[i]))].push_back(static_cast<int>(i));
    for (auto& b : by_bucket)
      std::sort(b.begin(), b.end(), [&](int a, int c) { return lengths[static_cast<std::size_t>(a)] > lengths[static_cast<std::size_t>(c)]; });
    std::vector<std::size_t> next(Q, 0);
    mb_solution& out = result.solution;
    for (const auto& c : cands) {
      if (sol[c.y] < 0.5) continue;
      mb_group g;
      g.degree = c.degree;
      for (auto [q, col] : c.x) {
        const auto count = static_cast<int>(std::lround(sol[col]));
        auto& pool = by_bucket[static_cast<std::size_t>(q)];
        for (int k = 0; k < count && next[static_cast<std::size_t>(q)] < pool.size(); ++k)
          g.members.push_back(pool[next[static_cast<std::size_t>(q)]++]);
      }
      out.groups.push_back(std::move(g));
    }
    for (std::size_t q = 0; q < Q; ++q)
      FLEXSP_ASSERT(next[q] == by_bucket[q].size(), "bucket {}: {} of {} sequences mapped back", q, next[q],
                    by_bucket[q].size());
    out.feasible = true;
    recompute(out, model, lengths);
    improve(out, model, lengths);
    out.bound_ms = 0;
  }
  return result;
}

}  // namespace flexsp::scheduler
