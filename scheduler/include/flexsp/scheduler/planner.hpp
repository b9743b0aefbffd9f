#pragma once
/// \file
/// The planner: a batch of sequence lengths in, a validated plan out.
///
/// Strategies:
/// - `flexsp`: Sequence Blaster (sort; micro-batch counts from the memory minimum up; contiguous
///   split minimising the largest micro-batch), then per micro-batch the layout search of
///   micro_batch.hpp; with `use_milp`, micro-batches whose gap to the layout bound is above
///   `milp_min_gap` then get the CBC MILP of milp.hpp, warm-started from the layout search, for the
///   rest of the time limit; the better of the two is kept.
/// - `milp`: the paper's pipeline for comparison: the same Blaster split, a warm start from the
///   best single-degree layout, then the bucketed CBC MILP on every micro-batch.
/// - `static:D`: every sequence at degree D, packed best-fit decreasing by memory into
///   micro-batches of N/D groups (DeepSpeed-Ulysses with packing).
/// - `batchada`: the best single static degree for this batch.

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "flexsp/core/error.hpp"
#include "flexsp/scheduler/cost_model.hpp"
#include "flexsp/scheduler/plan.hpp"
#include "flexsp/scheduler/profile.hpp"

namespace flexsp::scheduler {

/// Options of the planner.
struct planner_options {
  std::string strategy{"flexsp"};   ///< "flexsp", "milp", "static:D" or "batchada"
  double time_limit_ms{1000};       ///< wall-clock budget for one batch
  bool any_degree{false};           ///< allow SP degrees that are not powers of two
  int extra_micro_batches{2};       ///< Blaster tries the minimum count and this many more
  int buckets{16};                  ///< MILP bucket count
  /// Run CBC after the layout search. Off by default: on the Wikipedia protocol a 60 s CBC polish
  /// changed the step time by 0.2% or less (docs/PERFORMANCE.md) at 1000x the planning time.
  bool use_milp{false};
  double milp_min_gap{0.05};        ///< layout-search gap (to its own bound) above which CBC runs
  double tolerance{1e-3};           ///< relative optimality tolerance of the layout search
  int max_layouts{1 << 30};         ///< layouts assigned per micro-batch, best bounds first
  bool validate{true};              ///< run the validator on every plan (a failure is a bug)

  /// Checks the strategy name and ranges; the message names the bad field.
  expected<void> validate_options() const;
};

/// Independent lower bound on the step time of any plan for `lengths`: the micro-batch count
/// forced by memory times beta1, plus the larger of (total device time with each sequence at
/// its cheapest feasible degree) / N and the slowest sequence at its fastest degree.
double step_lower_bound_ms(const cost_model& model, std::span<const std::int64_t> lengths, std::span<const int> degrees);

/// Plans batches for one cluster and profile; keeps the enumerated layouts between batches.
/// Not thread-safe: use one planner per thread.
class planner {
public:
  /// Fails on an invalid profile, cluster or options.
  static expected<planner> create(profile p, cluster c, planner_options opts = {});
  ~planner();
  planner(planner&&) noexcept;
  planner& operator=(planner&&) noexcept;

  /// Plans one batch with the configured strategy. Fails with errc::invalid_argument when a
  /// length is < 1 or a sequence cannot fit even on all N devices (the message names it).
  expected<plan> make_plan(std::span<const std::int64_t> lengths);
  /// Plans one batch with another strategy (same cluster, profile and limits).
  expected<plan> make_plan(std::span<const std::int64_t> lengths, std::string_view strategy);

  const cost_model& model() const;
  const cluster& cluster_shape() const;
  /// Options for the next plans; `any_degree` is fixed when the planner is created.
  planner_options& options();

private:
  struct impl;
  explicit planner(std::unique_ptr<impl> p);
  std::unique_ptr<impl> impl_;
};

/// Creates a planner and plans one batch (for a single call; keep a planner for many batches).
expected<plan> make_plan(std::span<const std::int64_t> lengths, const profile& p, const cluster& c,
                         const planner_options& opts = {});

}  // namespace flexsp::scheduler
