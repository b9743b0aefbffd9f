#pragma once
/// \file
/// Solving one micro-batch: choose SP groups (a "layout": degrees summing to at most N) and
/// assign each sequence to a group so that the slowest group finishes first.
///
/// `layout_search` enumerates every layout of N devices into the allowed degrees (about 1,800
/// for 64 devices and powers of two), orders them by a lower bound that needs no assignment,
/// and assigns sequences greedily (longest first, to the group that would finish earliest)
/// followed by a local search, until the next layout's bound cannot beat the best plan found.
/// The smallest bound over the layouts not yet solved is a proven bound on the micro-batch.

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "flexsp/scheduler/cost_model.hpp"

namespace flexsp::scheduler {

/// One group of a micro-batch solution; members index the micro-batch's lengths.
struct mb_group {
  int degree{0};
  std::vector<int> members;
  double load_ms{0};          ///< sum of member costs (the group's time without beta1)
  std::int64_t tokens{0};
};

/// A solved micro-batch.
struct mb_solution {
  std::vector<mb_group> groups;      ///< non-empty groups only
  double makespan_ms{0};             ///< beta1 + the largest load; +inf when infeasible
  double bound_ms{0};                ///< proven lower bound on the makespan of any layout
  bool feasible{false};
  bool proven{false};                ///< makespan within the tolerance of bound_ms
  int layouts_evaluated{0};
};

/// Options of one micro-batch solve.
struct mb_options {
  double time_limit_ms{50};          ///< wall-clock budget of the search
  double tolerance{1e-3};            ///< stop when best <= bound * (1 + tolerance)
  int max_layouts{1 << 30};          ///< cap on layouts assigned
  int improve_top{4};                ///< how many of the best greedy results get the local search
};

/// Recomputes loads, tokens and the makespan of `sol` from the lengths; drops empty groups.
void recompute(mb_solution& sol, const cost_model& model, std::span<const std::int64_t> lengths);

/// Local search on a feasible solution: moves and swaps sequences out of the slowest group while
/// that lowers it without making another group slower than it was; keeps memory within limits.
/// `max_rounds` bounds the number of accepted changes.
void improve(mb_solution& sol, const cost_model& model, std::span<const std::int64_t> lengths, int max_rounds = 200);

/// The group devices of a layout, aligned to nodes: groups of at most `devices_per_node`
/// devices stay within one node; larger ones take whole nodes first. Returns one device list
/// per degree (in the order given), or an empty vector when the layout cannot be aligned.
std::vector<std::vector<int>> place_groups(std::span<const int> degrees, const cluster& c);

/// Enumerated layouts of one cluster and a solver over them. Reusable across batches; the
/// const member functions are safe to call from several threads.
class layout_search {
public:
  /// `any_degree` adds a neighbourhood search over non-power-of-two degrees (merging two groups,
  /// splitting one) after the power-of-two layouts.
  layout_search(const cost_model& model, cluster c, bool any_degree = false);
  ~layout_search();
  layout_search(layout_search&&) noexcept;
  layout_search& operator=(layout_search&&) noexcept;

  /// Number of power-of-two layouts that can be placed on the cluster.
  std::size_t layout_count() const;

  /// Solves one micro-batch. Infeasible (feasible == false) when no layout holds the sequences.
  mb_solution solve(std::span<const std::int64_t> lengths, const mb_options& opts) const;

  /// Assigns `lengths` greedily to the groups of one layout (degrees), then improves; infeasible
  /// when a sequence finds no group with room.
  mb_solution assign(std::span<const std::int64_t> lengths, std::span<const int> degrees, bool local_search) const;

  /// The lower bound of one layout for `lengths`, as `solve` uses to order and prune layouts.
  double layout_bound(std::span<const std::int64_t> lengths, std::span<const int> degrees) const;

private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace flexsp::scheduler
