#include "flexsp/scheduler/planner.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <numeric>
#include <optional>

#include "flexsp/core/check.hpp"
#include "flexsp/core/config.hpp"
#include "flexsp/core/log.hpp"
#include "flexsp/scheduler/bucketing.hpp"
#include "flexsp/scheduler/micro_batch.hpp"
#include "flexsp/scheduler/milp.hpp"

namespace flexsp::scheduler {
namespace {

constexpr double inf = std::numeric_limits<double>::infinity();
using clock_type = std::chrono::steady_clock;

double since_ms(clock_type::time_point t0) {
  return std::chrono::duration<double, std::milli>(clock_type::now() - t0).count();
}

struct parsed_strategy {
  enum kind_t { flexsp, uniform, batchada, paper_milp } kind;
  int degree{0};
};

expected<parsed_strategy> parse_strategy(std::string_view s, int n) {
  if (s == "flexsp") return parsed_strategy{parsed_strategy::flexsp};
  if (s == "batchada") return parsed_strategy{parsed_strategy::batchada};
  if (s == "milp") return parsed_strategy{parsed_strategy::paper_milp};
  if (s.starts_with("static:")) {
    auto d = parse_int(s.substr(7));
    if (!d || *d < 1 || *d > n)
      return make_error(errc::invalid_argument, "strategy '{}': the degree must be an integer in 1..{}", s, n);
    return parsed_strategy{parsed_strategy::uniform, static_cast<int>(*d)};
  }
  return make_error(errc::invalid_argument, "unknown strategy '{}' (flexsp, milp, static:D, batchada)", s);
}

}  // namespace

expected<void> planner_options::validate_options() const {
  FLEXSP_TRY(parse_strategy(strategy, std::numeric_limits<int>::max()));
  if (!(time_limit_ms > 0)) return make_error(errc::invalid_argument, "time limit must be > 0 ms, got {}", time_limit_ms);
  if (extra_micro_batches < 0)
    return make_error(errc::invalid_argument, "extra micro-batches must be >= 0, got {}", extra_micro_batches);
  if (buckets < 1) return make_error(errc::invalid_argument, "buckets must be >= 1, got {}", buckets);
  if (!(tolerance >= 0)) return make_error(errc::invalid_argument, "tolerance must be >= 0, got {}", tolerance);
  return {};
}

double step_lower_bound_ms(const cost_model& model, std::span<const std::int64_t> lengths, std::span<const int> degrees) {
  if (lengths.empty()) return 0;
  const int n = model.devices();
  double work = 0;
  double single = 0;
  std::int64_t tokens = 0;
  for (auto s : lengths) {
    tokens += s;
    double best_dev = inf, best_one = inf;
    for (int d : degrees) {
      if (model.token_capacity(d) < s) continue;
      best_dev = std::min(best_dev, d * model.seq_cost_ms(d, s));
      best_one = std::min(best_one, model.seq_cost_ms(d, s));
    }
    if (best_dev == inf) return inf;
    work += best_dev;
    single = std::max(single, best_one);
  }
  const auto cap = model.token_capacity(n);
  const auto micro_batches = cap > 0 ? (tokens + cap - 1) / cap : 1;
  return static_cast<double>(micro_batches) * model.prof().beta1 + std::max(work / n, single);
}

struct planner::impl {
  profile prof;
  cluster clu;
  planner_options opts;
  cost_model model;
  std::vector<int> degrees;
  std::optional<layout_search> search;

  impl(profile p, cluster c, planner_options o)
      : prof{p}, clu{c}, opts{std::move(o)}, model{std::move(p), c.devices},
        degrees{allowed_degrees(c.devices, opts.any_degree)} {}

