#include "flexsp/scheduler/micro_batch.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <numeric>

#include "flexsp/core/check.hpp"

namespace flexsp::scheduler {
namespace {

constexpr double inf = std::numeric_limits<double>::infinity();
using clock_type = std::chrono::steady_clock;

double elapsed_ms(clock_type::time_point since) {
  return std::chrono::duration<double, std::milli>(clock_type::now() - since).count();
}

// A group while assigning: its remaining room is kept in tokens.
struct work_group {
  int degree;
  double load;
  std::int64_t free;
  std::vector<int> members;
};

}  // namespace

void recompute(mb_solution& sol, const cost_model& model, std::span<const std::int64_t> lengths) {
  std::erase_if(sol.groups, [](const mb_group& g) { return g.members.empty(); });
  double worst = 0;
  for (auto& g : sol.groups) {
    g.load_ms = 0;
    g.tokens = 0;
    for (int i : g.members) {
      const auto s = lengths[static_cast<std::size_t>(i)];
      g.load_ms += model.seq_cost_ms(g.degree, s);
      g.tokens += s;
    }
    worst = std::max(worst, g.load_ms);
  }
  sol.makespan_ms = sol.groups.empty() ? 0 : model.prof().beta1 + worst;
}

namespace {

void improve_groups(std::vector<work_group>& groups, const cost_model& model, std::span<const std::int64_t> lengths,
                    int max_rounds) {
  if (groups.size() < 2) return;
  for (int round = 0; round < max_rounds; ++round) {
    std::size_t top = 0;
    for (std::size_t g = 1; g < groups.size(); ++g)
      if (groups[g].load > groups[top].load) top = g;
    auto& gt = groups[top];
    const double limit = gt.load * (1 - 1e-9);
    double best_val = limit;
    std::size_t best_a = 0, best_h = 0, best_b = 0;
    bool found_move = false, found_swap = false;
    for (std::size_t ai = 0; ai < gt.members.size(); ++ai) {
      const auto sa = lengths[static_cast<std::size_t>(gt.members[ai])];
      const double rest = gt.load - model.seq_cost_ms(gt.degree, sa);
      for (std::size_t h = 0; h < groups.size(); ++h) {
        if (h == top || groups[h].free < sa) continue;
        const double val = std::max(rest, groups[h].load + model.seq_cost_ms(groups[h].degree, sa));
        if (val < best_val) {
          best_val = val;
          best_a = ai;
          best_h = h;
          found_move = true;
        }
      }
    }
    if (!found_move) {
      for (std::size_t ai = 0; ai < gt.members.size(); ++ai) {
        const auto sa = lengths[static_cast<std::size_t>(gt.members[ai])];
        const double ca_top = model.seq_cost_ms(gt.degree, sa);
        for (std::size_t h = 0; h < groups.size(); ++h) {
          if (h == top) continue;
          auto& gh = groups[h];
          const double ca_h = model.seq_cost_ms(gh.degree, sa);
          for (std::size_t bi = 0; bi < gh.members.size(); ++bi) {
            const auto sb = lengths[static_cast<std::size_t>(gh.members[bi])];
            if (sb >= sa) continue;  // only a shorter sequence can make the top group faster
            if (gh.free + sb < sa) continue;
            if (gt.free + sa < sb) continue;
            const double nt = gt.load - ca_top + model.seq_cost_ms(gt.degree, sb);
            const double nh = gh.load - model.seq_cost_ms(gh.degree, sb) + ca_h;
            const double val = std::max(nt, nh);
            if (val < best_val) {
              best_val = val;
              best_a = ai;
              best_h = h;
              best_b = bi;
              found_swap = true;
            }
          }
        }
      }
    }
    if (!found_move && !found_swap) return;
    auto& gh = groups[best_h];
    const int a = gt.members[best_a];
    const auto sa = lengths[static_cast<std::size_t>(a)];
    gt.members[best_a] = gt.members.back();
    gt.members.pop_back();
    gt.load -= model.seq_cost_ms(gt.degree, sa);
    gt.free += sa;
    if (found_swap) {
      const int b = gh.members[best_b];
      const auto sb = lengths[static_cast<std::size_t>(b)];
      gh.members[best_b] = gh.members.back();
      gh.members.pop_back();
      gh.load -= model.seq_cost_ms(gh.degree, sb);
      gh.free += sb;
      gt.members.push_back(b);
      gt.load += model.seq_cost_ms(gt.degree, sb);
      gt.free -= sb;
    }
    gh.members.push_back(a);
    gh.load += model.seq_cost_ms(gh.degree, sa);
    gh.free -= sa;
  }
}

mb_solution to_solution(std::vector<work_group>& groups, const cost_model& model, std::span<const std::int64_t> lengths) {
  mb_solution sol;
  for (auto& g : groups)
    if (!g.members.empty()) sol.groups.push_back(mb_group{g.degree, std::move(g.members), 0, 0});
  sol.feasible = true;
  recompute(sol, model, lengths);
  return sol;
}

}  // namespace

void improve(mb_solution& sol, const cost_model& model, std::span<const std::int64_t> lengths, int max_rounds) {
  if (!sol.feasible) return;
  std::vector<work_group> groups;
  for (auto& g : sol.groups) {
    std::int64_t tokens = 0;
    double load = 0;
    for (int i : g.members) {
      tokens += lengths[static_cast<std::size_t>(i)];
      load += model.seq_cost_ms(g.degree, lengths[static_cast<std::size_t>(i)]);
    }
    groups.push_back(work_group{g.degree, load, model.token_capacity(g.degree) - tokens, std::move(g.members)});
  }
  improve_groups(groups, model, lengths, max_rounds);
  const double bound = sol.bound_ms;
  const bool proven = sol.proven;
  const int evaluated = sol.layouts_evaluated;
  sol = to_solution(groups, model, lengths);
  sol.bound_ms = bound;
  sol.proven = proven;
  sol.layouts_evaluated = evaluated;
}

std::vector<std::vector<int>> place_groups(std::span<const int> degrees, const cluster& c) {
  const int k = c.devices_per_node;
  const int nodes = c.nodes();
  std::vector<int> next(static_cast<std::size_t>(nodes));      // first free device of each node
  std::vector<int> end(static_cast<std::size_t>(nodes));
  for (int i = 0; i < nodes; ++i) {
    next[static_cast<std::size_t>(i)] = i * k;
    end[static_cast<std::size_t>(i)] = std::min(c.devices, (i + 1) * k);
  }
  auto free_of = [&](int i) { return end[static_cast<std::size_t>(i)] - next[static_cast<std::size_t>(i)]; };
  std::vector<std::size_t> order(degrees.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return degrees[a] > degrees[b]; });
  std::vector<std::vector<int>> out(degrees.size());
  for (auto gi : order) {
    int d = degrees[gi];
    auto& devs = out[gi];
    if (d <= k) {
      int best = -1;
      for (int i = 0; i < nodes; ++i)
        if (free_of(i) >= d && (best < 0 || free_of(i) < free_of(best))) best = i;
      if (best < 0) return {};
      for (int j = 0; j < d; ++j) devs.push_back(next[static_cast<std::size_t>(best)]++);
      continue;
    }
    // larger groups span nodes: untouched nodes first, then the emptiest partial ones
    while (d > 0) {
      int best = -1;
      for (int i = 0; i < nodes; ++i) {
        if (free_of(i) == 0) continue;
        const bool whole = next[static_cast<std::size_t>(i)] == i * k;
        const bool best_whole = best >= 0 && next[static_cast<std::size_t>(best)] == best * k;
        if (best < 0 || (whole && !best_whole) || (whole == best_whole && free_of(i) > free_of(best))) best = i;
      }
      if (best < 0) return {};
      const int take = std::min(d, free_of(best));
      for (int j = 0; j < take; ++j) devs.push_back(next[static_cast<std::size_t>(best)]++);
      d -= take;
    }
  }
  return out;
}

