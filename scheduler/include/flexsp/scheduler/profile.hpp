#pragma once
/// \file
/// Cost and memory constants of one model on one device type (a "profile"), as used by the
/// planner's cost model (times in ms, memory in MB, bandwidth in GB/s).

#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "flexsp/core/error.hpp"

namespace flexsp::scheduler {

/// Constants of the FlexSP cost model for one model on one cluster type.
struct profile {
  std::string name;
  double alpha1{0};            ///< ms per token^2 (attention), per sequence, before dividing by the degree
  double alpha2{0};            ///< ms per token (linear layers), before dividing by the degree
  double beta1{0};             ///< ms fixed per group and micro-batch
  double act_per_token_mb{0};  ///< activation memory per token held on a device, MB
  int hidden{0};               ///< model hidden size
  int layers{0};               ///< transformer layers
  double params_b{0};          ///< parameters in billions: model states are 16 bytes each (fp32 parameters,
                               ///< gradients, two AdamW moments), params_b * 16 GB in all
  int state_shards{0};         ///< devices sharing the model states: 0 = all of them (ZeRO-3), 1 = every
                               ///< device holds a full replica
  double fixed_mb{0};          ///< memory per device that grows with neither tokens nor devices, MB
  /// All-to-all bandwidth in GB/s by SP degree (degree 1 has no communication). Degrees not in
  /// the table are interpolated in log2(degree) between their neighbours and clamped at the ends.
  std::map<int, double> bandwidth_gbps;
  double mem_limit_gb{30};     ///< usable device memory, GB (1 GB = 1024 MB)
  int devices_per_node{8};     ///< devices per node the constants were measured on

  /// Checks that every constant is finite and in range; the message names the bad field.
  expected<void> validate() const;
};

/// Names of the built-in profiles (`gpt-7b`, `gpt-13b`, `gpt-30b`: published A100 constants).
std::vector<std::string> builtin_profile_names();

/// A built-in profile by name; `errc::not_found` listing the known names otherwise.
expected<profile> builtin_profile(std::string_view name);

/// Parses a profile from JSON text with the fields of `profile` (bandwidth as an object
/// `{"2": 119.54, ...}`); missing optional fields keep their defaults. Errors name the field.
expected<profile> profile_from_json(std::string_view json_text);

/// Serialises a profile to JSON text that `profile_from_json` reads back.
std::string profile_to_json(const profile& p);

/// A built-in profile name, or else the path of a JSON profile file.
expected<profile> load_profile(std::string_view name_or_path);

}  // namespace flexsp::scheduler