  expected<void> check_lengths(std::span<const std::int64_t> lengths) const {
    if (lengths.empty()) return make_error(errc::invalid_argument, "the batch has no sequences");
    const int top = degrees.back();
    for (std::size_t i = 0; i < lengths.size(); ++i) {
      const auto s = lengths[i];
      if (s < 1) return make_error(errc::invalid_argument, "sequence {} has length {}; lengths must be >= 1", i, s);
      if (model.token_capacity(top) < s) {
        if (model.token_capacity(clu.devices) >= s)
          return make_error(errc::invalid_argument,
                            "sequence {} ({} tokens) needs more than {} devices, the largest power of two <= {}; "
                            "allow any degree to use all {}",
                            i, s, top, clu.devices, clu.devices);
        return make_error(errc::invalid_argument,
                          "sequence {} ({} tokens) cannot fit even on all {} devices: they hold {} tokens "
                          "({} GB per device, {:.0f} MB of model states, {} MB per token)",
                          i, s, clu.devices, model.token_capacity(clu.devices), prof.mem_limit_gb,
                          model.model_states_mb(), prof.act_per_token_mb);
      }
    }
    return {};
  }

  plan base_plan(std::string strategy) const {
    plan p;
    p.strategy = std::move(strategy);
    p.devices = clu.devices;
    p.devices_per_node = clu.devices_per_node;
    p.profile = prof.name;
    return p;
  }

  expected<plan> uniform(std::span<const std::int64_t> lengths, int d) const {
    const auto cap = model.token_capacity(d);
    for (std::size_t i = 0; i < lengths.size(); ++i)
      if (lengths[i] > cap)
        return make_error(errc::invalid_argument, "static:{} cannot hold sequence {} ({} tokens; a degree-{} group holds {})",
                          d, i, lengths[i], d, cap);
    const int per_mb = clu.devices / d;
    std::vector<int> order(lengths.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
      return lengths[static_cast<std::size_t>(a)] > lengths[static_cast<std::size_t>(b)];
    });
    std::vector<std::int64_t> free;
    std::vector<std::vector<int>> members;
    for (int i : order) {
      const auto s = lengths[static_cast<std::size_t>(i)];
      std::size_t best = free.size();
      for (std::size_t b = 0; b < free.size(); ++b)
        if (free[b] >= s && (best == free.size() || free[b] < free[best])) best = b;
      if (best == free.size()) {
        for (int g = 0; g < per_mb; ++g) {
          free.push_back(cap);
          members.emplace_back();
        }
        best = free.size() - static_cast<std::size_t>(per_mb);
      }
      free[best] -= s;
      members[best].push_back(i);
    }
    plan p = base_plan(fmt::format("static:{}", d));
    p.uniform_degree = d;
    for (std::size_t b0 = 0; b0 < members.size(); b0 += static_cast<std::size_t>(per_mb)) {
      micro_batch mb;
      for (std::size_t b = b0; b < b0 + static_cast<std::size_t>(per_mb); ++b)
        if (!members[b].empty()) mb.groups.push_back(sp_group{d, {}, std::move(members[b]), 0, 0});
      std::vector<int> degs(mb.groups.size(), d);
      auto devs = place_groups(degs, clu);
      if (devs.empty()) {
        // cannot align to nodes (odd node sizes): fall back to consecutive devices
        int next = 0;
        for (auto& g : mb.groups)
          for (int k = 0; k < d; ++k) g.devices.push_back(next++);
      } else {
        for (std::size_t g = 0; g < mb.groups.size(); ++g) mb.groups[g].devices = std::move(devs[g]);
      }
      p.micro_batches.push_back(std::move(mb));
    }
    evaluate_plan(p, model, lengths);
    p.status = "heuristic";
    return p;
  }

  const layout_search& layouts() {
    if (!search) search.emplace(model, clu, opts.any_degree);
    return *search;
  }

  // The best single-degree layout for one micro-batch, as the paper's MILP warm start.
  mb_solution homogeneous(std::span<const std::int64_t> part) {
    mb_solution best;
    best.makespan_ms = inf;
    for (int d : allowed_degrees(clu.devices, false)) {
      std::vector<int> layout(static_cast<std::size_t>(clu.devices / d), d);
      auto sol = layouts().assign(part, layout, false);
      if (sol.feasible && sol.makespan_ms < best.makespan_ms) best = std::move(sol);
    }
    return best;
  }

  // `paper`: the paper's pipeline (homogeneous warm start, then the bucketed MILP on every
  // micro-batch) instead of the layout search.
  // A micro-batch split: the batch indices of each micro-batch, their lengths and solutions.
  struct candidate_split {
    std::vector<std::vector<int>> members;
    std::vector<std::vector<std::int64_t>> lengths;
    std::vector<mb_solution> parts;
    std::vector<std::size_t> starts;  // first sorted index of each micro-batch; empty when not contiguous
    double total{inf};
  };