struct layout_search::impl {
  cost_model model;
  cluster clu;
  bool any_degree;
  std::vector<int> degrees;                      // powers of two up to N, ascending
  std::vector<std::int64_t> cap;                 // token capacity per degree index
  std::vector<double> inv_bw;                    // 1/bandwidth per degree index (0 for degree 1)
  struct layout {
    std::vector<int> counts;                     // groups per degree index
    std::vector<int> group_degrees;              // expanded, descending
    std::vector<int> dev_ge;                     // devices in groups of degree index >= k
    std::vector<std::int64_t> cap_ge;            // tokens those groups hold
    unsigned mask;
  };
  std::vector<layout> layouts;

  impl(const cost_model& m, cluster c, bool any) : model{m}, clu{c}, any_degree{any} {
    for (int d = 1; d <= c.devices; d *= 2) degrees.push_back(d);
    for (int d : degrees) {
      cap.push_back(model.token_capacity(d));
      inv_bw.push_back(d == 1 ? 0.0 : 1.0 / model.bandwidth_gbps(d));
    }
    std::vector<int> counts(degrees.size(), 0);
    enumerate(static_cast<int>(degrees.size()) - 1, c.devices, counts);
  }

  void enumerate(int j, int rem, std::vector<int>& counts) {
    if (j == 0) {
      counts[0] = rem;
      add_layout(counts);
      counts[0] = 0;
      return;
    }
    for (int n = rem / degrees[static_cast<std::size_t>(j)]; n >= 0; --n) {
      counts[static_cast<std::size_t>(j)] = n;
      enumerate(j - 1, rem - n * degrees[static_cast<std::size_t>(j)], counts);
    }
    counts[static_cast<std::size_t>(j)] = 0;
  }

