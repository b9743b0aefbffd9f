#pragma once
/// \file
/// The FlexSP MILP of one micro-batch, solved in-process with COIN-OR CBC.
///
/// Lengths are bucketed (DP bucketing, each sequence costed at its bucket's bound, so a bucketed
/// plan never exceeds memory after mapping back). Variables: per candidate group (degree d,
/// copy i) a binary "used" and integer counts of each bucket's sequences; a continuous makespan C.
/// Minimise C subject to each group's time <= C, its memory, the sum of used degrees <= N and each
/// bucket fully assigned. Identical groups are ordered (used and load non-increasing in i) to break
/// symmetry; C is bounded by the warm start above and by `lower_bound_ms` below.
/// CBC is not thread-safe in every build: calls are serialised inside this module.

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "flexsp/core/error.hpp"
#include "flexsp/scheduler/cost_model.hpp"
#include "flexsp/scheduler/micro_batch.hpp"

namespace flexsp::scheduler {

/// Options of one MILP solve.
struct milp_options {
  std::vector<int> degrees;              ///< candidate degrees (ascending); empty = powers of two
  int buckets{16};                       ///< bucket count of the DP bucketing
  double time_limit_ms{1000};            ///< wall-clock limit of the CBC search
  const mb_solution* warm_start{nullptr}; ///< a feasible solution to start from (may be null)
  double lower_bound_ms{0};              ///< a known lower bound on the makespan (tightens C)
};

/// What CBC reported and the solution mapped back to the micro-batch's sequences.
struct milp_result {
  mb_solution solution;                  ///< de-bucketed, repaired; times on the real lengths
  std::string status;                    ///< "optimal", "time_limit", "infeasible", "no_solution"
  double objective_ms{0};                ///< CBC's makespan on bucket bounds
  double bound_ms{0};                    ///< CBC's bound on the bucketed makespan
  double gap{0};                         ///< 1 - bound / objective
  double solve_ms{0};                    ///< wall-clock time of the CBC call
  double token_error{0};                 ///< of the bucketing used
  int columns{0};
  int rows{0};
};

/// Builds and solves the MILP of one micro-batch on `n_devices` devices. Fails with
/// errc::invalid_argument when a sequence fits no candidate degree.
expected<milp_result> solve_milp(const cost_model& model, std::span<const std::int64_t> lengths,
                                 const milp_options& opts);

}  // namespace flexsp::scheduler