  expected<plan> flexsp(std::span<const std::int64_t> lengths, clock_type::time_point t0, bool paper = false) {
    const auto& ls = layouts();
    const std::size_t n = lengths.size();
    std::vector<int> order(n);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
      return lengths[static_cast<std::size_t>(a)] < lengths[static_cast<std::size_t>(b)];
    });
    std::vector<std::int64_t> sorted(n);
    for (std::size_t i = 0; i < n; ++i) sorted[i] = lengths[static_cast<std::size_t>(order[i])];
    const std::int64_t total = std::accumulate(sorted.begin(), sorted.end(), std::int64_t{0});
    const auto cap_all = model.token_capacity(clu.devices);
    const int m0 = static_cast<int>(std::max<std::int64_t>(1, (total + cap_all - 1) / cap_all));

    const double search_budget = opts.time_limit_ms * (opts.use_milp ? 0.6 : 0.9);
    int solves_planned = m0;
    int solves_done = 0;
    auto solve_part = [&](std::span<const std::int64_t> part) {
      mb_options mo;
      mo.time_limit_ms = std::max(0.5, (search_budget - since_ms(t0)) / std::max(1, solves_planned - solves_done));
      mo.tolerance = opts.tolerance;
      mo.max_layouts = opts.max_layouts;
      ++solves_done;
      return paper ? homogeneous(part) : ls.solve(part, mo);
    };
    // Solves every micro-batch of a split; false when one of them fits no layout.
    auto solve_split = [&](candidate_split& cand) {
      cand.total = 0;
      for (auto& part : cand.lengths) {
        const auto ts = clock_type::now();
        auto sol = solve_part(part);
        log::get("scheduler")->debug("micro-batch of {} sequences: {} layouts, {:.2f} ms, makespan {:.1f} bound {:.1f}",
                                     part.size(), sol.layouts_evaluated, since_ms(ts), sol.makespan_ms, sol.bound_ms);
        if (!sol.feasible) return false;
        cand.total += sol.makespan_ms;
        cand.parts.push_back(std::move(sol));
      }
      return true;
    };

    candidate_split best;
    int first_feasible = -1;
    // Every extra micro-batch adds at least beta1 to the independent bound.
    const double lb0 = step_lower_bound_ms(model, lengths, degrees);
    for (int m = m0; m <= static_cast<int>(n); ++m) {
      if (first_feasible >= 0 && m > first_feasible + opts.extra_micro_batches) break;
      if (best.total < inf && lb0 + (m - m0) * prof.beta1 >= best.total) break;
      if (m > m0) solves_planned += m;
      candidate_split cand;
      const auto starts = split_contiguous(sorted, m);
      cand.starts = starts;
      for (int k = 0; k < m; ++k) {
        const auto b = starts[static_cast<std::size_t>(k)];
        const auto e = k + 1 < m ? starts[static_cast<std::size_t>(k) + 1] : n;
        cand.members.emplace_back(order.begin() + static_cast<std::ptrdiff_t>(b), order.begin() + static_cast<std::ptrdiff_t>(e));
        cand.lengths.emplace_back(sorted.begin() + static_cast<std::ptrdiff_t>(b), sorted.begin() + static_cast<std::ptrdiff_t>(e));
      }
      if (!solve_split(cand)) continue;
      if (first_feasible < 0) first_feasible = m;
      if (cand.total < best.total) best = std::move(cand);
    }
    // The split that balances tokens rarely balances time: move each cut between neighbouring
    // micro-batches while the step time drops. Moves are judged on a proxy (a small micro-batch is
    // searched again; a large one keeps its layout and is reassigned greedily); micro-batches that
    // changed are searched in full at the end, and the split is kept only if the plan improved.
    if (!paper && best.total < inf && best.starts.size() > 1) {
      constexpr std::size_t small = 128;
      const std::size_t mcount = best.starts.size();
      std::vector<std::vector<int>> layout(mcount);
      std::vector<double> proxy(mcount);
      std::vector<char> changed(mcount, 0);
      for (std::size_t k = 0; k < mcount; ++k) {
        for (const auto& g : best.parts[k].groups) layout[k].push_back(g.degree);
        proxy[k] = ls.assign(best.lengths[k], layout[k], best.lengths[k].size() <= small).makespan_ms;
      }
      auto evaluate = [&](std::span<const std::int64_t> part, std::size_t k, mb_solution& out) {
        out = mb_solution{};
        if (part.size() <= small) return ls.assign(part, layout[k], true).makespan_ms;
        return ls.assign(part, layout[k], false).makespan_ms;
      };
      candidate_split trial = best;
      const double refine_budget = 0.5 * search_budget;
      std::size_t step = std::max<std::size_t>(1, n / 16);
      while (step > 0 && since_ms(t0) < refine_budget) {
        bool moved = false;
        for (std::size_t j = 1; j < mcount && !moved && since_ms(t0) < refine_budget; ++j) {
          for (int dir : {-1, 1}) {
            const std::size_t lo = trial.starts[j - 1] + 1;
            const std::size_t hi = (j + 1 < mcount ? trial.starts[j + 1] : n) - 1;
            const auto shifted = static_cast<std::ptrdiff_t>(trial.starts[j]) + dir * static_cast<std::ptrdiff_t>(step);
            if (shifted < static_cast<std::ptrdiff_t>(lo) || shifted > static_cast<std::ptrdiff_t>(hi)) continue;
            const std::size_t a = trial.starts[j - 1], b = static_cast<std::size_t>(shifted);
            const std::size_t e = j + 1 < mcount ? trial.starts[j + 1] : n;
            std::span<const std::int64_t> la{sorted.data() + a, b - a}, lb{sorted.data() + b, e - b};
            mb_solution sa, sb;
            const double pa = evaluate(la, j - 1, sa);
            if (pa == inf) continue;
            const double pb = evaluate(lb, j, sb);
            if (pb == inf || pa + pb >= (proxy[j - 1] + proxy[j]) * (1 - 1e-6)) continue;
            proxy[j - 1] = pa;
            proxy[j] = pb;
            changed[j - 1] = changed[j] = 1;
            trial.starts[j] = b;
            trial.parts[j - 1] = std::move(sa);
            trial.parts[j] = std::move(sb);
            trial.members[j - 1].assign(order.begin() + static_cast<std::ptrdiff_t>(a), order.begin() + static_cast<std::ptrdiff_t>(b));
            trial.members[j].assign(order.begin() + static_cast<std::ptrdiff_t>(b), order.begin() + static_cast<std::ptrdiff_t>(e));
            trial.lengths[j - 1].assign(la.begin(), la.end());
            trial.lengths[j].assign(lb.begin(), lb.end());
            moved = true;
            break;
          }
        }
        if (!moved) step /= 2;
      }
      bool ok = true;
      trial.total = 0;
      for (std::size_t k = 0; k < mcount && ok; ++k) {
        if (changed[k] && !trial.parts[k].feasible) trial.parts[k] = solve_part(trial.lengths[k]);
        ok = trial.parts[k].feasible;
        trial.total += trial.parts[k].makespan_ms;
      }
      if (ok && trial.total < best.total) best = std::move(trial);
    }
    // A contiguous split of sorted lengths can lose to memory packing that mixes long and short
    // sequences (few devices, many micro-batches). When the best single degree beats it, its
    // packing becomes a split too, and each of its micro-batches gets the layout search.
    if (!paper) {
      std::optional<plan> packed;
      for (int d : degrees) {
        auto u = uniform(lengths, d);
        if (u && (!packed || u->predicted_ms < packed->predicted_ms)) packed = std::move(*u);
      }
      if (packed && packed->predicted_ms < best.total) {
        candidate_split cand;
        for (const auto& mb : packed->micro_batches) {
          std::vector<int> idx;
          for (const auto& g : mb.groups) idx.insert(idx.end(), g.sequences.begin(), g.sequences.end());
          std::vector<std::int64_t> lens;
          for (int i : idx) lens.push_back(lengths[static_cast<std::size_t>(i)]);
          cand.members.push_back(std::move(idx));
          cand.lengths.push_back(std::move(lens));
        }
        solves_planned += static_cast<int>(cand.members.size());
        if (solve_split(cand)) {
          // keep the packing's own groups where the search did not beat them
          cand.total = 0;
          for (std::size_t k = 0; k < cand.parts.size(); ++k) {
            const auto& mb = packed->micro_batches[k];
            if (mb.predicted_ms < cand.parts[k].makespan_ms) {
              mb_solution own;
              std::size_t next = 0;
              for (const auto& g : mb.groups) {
                mb_group og;
                og.degree = g.degree;
                for (std::size_t j = 0; j < g.sequences.size(); ++j) og.members.push_back(static_cast<int>(next++));
                own.groups.push_back(std::move(og));
              }
              own.feasible = true;
              recompute(own, model, cand.lengths[k]);
              own.bound_ms = std::min(cand.parts[k].bound_ms, own.makespan_ms);
              cand.parts[k] = std::move(own);
            }
            cand.total += cand.parts[k].makespan_ms;
          }
          if (cand.total < best.total) best = std::move(cand);
        }
      }
    }
    if (best.total == inf)
      return make_error(errc::invalid_argument, "no plan fits the {} sequences into the memory of {} devices", n,
                        clu.devices);

    plan p = base_plan(paper ? "milp" : "flexsp");
    const int m = static_cast<int>(best.parts.size());
    std::string status = "optimal";
    std::int64_t bucket_error = 0;
    for (int k = 0; k < m; ++k) {
      auto& sol = best.parts[static_cast<std::size_t>(k)];
      const auto& idx = best.members[static_cast<std::size_t>(k)];
      std::span<const std::int64_t> part{best.lengths[static_cast<std::size_t>(k)]};
      const double gap = sol.makespan_ms > 0 ? 1 - sol.bound_ms / sol.makespan_ms : 0;
      const double left = opts.time_limit_ms - since_ms(t0);
      const bool run_milp = paper || (opts.use_milp && !sol.proven && gap > opts.milp_min_gap);
      if (run_milp && left > 5) {
        milp_options mo;
        mo.degrees = allowed_degrees(clu.devices, false);
        mo.buckets = opts.buckets;
        mo.time_limit_ms = 0.9 * left / (m - k);  // CBC overshoots its limit a little
        mo.warm_start = &sol;
        mo.lower_bound_ms = paper ? 0.0 : sol.bound_ms;
        auto r = solve_milp(model, part, mo);
        ++p.milp_solves;
        if (!r) {
          log::get("scheduler")->warn("micro-batch {}: MILP failed ({}); keeping the layout search plan", k, r.error());
        } else {
          log::get("scheduler")->debug("micro-batch {}: MILP {} in {:.1f} ms, bucketed {:.1f} ms (bound {:.1f}), mapped {:.1f} ms vs {:.1f} ms",
                                       k, r->status, r->solve_ms, r->objective_ms, r->bound_ms,
                                       r->solution.makespan_ms, sol.makespan_ms);
          if (r->solution.feasible && r->solution.makespan_ms < sol.makespan_ms &&
              !place_groups(degrees_of(r->solution), clu).empty()) {
            const double bound = sol.bound_ms;
            sol = std::move(r->solution);
            sol.bound_ms = bound;
            sol.proven = sol.makespan_ms <= bound * (1 + opts.tolerance);
          }
          if (paper) {
            // the MILP's own bound is on bucketed lengths, which only overstate
            sol.bound_ms = std::min(r->bound_ms, sol.makespan_ms);
            sol.proven = r->status == "optimal";
          }
          if (r->status != "optimal" && !sol.proven) status = "time_limit";
          p.milp_gap = std::max(p.milp_gap, r->status == "optimal" || r->status == "time_limit" ? r->gap : 1.0);
        }
      }
      if (!sol.proven && status == "optimal") status = "feasible";
      p.solver_bound_ms += sol.bound_ms;
      bucket_error += bucket_lengths(part, opts.buckets).error_tokens;

      micro_batch mb;
      auto devs = place_groups(degrees_of(sol), clu);
      FLEXSP_ASSERT(!devs.empty(), "micro-batch {}: a searched layout could not be placed", k);
      for (std::size_t g = 0; g < sol.groups.size(); ++g) {
        sp_group grp;
        grp.degree = sol.groups[g].degree;
        grp.devices = std::move(devs[g]);
        for (int i : sol.groups[g].members) grp.sequences.push_back(idx[static_cast<std::size_t>(i)]);
        std::sort(grp.sequences.begin(), grp.sequences.end());
        mb.groups.push_back(std::move(grp));
      }
      p.micro_batches.push_back(std::move(mb));
    }
    p.bucket_token_error = static_cast<double>(bucket_error) / static_cast<double>(total);
    p.status = status;
    evaluate_plan(p, model, lengths);
    return p;
  }

  static std::vector<int> degrees_of(const mb_solution& sol) {
    std::vector<int> out;
    for (const auto& g : sol.groups) out.push_back(g.degree);
    return out;
  }

  expected<plan> run(std::span<const std::int64_t> lengths, std::string_view strategy) {
    const auto t0 = clock_type::now();
    FLEXSP_TRY_ASSIGN(const auto parsed, parse_strategy(strategy, clu.devices));
    FLEXSP_TRY(check_lengths(lengths));
    std::optional<plan> result;
    switch (parsed.kind) {
      case parsed_strategy::flexsp:
      case parsed_strategy::paper_milp: {
        FLEXSP_TRY_ASSIGN(auto p, flexsp(lengths, t0, parsed.kind == parsed_strategy::paper_milp));
        result = std::move(p);
        break;
      }
      case parsed_strategy::uniform: {
        FLEXSP_TRY_ASSIGN(auto p, uniform(lengths, parsed.degree));
        result = std::move(p);
        break;
      }
      case parsed_strategy::batchada: {
        for (int d : degrees) {
          auto p = uniform(lengths, d);
          if (p && (!result || p->predicted_ms < result->predicted_ms)) result = std::move(*p);
        }
        if (!result) return make_error(errc::invalid_argument, "no single degree holds every sequence");
        result->strategy = "batchada";
        break;
      }
    }
    plan& p = *result;
    p.lower_bound_ms = step_lower_bound_ms(model, lengths, degrees);
    if (p.solver_bound_ms <= 0) p.solver_bound_ms = p.lower_bound_ms;
    if (p.bucket_token_error == 0 && (parsed.kind == parsed_strategy::uniform || parsed.kind == parsed_strategy::batchada))
      p.bucket_token_error = bucket_lengths(lengths, opts.buckets).token_error();
    if (opts.validate) {
      validate_options vo;
      vo.require_node_alignment = parsed.kind == parsed_strategy::flexsp || parsed.kind == parsed_strategy::paper_milp;
      if (auto v = validate_plan(p, model, lengths, vo); !v)
        return make_error(errc::failed, "the planner produced an invalid {} plan: {}", p.strategy, v.error().message());
    }
    p.solve_ms = since_ms(t0);
    return std::move(p);
  }
};