  void add_layout(const std::vector<int>& counts) {
    layout l;
    l.counts = counts;
    l.mask = 0;
    const std::size_t J = degrees.size();
    for (std::size_t j = J; j-- > 0;) {
      for (int n = 0; n < counts[j]; ++n) l.group_degrees.push_back(degrees[j]);
      if (counts[j] > 0) l.mask |= 1u << j;
    }
    if (place_groups(l.group_degrees, clu).empty()) return;
    l.dev_ge.assign(J + 1, 0);
    l.cap_ge.assign(J + 1, 0);
    for (std::size_t j = J; j-- > 0;) {
      l.dev_ge[j] = l.dev_ge[j + 1] + counts[j] * degrees[j];
      l.cap_ge[j] = l.cap_ge[j + 1] + counts[j] * cap[j];
    }
    layouts.push_back(std::move(l));
  }

  // Per-solve aggregates of the sequences by class (the smallest power-of-two degree that holds them).
  struct classes {
    std::vector<double> compute;                 // sum of alpha1 s^2 + alpha2 s
    std::vector<double> volume;                  // sum of V(s)
    std::vector<std::int64_t> tokens;
    std::vector<std::int64_t> longest;
    bool all_fit{true};
  };

  classes classify(std::span<const std::int64_t> lengths) const {
    const std::size_t J = degrees.size();
    classes c{std::vector<double>(J, 0), std::vector<double>(J, 0), std::vector<std::int64_t>(J, 0),
              std::vector<std::int64_t>(J, 0), true};
    for (auto s : lengths) {
      std::size_t k = 0;
      while (k < J && cap[k] < s) ++k;
      if (k == J) {
        c.all_fit = false;
        continue;
      }
      c.compute[k] += model.compute_ms(1, s);
      c.volume[k] += model.comm_volume_mb(s);
      c.tokens[k] += s;
      c.longest[k] = std::max(c.longest[k], s);
    }
    return c;
  }

  double bound(const classes& c, const layout& l) const {
    const std::size_t J = degrees.size();
    double work = 0;
    std::int64_t tokens = 0;
    double b = 0;
    for (std::size_t k = J; k-- > 0;) {
      tokens += c.tokens[k];
      if (c.tokens[k] > 0) {
        double best_inv = inf;
        double best_single = inf;
        for (std::size_t j = k; j < J; ++j) {
          if (!(l.mask & (1u << j))) continue;
          best_inv = std::min(best_inv, inv_bw[j]);
          best_single = std::min(best_single, model.seq_cost_ms(degrees[j], c.longest[k]));
        }
        if (best_inv == inf) return inf;
        work += c.compute[k] + c.volume[k] * best_inv;
        b = std::max(b, best_single);
      }
      if (tokens > l.cap_ge[k]) return inf;
      if (l.dev_ge[k] > 0) b = std::max(b, work / l.dev_ge[k]);
    }
    return model.prof().beta1 + b;
  }

  // Per-solve cost table: cost of each sequence (by input index) at each power-of-two degree.
  struct cost_table {
    std::vector<std::vector<double>> by_degree;  // index = degree (only powers of two filled)
    const std::vector<double>* at(int d) const {
      return static_cast<std::size_t>(d) < by_degree.size() && !by_degree[static_cast<std::size_t>(d)].empty()
                 ? &by_degree[static_cast<std::size_t>(d)]
                 : nullptr;
    }
  };

