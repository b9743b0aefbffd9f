#pragma once
/// \file
/// A training step's plan: micro-batches run one after another; inside a micro-batch, SP groups
/// run side by side on disjoint devices, each holding some of the batch's sequences.

#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "flexsp/core/error.hpp"
#include "flexsp/scheduler/cost_model.hpp"

namespace flexsp::scheduler {

/// One SP group of a micro-batch.
struct sp_group {
  int degree{0};                    ///< SP degree = devices.size()
  std::vector<int> devices;         ///< device ids in 0..N-1
  std::vector<int> sequences;       ///< 0-based indices into the batch's lengths
  double predicted_ms{0};           ///< T(degree, sequences)
  double memory_mb{0};              ///< Mem(degree, sequences) per device
};

/// Groups that run at the same time.
struct micro_batch {
  std::vector<sp_group> groups;
  double predicted_ms{0};           ///< max over groups
};

/// The planner's answer for one batch.
struct plan {
  std::string strategy;             ///< "flexsp", "static:8", "batchada", ...
  int devices{0};
  int devices_per_node{0};
  std::string profile;
  std::vector<micro_batch> micro_batches;
  double predicted_ms{0};           ///< sum over micro-batches
  double lower_bound_ms{0};         ///< independent lower bound on any plan's step time
  double solver_bound_ms{0};        ///< the solver's own bound for its micro-batch split (<= predicted)
  double solve_ms{0};               ///< wall-clock planning time
  std::string status;               ///< "optimal", "time_limit", "feasible" or "heuristic"
  double bucket_token_error{0};     ///< sum(bucket bound - length) / sum(length) of the bucketing
  int milp_solves{0};               ///< CBC solves run for this plan
  double milp_gap{0};               ///< largest gap CBC reported against its own (bucketed) bound
  int uniform_degree{0};            ///< the single degree of static:D and batchada plans; 0 for flexsp

  /// 1 - solver_bound / predicted: how far the plan may be from the best for its split.
  double solver_gap() const;
  /// 1 - lower_bound / predicted: how far the plan may be from the best plan overall.
  double gap() const;
};

/// Recomputes every group's and micro-batch's time and memory, and the plan's total, from the
/// model and the lengths.
void evaluate_plan(plan& p, const cost_model& model, std::span<const std::int64_t> lengths);

/// Options of the validator.
struct validate_options {
  bool require_node_alignment{true};  ///< a group of <= devices_per_node devices sits in one node
  double time_tolerance{1e-6};        ///< relative tolerance on stored predicted times
};

/// Checks a plan against its batch: every sequence exactly once; each group's degree equals its
/// device count and is >= 1; devices are in range and disjoint within a micro-batch; memory fits
/// the limit; stored times match the model. The error names the first violation.
expected<void> validate_plan(const plan& p, const cost_model& model, std::span<const std::int64_t> lengths,
                             const validate_options& opts = {});

/// The plan as JSON text (fields as in `flexsp plan --json`).
std::string plan_to_json(const plan& p, int indent = 2);

/// A human-readable table of the plan.
std::string plan_to_table(const plan& p);

/// The plan as a Gantt-style SVG picture: devices down, predicted time across, each SP group a
/// block on its devices per micro-batch (coloured by degree; a tooltip gives sequences, tokens of
/// `lengths` when given, and predicted time).
std::string plan_to_svg(const plan& p, std::span<const std::int64_t> lengths = {});

/// A bar chart of strategies' total predicted times (the first is the reference of the ratios).
std::string strategies_to_svg(std::span<const std::pair<std::string, double>> totals, const std::string& title);

}  // namespace flexsp::scheduler
