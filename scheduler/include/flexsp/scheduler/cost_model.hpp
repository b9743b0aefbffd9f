#pragma once
/// \file
/// The FlexSP cost and memory model for sequence-parallel groups (times in ms, memory in MB):
///
///     T(d, S)   = beta1 + sum_s (alpha1 s^2 + alpha2 s) / d + [d > 1] sum_s V(s) / (d bw[d])
///     V(s)      = 4 * 2 * layers * hidden * s * 2 / 2^20          (MB moved by the all-to-alls)
///     Mem(d, S) = act_per_token * sum_s s / d + params_B * 16 * 1024 / N
///
/// A group's time is beta1 plus the sum of its sequences' costs, so the model is linear in the
/// sequences a group holds; the planner relies on that.

#include <cstdint>
#include <span>
#include <vector>

#include "flexsp/core/error.hpp"
#include "flexsp/scheduler/profile.hpp"

namespace flexsp::scheduler {

/// The cluster the planner cuts into groups: N devices, node size K (the last node holds the
/// remainder when K does not divide N).
struct cluster {
  int devices{64};
  int devices_per_node{8};
  expected<void> validate() const;
  int nodes() const { return (devices + devices_per_node - 1) / devices_per_node; }
};

/// Evaluates the cost and memory model of one profile on one cluster.
class cost_model {
public:
  /// `p` must be valid (profile::validate) and `n_devices` >= 1.
  cost_model(profile p, int n_devices);

  const profile& prof() const { return profile_; }
  int devices() const { return n_devices_; }

  /// Model states per device (sharded over state_shards devices, or all), plus fixed_mb, MB.
  double model_states_mb() const { return model_states_mb_; }
  /// Activation tokens one device can hold within the memory limit (may be negative or zero
  /// when model states alone exceed it).
  double tokens_per_device() const { return tokens_per_device_; }
  /// Tokens a group of degree `d` can hold in total.
  std::int64_t token_capacity(int d) const;

  /// All-to-all bandwidth of a degree-`d` group, GB/s.
  double bandwidth_gbps(int d) const;
  /// MB moved by the all-to-alls of one sequence, V(s).
  double comm_volume_mb(std::int64_t s) const;
  /// Compute time of one sequence at degree d: (alpha1 s^2 + alpha2 s) / d.
  double compute_ms(int d, std::int64_t s) const;
  /// All-to-all time of one sequence at degree d (0 for d == 1).
  double comm_ms(int d, std::int64_t s) const;
  /// compute_ms + comm_ms: what one sequence adds to its group's time.
  double seq_cost_ms(int d, std::int64_t s) const { return compute_ms(d, s) + comm_ms(d, s); }
  /// T(d, S): beta1 plus the sequences' costs; 0 for an empty group (it does not run).
  double group_time_ms(int d, std::span<const std::int64_t> lengths) const;
  /// Mem(d, S) for a group holding `tokens` tokens in total.
  double group_memory_mb(int d, std::int64_t tokens) const;

  /// Smallest degree among `degrees` (ascending) whose group holds a sequence of `s` tokens;
  /// 0 when none does.
  int min_degree(std::int64_t s, std::span<const int> degrees) const;

private:
  profile profile_;
  int n_devices_;
  double model_states_mb_;
  double tokens_per_device_;
  double comm_factor_;
  std::vector<double> bw_by_degree_;  // index = degree, 0..N
};

/// Degrees the planner may use on `n` devices: powers of two up to n, or every degree 1..n.
std::vector<int> allowed_degrees(int n, bool any_degree);

}  // namespace flexsp::scheduler