  cost_table make_costs(std::span<const std::int64_t> lengths) const {
    cost_table t;
    t.by_degree.resize(static_cast<std::size_t>(clu.devices) + 1);
    for (int d : degrees) {
      auto& v = t.by_degree[static_cast<std::size_t>(d)];
      v.resize(lengths.size());
      for (std::size_t i = 0; i < lengths.size(); ++i) v[i] = model.seq_cost_ms(d, lengths[i]);
    }
    return t;
  }

  bool pack(std::vector<work_group>& groups, std::span<const std::int64_t> lengths, std::span<const int> order) const {
    for (auto& g : groups) {
      g.members.clear();
      g.load = 0;
      g.free = model.token_capacity(g.degree);
    }
    for (int i : order) {
      const auto s = lengths[static_cast<std::size_t>(i)];
      std::size_t best = groups.size();
      for (std::size_t g = 0; g < groups.size(); ++g) {
        if (groups[g].free < s) continue;
        if (best == groups.size() || groups[g].free < groups[best].free ||
            (groups[g].free == groups[best].free && groups[g].load < groups[best].load))
          best = g;
      }
      if (best == groups.size()) return false;
      groups[best].free -= s;
      groups[best].load += model.seq_cost_ms(groups[best].degree, s);
      groups[best].members.push_back(i);
    }
    return true;
  }

  std::vector<work_group> make_groups(std::span<const int> layout_degrees) const {
    std::vector<work_group> groups;
    groups.reserve(layout_degrees.size());
    for (int d : layout_degrees) groups.push_back(work_group{d, 0.0, model.token_capacity(d), {}});
    return groups;
  }

  // Longest first, each sequence to the group where it would finish first. Groups of one degree
  // differ only in load and room, so each degree keeps a min-heap by load; its candidate is its
  // least-loaded group with room. False when a sequence finds no room.
  bool assign_by_time(std::span<const std::int64_t> lengths, std::span<const int> order, std::vector<work_group>& groups,
                      const cost_table* costs, bool record) const {
    struct degree_class {
      int degree;
      const std::vector<double>* costs;
      std::vector<int> heap;
      std::vector<int> parked;  // popped for lack of room, restored after each sequence
    };
    std::vector<degree_class> classes;
    for (std::size_t g = groups.size(); g-- > 0;) {  // ascending degree: ties go to the smaller one
      if (classes.empty() || classes.back().degree != groups[g].degree)
        classes.push_back(degree_class{groups[g].degree, costs ? costs->at(groups[g].degree) : nullptr, {}, {}});
      classes.back().heap.push_back(static_cast<int>(g));
    }
    auto later = [&groups](int a, int b) {
      const auto& ga = groups[static_cast<std::size_t>(a)];
      const auto& gb = groups[static_cast<std::size_t>(b)];
      return ga.load > gb.load || (ga.load == gb.load && a > b);
    };
    for (auto& c : classes) std::make_heap(c.heap.begin(), c.heap.end(), later);
    const std::int64_t shortest = order.empty() ? 0 : lengths[static_cast<std::size_t>(order.back())];
    for (int i : order) {
      const auto s = lengths[static_cast<std::size_t>(i)];
      degree_class* best = nullptr;
      double best_key = inf;
      for (auto& c : classes) {
        c.parked.clear();
        while (!c.heap.empty() && groups[static_cast<std::size_t>(c.heap.front())].free < s) {
          const int g = c.heap.front();
          std::pop_heap(c.heap.begin(), c.heap.end(), later);
          c.heap.pop_back();
          // a group without room for the shortest sequence is full for good
          if (groups[static_cast<std::size_t>(g)].free >= shortest) c.parked.push_back(g);
        }
        if (c.heap.empty()) continue;
        const auto& top = groups[static_cast<std::size_t>(c.heap.front())];
        const double cost = c.costs ? (*c.costs)[static_cast<std::size_t>(i)] : model.seq_cost_ms(c.degree, s);
        if (top.load + cost < best_key) {
          best_key = top.load + cost;
          best = &c;
        }
      }
      if (best) {
        const int g = best->heap.front();
        std::pop_heap(best->heap.begin(), best->heap.end(), later);
        auto& grp = groups[static_cast<std::size_t>(g)];
        grp.load = best_key;
        grp.free -= s;
        if (record) grp.members.push_back(i);
        std::push_heap(best->heap.begin(), best->heap.end(), later);
      }
      for (auto& c : classes)
        for (int g : c.parked) {
          c.heap.push_back(g);
          std::push_heap(c.heap.begin(), c.heap.end(), later);
        }
      if (!best) return false;
    }
    return true;
  }

