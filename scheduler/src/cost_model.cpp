#include "flexsp/scheduler/cost_model.hpp"

#include <algorithm>
#include <cmath>

#include "flexsp/core/check.hpp"

namespace flexsp::scheduler {

expected<void> cluster::validate() const {
  if (devices < 1) return make_error(errc::invalid_argument, "devices must be >= 1, got {}", devices);
  if (devices_per_node < 1)
    return make_error(errc::invalid_argument, "devices per node must be >= 1, got {}", devices_per_node);
  return {};
}

cost_model::cost_model(profile p, int n_devices) : profile_{std::move(p)}, n_devices_{n_devices} {
  FLEXSP_EXPECTS(n_devices >= 1, "n_devices = {}", n_devices);
  FLEXSP_EXPECTS(!profile_.bandwidth_gbps.empty(), "profile '{}' has no bandwidth table", profile_.name);
  const int shards = profile_.state_shards > 0 ? profile_.state_shards : n_devices_;
  model_states_mb_ = profile_.params_b * 16.0 * 1024.0 / shards + profile_.fixed_mb;
  tokens_per_device_ = (profile_.mem_limit_gb * 1024.0 - model_states_mb_) / profile_.act_per_token_mb;
  comm_factor_ = 4.0 * 2.0 * profile_.layers * static_cast<double>(profile_.hidden) * 2.0 / (1024.0 * 1024.0);
  bw_by_degree_.assign(static_cast<std::size_t>(n_devices_) + 1, 0.0);
  const auto& table = profile_.bandwidth_gbps;
  for (int d = 2; d <= n_devices_; ++d) {
    auto hi = table.lower_bound(d);
    double bw = 0;
    if (hi != table.end() && hi->first == d) {
      bw = hi->second;
    } else if (hi == table.begin()) {
      bw = hi->second;
    } else if (hi == table.end()) {
      bw = std::prev(hi)->second;
    } else {
      auto lo = std::prev(hi);
      const double t = (std::log2(d) - std::log2(lo->first)) / (std::log2(hi->first) - std::log2(lo->first));
      bw = lo->second + t * (hi->second - lo->second);
    }
    bw_by_degree_[static_cast<std::size_t>(d)] = bw;
  }
}

std::int64_t cost_model::token_capacity(int d) const {
  if (tokens_per_device_ <= 0) return 0;
  return static_cast<std::int64_t>(std::floor(tokens_per_device_ * d + 1e-9));
}

double cost_model::bandwidth_gbps(int d) const {
  FLEXSP_EXPECTS(d >= 1 && d <= n_devices_, "degree {} outside 1..{}", d, n_devices_);
  return bw_by_degree_[static_cast<std::size_t>(d)];
}

double cost_model::comm_volume_mb(std::int64_t s) const { return comm_factor_ * static_cast<double>(s); }

double cost_model::compute_ms(int d, std::int64_t s) const {
  const double x = static_cast<double>(s);
  return (profile_.alpha1 * x * x + profile_.alpha2 * x) / d;
}

double cost_model::comm_ms(int d, std::int64_t s) const {
  if (d <= 1) return 0.0;
  return comm_volume_mb(s) / (d * bw_by_degree_[static_cast<std::size_t>(d)]);
}

double cost_model::group_time_ms(int d, std::span<const std::int64_t> lengths) const {
  if (lengths.empty()) return 0.0;
  double t = profile_.beta1;
  for (auto s : lengths) t += seq_cost_ms(d, s);
  return t;
}

double cost_model::group_memory_mb(int d, std::int64_t tokens) const {
  return profile_.act_per_token_mb * static_cast<double>(tokens) / d + model_states_mb_;
}

int cost_model::min_degree(std::int64_t s, std::span<const int> degrees) const {
  for (int d : degrees)
    if (token_capacity(d) >= s) return d;
  return 0;
}

std::vector<int> allowed_degrees(int n, bool any_degree) {
  std::vector<int> out;
  if (any_degree) {
    for (int d = 1; d <= n; ++d) out.push_back(d);
  } else {
    for (int d = 1; d <= n; d *= 2) out.push_back(d);
  }
  return out;
}

}  // namespace flexsp::scheduler