expected<planner> planner::create(profile p, cluster c, planner_options opts) {
  FLEXSP_TRY(p.validate());
  FLEXSP_TRY(c.validate());
  FLEXSP_TRY(opts.validate_options());
  FLEXSP_TRY(parse_strategy(opts.strategy, c.devices));
  return planner{std::make_unique<impl>(std::move(p), c, std::move(opts))};
}

planner::planner(std::unique_ptr<impl> p) : impl_{std::move(p)} {}
planner::~planner() = default;
planner::planner(planner&&) noexcept = default;
planner& planner::operator=(planner&&) noexcept = default;

expected<plan> planner::make_plan(std::span<const std::int64_t> lengths) {
  return impl_->run(lengths, impl_->opts.strategy);
}
expected<plan> planner::make_plan(std::span<const std::int64_t> lengths, std::string_view strategy) {
  return impl_->run(lengths, strategy);
}
const cost_model& planner::model() const { return impl_->model; }
const cluster& planner::cluster_shape() const { return impl_->clu; }
planner_options& planner::options() { return impl_->opts; }

expected<plan> make_plan(std::span<const std::int64_t> lengths, const profile& p, const cluster& c,
                         const planner_options& opts) {
  FLEXSP_TRY_ASSIGN(auto pl, planner::create(p, c, opts));
  return pl.make_plan(lengths);
}

}  // namespace flexsp::scheduler