  mb_solution greedy(std::span<const std::int64_t> lengths, std::span<const int> order, std::span<const int> layout_degrees,
                     bool local_search, const cost_table* costs = nullptr) const {
    auto groups = make_groups(layout_degrees);
    // Balancing by time can fragment memory; then fall back to best-fit-decreasing packing by
    // memory (what fits when anything fits) and let the local search rebalance.
    if (!assign_by_time(lengths, order, groups, costs, true) && !pack(groups, lengths, order)) {
      mb_solution none;
      none.makespan_ms = inf;
      return none;
    }
    if (local_search) improve_groups(groups, model, lengths, 100);
    return to_solution(groups, model, lengths);
  }

  // Short sequences at the end of the order, pooled: the estimate spreads them like a fluid.
  struct tail_pool {
    std::size_t head{0};             // sequences assigned one by one
    std::int64_t tokens{0};
    double compute{0};               // sum of alpha1 s^2 + alpha2 s
    double volume{0};                // sum of V(s)
  };

  tail_pool make_tail(std::span<const std::int64_t> lengths, std::span<const int> order) const {
    // sequences below 1/8 of a device's room are pooled; they are many and each moves little
    const auto limit = static_cast<std::int64_t>(model.tokens_per_device() / 8);
    tail_pool t;
    t.head = order.size();
    while (t.head > 0 && lengths[static_cast<std::size_t>(order[t.head - 1])] <= limit) {
      const auto s = lengths[static_cast<std::size_t>(order[--t.head])];
      t.tokens += s;
      t.compute += model.compute_ms(1, s);
      t.volume += model.comm_volume_mb(s);
    }
    return t;
  }

  // Makespan estimate of one layout: exact greedy on the head, water-filling for the pooled tail.
  double estimate(std::span<const std::int64_t> lengths, std::span<const int> order, std::span<const int> layout_degrees,
                  const cost_table& costs, const tail_pool& tail) const {
    auto groups = make_groups(layout_degrees);
    const auto head = order.subspan(0, tail.head);
    if (!assign_by_time(lengths, head, groups, &costs, false) && !pack(groups, lengths, head)) return inf;
    double worst = 0;
    for (const auto& g : groups) worst = std::max(worst, g.load);
    if (tail.tokens > 0) {
      std::int64_t room = 0;
      for (const auto& g : groups) room += g.free;
      if (room < tail.tokens) return inf;
      std::vector<double> rate(groups.size());  // ms per tail token in each group
      for (std::size_t g = 0; g < groups.size(); ++g) {
        const int d = groups[g].degree;
        rate[g] = (tail.compute / d + (d > 1 ? tail.volume / (d * model.bandwidth_gbps(d)) : 0.0)) /
                  static_cast<double>(tail.tokens);
      }
      double lo = 0, hi = worst;
      for (std::size_t g = 0; g < groups.size(); ++g)
        hi = std::max(hi, groups[g].load + rate[g] * static_cast<double>(tail.tokens));
      auto taken = [&](double level) {
        double sum = 0;
        for (std::size_t g = 0; g < groups.size(); ++g)
          if (level > groups[g].load)
            sum += std::min(static_cast<double>(groups[g].free), (level - groups[g].load) / rate[g]);
        return sum;
      };
      for (int it = 0; it < 40; ++it) {
        const double mid = 0.5 * (lo + hi);
        (taken(mid) >= static_cast<double>(tail.tokens) ? hi : lo) = mid;
      }
      worst = std::max(worst, hi);
    }
    return model.prof().beta1 + worst;
  }

  // Smallest makespan any layout (any degrees) could reach: beta1 plus the best device time over
  // N devices, or the longest sequence alone.
  double any_degree_bound(std::span<const std::int64_t> lengths) const {
    double work = 0;
    double single = 0;
    const int n = clu.devices;
    for (auto s : lengths) {
      double best_dev = inf, best_one = inf;
      for (int d = 1; d <= n; ++d) {
        if (model.token_capacity(d) < s) continue;
        best_dev = std::min(best_dev, d * model.seq_cost_ms(d, s));
        best_one = std::min(best_one, model.seq_cost_ms(d, s));
      }
      if (best_dev == inf) return inf;
      work += best_dev;
      single = std::max(single, best_one);
    }
    return model.prof().beta1 + std::max(work / n, single);
  }

