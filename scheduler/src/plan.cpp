#include "flexsp/scheduler/plan.hpp"

#include <algorithm>
#include <cmath>

#include <nlohmann/json.hpp>

namespace flexsp::scheduler {

double plan::solver_gap() const {
  if (predicted_ms <= 0) return 0;
  return std::max(0.0, 1.0 - solver_bound_ms / predicted_ms);
}

double plan::gap() const {
  if (predicted_ms <= 0) return 0;
  return std::max(0.0, 1.0 - lower_bound_ms / predicted_ms);
}

void evaluate_plan(plan& p, const cost_model& model, std::span<const std::int64_t> lengths) {
  p.predicted_ms = 0;
  std::vector<std::int64_t> buf;
  for (auto& mb : p.micro_batches) {
    mb.predicted_ms = 0;
    for (auto& g : mb.groups) {
      buf.clear();
      std::int64_t tokens = 0;
      for (int i : g.sequences) {
        buf.push_back(lengths[static_cast<std::size_t>(i)]);
        tokens += buf.back();
      }
      g.predicted_ms = model.group_time_ms(g.degree, buf);
      g.memory_mb = model.group_memory_mb(g.degree, tokens);
      mb.predicted_ms = std::max(mb.predicted_ms, g.predicted_ms);
    }
    p.predicted_ms += mb.predicted_ms;
  }
}

expected<void> validate_plan(const plan& p, const cost_model& model, std::span<const std::int64_t> lengths,
                             const validate_options& opts) {
  const int n = model.devices();
  if (p.devices != n) return make_error(errc::failed, "plan is for {} devices, the model for {}", p.devices, n);
  const int k = p.devices_per_node > 0 ? p.devices_per_node : n;
  std::vector<int> seen(lengths.size(), 0);
  const double limit_mb = model.prof().mem_limit_gb * 1024.0;
  auto close = [&](double a, double b) { return std::abs(a - b) <= opts.time_tolerance * std::max(1.0, std::abs(b)); };
  double total = 0;
  std::vector<std::int64_t> buf;
  for (std::size_t m = 0; m < p.micro_batches.size(); ++m) {
    const auto& mb = p.micro_batches[m];
    if (mb.groups.empty()) return make_error(errc::failed, "micro-batch {} has no groups", m);
    std::vector<char> used(static_cast<std::size_t>(n), 0);
    double mb_time = 0;
    for (std::size_t gi = 0; gi < mb.groups.size(); ++gi) {
      const auto& g = mb.groups[gi];
      if (g.degree < 1 || g.degree > n)
        return make_error(errc::failed, "micro-batch {} group {}: degree {} outside 1..{}", m, gi, g.degree, n);
      if (static_cast<int>(g.devices.size()) != g.degree)
        return make_error(errc::failed, "micro-batch {} group {}: degree {} but {} devices", m, gi, g.degree,
                          g.devices.size());
      if (g.sequences.empty()) return make_error(errc::failed, "micro-batch {} group {} holds no sequence", m, gi);
      for (int dev : g.devices) {
        if (dev < 0 || dev >= n) return make_error(errc::failed, "micro-batch {} group {}: device {} outside 0..{}", m, gi, dev, n - 1);
        if (used[static_cast<std::size_t>(dev)])
          return make_error(errc::failed, "micro-batch {}: device {} is in two groups", m, dev);
        used[static_cast<std::size_t>(dev)] = 1;
      }
      if (opts.require_node_alignment && g.degree <= k) {
        const int node = g.devices.front() / k;
        for (int dev : g.devices)
          if (dev / k != node)
            return make_error(errc::failed, "micro-batch {} group {}: {} devices span nodes {} and {}", m, gi, g.degree,
                              node, dev / k);
      }
      buf.clear();
      std::int64_t tokens = 0;
      for (int s : g.sequences) {
        if (s < 0 || static_cast<std::size_t>(s) >= lengths.size())
          return make_error(errc::failed, "micro-batch {} group {}: sequence index {} outside 0..{}", m, gi, s,
                            lengths.size() - 1);
        if (seen[static_cast<std::size_t>(s)]++)
          return make_error(errc::failed, "sequence {} is planned more than once", s);
        buf.push_back(lengths[static_cast<std::size_t>(s)]);
        tokens += buf.back();
      }
      const double mem = model.group_memory_mb(g.degree, tokens);
      if (mem > limit_mb * (1 + 1e-12))
        return make_error(errc::failed, "micro-batch {} group {}: {:.1f} MB per device exceeds the {:.1f} MB limit", m,
                          gi, mem, limit_mb);
      const double t = model.group_time_ms(g.degree, buf);
      if (!close(g.predicted_ms, t))
        return make_error(errc::failed, "micro-batch {} group {}: stored time {} ms, model says {} ms", m, gi,
                          g.predicted_ms, t);
      mb_time = std::max(mb_time, t);
    }
    if (!close(mb.predicted_ms, mb_time))
      return make_error(errc::failed, "micro-batch {}: stored time {} ms, model says {} ms", m, mb.predicted_ms, mb_time);
    total += mb_time;
  }
  for (std::size_t s = 0; s < seen.size(); ++s)
    if (!seen[s]) return make_error(errc::failed, "sequence {} (length {}) is not planned", s, lengths[s]);
  if (!close(p.predicted_ms, total))
    return make_error(errc::failed, "stored step time {} ms, model says {} ms", p.predicted_ms, total);
  return {};
}

std::string plan_to_json(const plan& p, int indent) {
  nlohmann::json j;
  j["strategy"] = p.strategy;
  j["devices"] = p.devices;
  j["devices_per_node"] = p.devices_per_node;
  j["profile"] = p.profile;
  j["predicted_ms"] = p.predicted_ms;
  j["lower_bound_ms"] = p.lower_bound_ms;
  j["gap_to_lower_bound"] = p.gap();
  j["solver_bound_ms"] = p.solver_bound_ms;
  j["solver_gap"] = p.solver_gap();
  j["solve_ms"] = p.solve_ms;
  j["status"] = p.status;
  j["bucket_token_error"] = p.bucket_token_error;
  j["milp_solves"] = p.milp_solves;
  if (p.milp_solves > 0) j["milp_gap"] = p.milp_gap;
  if (p.uniform_degree > 0) j["uniform_degree"] = p.uniform_degree;
  auto& mbs = j["micro_batches"] = nlohmann::json::array();
  for (const auto& mb : p.micro_batches) {
    nlohmann::json jm;
    jm["predicted_ms"] = mb.predicted_ms;
    auto& groups = jm["groups"] = nlohmann::json::array();
    for (const auto& g : mb.groups)
      groups.push_back({{"degree", g.degree},
                        {"devices", g.devices},
                        {"sequences", g.sequences},
                        {"predicted_ms", g.predicted_ms},
                        {"memory_mb", g.memory_mb}});
    mbs.push_back(std::move(jm));
  }
  return j.dump(indent);
}

std::string plan_to_table(const plan& p) {
  std::string out = fmt::format("strategy {}  profile {}  devices {} ({} per node)\n", p.strategy, p.profile, p.devices,
                                p.devices_per_node);
  out += fmt::format("predicted step {:.1f} ms  lower bound {:.1f} ms (gap {:.2f}%)  solver bound {:.1f} ms ({:.2f}%)\n",
                     p.predicted_ms, p.lower_bound_ms, 100 * p.gap(), p.solver_bound_ms, 100 * p.solver_gap());
  out += fmt::format("solved in {:.1f} ms, status {}, bucketing token error {:.2f}%\n", p.solve_ms, p.status,
                     100 * p.bucket_token_error);
  out += fmt::format("{:>4} {:>6} {:>7} {:>12} {:>10} {:>10}  {}\n", "mb", "group", "degree", "devices", "seqs",
                     "time_ms", "memory_mb");
  for (std::size_t m = 0; m < p.micro_batches.size(); ++m) {
    const auto& mb = p.micro_batches[m];
    // runs of four or more groups of one degree print as one row ("1 x64"), with the largest
    // time and memory among them
    for (std::size_t g = 0; g < mb.groups.size();) {
      std::size_t e = g + 1;
      while (e < mb.groups.size() && mb.groups[e].degree == mb.groups[g].degree) ++e;
      if (e - g < 4) e = g + 1;
      std::size_t seqs = 0;
      double time = 0, mem = 0;
      int lo = mb.groups[g].devices.empty() ? 0 : mb.groups[g].devices.front(), hi = lo;
      for (std::size_t k = g; k < e; ++k) {
        const auto& grp = mb.groups[k];
        seqs += grp.sequences.size();
        time = std::max(time, grp.predicted_ms);
        mem = std::max(mem, grp.memory_mb);
        for (int d : grp.devices) {
          lo = std::min(lo, d);
          hi = std::max(hi, d);
        }
      }
      const std::string label = e - g > 1 ? fmt::format("{}-{}", g, e - 1) : fmt::format("{}", g);
      const std::string degree = e - g > 1 ? fmt::format("{} x{}", mb.groups[g].degree, e - g)
                                           : fmt::format("{}", mb.groups[g].degree);
      out += fmt::format("{:>4} {:>6} {:>7} {:>12} {:>10} {:>10.1f}  {:.0f}\n", m, label, degree,
                         fmt::format("{}-{}", lo, hi), seqs, time, mem);
      g = e;
    }
    out += fmt::format("{:>4} {:>6} {:>7} {:>12} {:>10} {:>10.1f}\n", m, "total", "", "", "", mb.predicted_ms);
  }
  return out;
}

}  // namespace flexsp::scheduler