  void neighbourhood(std::span<const std::int64_t> lengths, std::span<const int> order, mb_solution& best,
                     std::vector<int> layout_degrees, clock_type::time_point start, double time_limit_ms) const {
    const int n = clu.devices;
    bool improved = true;
    while (improved && elapsed_ms(start) < time_limit_ms) {
      improved = false;
      std::vector<std::vector<int>> candidates;
      std::vector<int> distinct = layout_degrees;
      std::sort(distinct.begin(), distinct.end());
      distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
      auto without = [&](std::vector<int> v, int d) {
        v.erase(std::find(v.begin(), v.end(), d));
        return v;
      };
      for (std::size_t a = 0; a < distinct.size(); ++a)
        for (std::size_t b = a; b < distinct.size(); ++b) {
          auto v = without(layout_degrees, distinct[a]);
          if (std::find(v.begin(), v.end(), distinct[b]) == v.end()) continue;
          v = without(v, distinct[b]);
          if (distinct[a] + distinct[b] > n) continue;
          v.push_back(distinct[a] + distinct[b]);
          candidates.push_back(std::move(v));
        }
      for (int d : distinct)
        for (int part = 1; part <= d / 2; ++part) {
          auto v = without(layout_degrees, d);
          v.push_back(part);
          v.push_back(d - part);
          candidates.push_back(std::move(v));
        }
      const int used = std::accumulate(layout_degrees.begin(), layout_degrees.end(), 0);
      if (used < n) {
        auto v = layout_degrees;
        v.push_back(n - used);
        candidates.push_back(std::move(v));
      }
      std::vector<int> best_layout;
      for (auto& cand : candidates) {
        if (elapsed_ms(start) >= time_limit_ms) break;
        std::sort(cand.rbegin(), cand.rend());
        if (place_groups(cand, clu).empty()) continue;
        auto sol = greedy(lengths, order, cand, true);
        ++best.layouts_evaluated;
        if (sol.feasible && sol.makespan_ms < best.makespan_ms * (1 - 1e-9)) {
          sol.layouts_evaluated = best.layouts_evaluated;
          best = std::move(sol);
          best_layout = cand;
          improved = true;
        }
      }
      if (improved) layout_degrees = best_layout;
    }
  }
};

layout_search::layout_search(const cost_model& model, cluster c, bool any_degree)
    : impl_{std::make_unique<impl>(model, c, any_degree)} {
  FLEXSP_EXPECTS(model.devices() == c.devices, "model for {} devices, cluster of {}", model.devices(), c.devices);
}
layout_search::~layout_search() = default;
layout_search::layout_search(layout_search&&) noexcept = default;
layout_search& layout_search::operator=(layout_search&&) noexcept = default;

std::size_t layout_search::layout_count() const { return impl_->layouts.size(); }

mb_solution layout_search::assign(std::span<const std::int64_t> lengths, std::span<const int> degrees,
                                  bool local_search) const {
  std::vector<int> order(lengths.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
    return lengths[static_cast<std::size_t>(a)] > lengths[static_cast<std::size_t>(b)];
  });
  std::vector<int> sorted_degrees(degrees.begin(), degrees.end());
  std::sort(sorted_degrees.rbegin(), sorted_degrees.rend());
  return impl_->greedy(lengths, order, sorted_degrees, local_search);
}

double layout_search::layout_bound(std::span<const std::int64_t> lengths, std::span<const int> degrees) const {
  impl::layout l;
  const std::size_t J = impl_->degrees.size();
  l.counts.assign(J, 0);
  l.mask = 0;
  for (int d : degrees) {
    auto it = std::find(impl_->degrees.begin(), impl_->degrees.end(), d);
    FLEXSP_EXPECTS(it != impl_->degrees.end(), "degree {} is not a power of two <= {}", d, impl_->clu.devices);
    const auto j = static_cast<std::size_t>(it - impl_->degrees.begin());
    ++l.counts[j];
    l.mask |= 1u << j;
  }
  l.dev_ge.assign(J + 1, 0);
  l.cap_ge.assign(J + 1, 0);
  for (std::size_t j = J; j-- > 0;) {
    l.dev_ge[j] = l.dev_ge[j + 1] + l.counts[j] * impl_->degrees[j];
    l.cap_ge[j] = l.cap_ge[j + 1] + l.counts[j] * impl_->cap[j];
  }
  const auto c = impl_->classify(lengths);
  if (!c.all_fit) return inf;
  return impl_->bound(c, l);
}

mb_solution layout_search::solve(std::span<const std::int64_t> lengths, const mb_options& opts) const {
  const auto start = clock_type::now();
  const auto& I = *impl_;
  mb_solution best;
  best.makespan_ms = inf;
  if (lengths.empty()) {
    best.makespan_ms = 0;
    best.feasible = best.proven = true;
    return best;
  }
  std::vector<int> order(lengths.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
    return lengths[static_cast<std::size_t>(a)] > lengths[static_cast<std::size_t>(b)];
  });
  const auto cls = I.classify(lengths);
  std::vector<std::pair<double, std::size_t>> ranked;
  if (cls.all_fit) {
    ranked.reserve(I.layouts.size());
    for (std::size_t i = 0; i < I.layouts.size(); ++i) {
      const double b = I.bound(cls, I.layouts[i]);
      if (b < inf) ranked.emplace_back(b, i);
    }
    std::sort(ranked.begin(), ranked.end());
  }
  const auto costs = I.make_costs(lengths);
  const auto tail = I.make_tail(lengths, order);
  // Phase 1 ranks layouts by a cheap estimate (exact greedy on long sequences, short ones as a
  // fluid); phase 2 assigns the best few exactly and runs the local search on them.
  std::vector<std::pair<double, std::size_t>> top;
  // local search costs about (sequences)^2 per round, so small micro-batches can afford more of it
  const std::size_t keep = static_cast<std::size_t>(std::max(
      1, lengths.size() <= 128 ? opts.improve_top * 8 : opts.improve_top * 2));
  double best_estimate = inf;
  int evaluated = 0;
  for (const auto& [lb, idx] : ranked) {
    if (best_estimate < inf && lb * (1 + opts.tolerance) >= best_estimate) break;
    if (evaluated >= opts.max_layouts) break;
    if (best_estimate < inf && elapsed_ms(start) >= opts.time_limit_ms) break;
    const double est = I.estimate(lengths, order, I.layouts[idx].group_degrees, costs, tail);
    ++evaluated;
    if (est == inf) continue;
    best_estimate = std::min(best_estimate, est);
    top.emplace_back(est, idx);
    std::push_heap(top.begin(), top.end());
    if (top.size() > keep) {
      std::pop_heap(top.begin(), top.end());
      top.pop_back();
    }
  }
  std::sort(top.begin(), top.end());
  const std::vector<int>* best_layout = nullptr;
  for (const auto& [value, idx] : top) {
    auto sol = I.greedy(lengths, order, I.layouts[idx].group_degrees, true, &costs);
    if (sol.feasible && sol.makespan_ms < best.makespan_ms) {
      best = std::move(sol);
      best_layout = &I.layouts[idx].group_degrees;
    }
  }
  if (!best.feasible) {
    // the estimates were feasible but no exact assignment of the kept layouts was: go on in order
    for (const auto& [lb, idx] : ranked) {
      auto sol = I.greedy(lengths, order, I.layouts[idx].group_degrees, true, &costs);
      ++evaluated;
      if (sol.feasible) {
        best = std::move(sol);
        best_layout = &I.layouts[idx].group_degrees;
        break;
      }
    }
  }
  best.layouts_evaluated = evaluated;
  double bound = ranked.empty() ? inf : ranked.front().first;
  if (I.any_degree) {
    bound = std::min(bound, I.any_degree_bound(lengths));
    std::vector<int> seed = best_layout ? *best_layout : std::vector<int>{I.clu.devices};
    if (!best.feasible) {
      auto sol = I.greedy(lengths, order, seed, true);
      ++best.layouts_evaluated;
      if (sol.feasible) {
        sol.layouts_evaluated = best.layouts_evaluated;
        best = std::move(sol);
      }
    }
    if (best.feasible) I.neighbourhood(lengths, order, best, seed, start, std::max(opts.time_limit_ms, 1.0));
  }
  if (!best.feasible) {
    best.bound_ms = bound;
    return best;
  }
  best.bound_ms = std::min(bound, best.makespan_ms);
  best.proven = best.makespan_ms <= best.bound_ms * (1 + opts.tolerance);
  return best;
}

}  // namespace flexsp::scheduler
