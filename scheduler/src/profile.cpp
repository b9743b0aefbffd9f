#include "flexsp/scheduler/profile.hpp"

#include <cmath>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

namespace flexsp::scheduler {
namespace {

std::map<int, double> a100_bandwidth() {
  return {{2, 119.54}, {4, 104.07}, {8, 96.5}, {16, 10.33}, {32, 5.94}, {64, 4.87}};
}

profile make(std::string name, int hidden, int layers, double a1, double a2, double b1, double act, double params) {
  profile p;
  p.name = std::move(name);
  p.hidden = hidden;
  p.layers = layers;
  p.alpha1 = a1;
  p.alpha2 = a2;
  p.beta1 = b1;
  p.act_per_token_mb = act;
  p.params_b = params;
  p.bandwidth_gbps = a100_bandwidth();
  p.mem_limit_gb = 30;
  p.devices_per_node = 8;
  return p;
}

bool positive(double v) { return std::isfinite(v) && v > 0; }
bool non_negative(double v) { return std::isfinite(v) && v >= 0; }

}  // namespace

expected<void> profile::validate() const {
  if (!non_negative(alpha1)) return make_error(errc::invalid_argument, "profile '{}': alpha1 must be >= 0, got {}", name, alpha1);
  if (!non_negative(alpha2)) return make_error(errc::invalid_argument, "profile '{}': alpha2 must be >= 0, got {}", name, alpha2);
  if (alpha1 == 0 && alpha2 == 0)
    return make_error(errc::invalid_argument, "profile '{}': alpha1 and alpha2 cannot both be 0", name);
  if (!non_negative(beta1)) return make_error(errc::invalid_argument, "profile '{}': beta1 must be >= 0, got {}", name, beta1);
  if (!positive(act_per_token_mb))
    return make_error(errc::invalid_argument, "profile '{}': act_per_token_mb must be > 0, got {}", name, act_per_token_mb);
  if (hidden <= 0) return make_error(errc::invalid_argument, "profile '{}': hidden must be > 0, got {}", name, hidden);
  if (layers <= 0) return make_error(errc::invalid_argument, "profile '{}': layers must be > 0, got {}", name, layers);
  if (!non_negative(params_b)) return make_error(errc::invalid_argument, "profile '{}': params_b must be >= 0, got {}", name, params_b);
  if (state_shards < 0)
    return make_error(errc::invalid_argument, "profile '{}': state_shards must be >= 0, got {}", name, state_shards);
  if (!non_negative(fixed_mb)) return make_error(errc::invalid_argument, "profile '{}': fixed_mb must be >= 0, got {}", name, fixed_mb);
  if (!positive(mem_limit_gb)) return make_error(errc::invalid_argument, "profile '{}': mem_limit_gb must be > 0, got {}", name, mem_limit_gb);
  if (devices_per_node <= 0)
    return make_error(errc::invalid_argument, "profile '{}': devices_per_node must be > 0, got {}", name, devices_per_node);
  if (bandwidth_gbps.empty()) return make_error(errc::invalid_argument, "profile '{}': bandwidth table is empty", name);
  for (const auto& [d, bw] : bandwidth_gbps) {
    if (d < 2) return make_error(errc::invalid_argument, "profile '{}': bandwidth degree must be >= 2, got {}", name, d);
    if (!positive(bw)) return make_error(errc::invalid_argument, "profile '{}': bandwidth[{}] must be > 0, got {}", name, d, bw);
  }
  return {};
}

std::vector<std::string> builtin_profile_names() { return {"gpt-7b", "gpt-13b", "gpt-30b"}; }

expected<profile> builtin_profile(std::string_view name) {
  if (name == "gpt-7b") return make("gpt-7b", 4096, 32, 5.128e-6, 0.1839576, 629.3563, 4.480441895, 7.8498687744);
  if (name == "gpt-13b") return make("gpt-13b", 5120, 40, 9.2852e-6, 0.3060189, 1132.5632, 4.220439453, 14.0315818787);
  if (name == "gpt-30b") return make("gpt-30b", 6656, 60, 15.4262e-6, 0.8035742, 2789.3644, 3.417381836, 32.7153244019);
  return make_error(errc::not_found, "unknown profile '{}' (built-in: gpt-7b, gpt-13b, gpt-30b; or a JSON file)", name);
}

expected<profile> profile_from_json(std::string_view json_text) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(json_text);
  } catch (const nlohmann::json::parse_error& e) {
    return make_error(errc::invalid_argument, "profile JSON does not parse: {}", e.what());
  }
  if (!j.is_object()) return make_error(errc::invalid_argument, "profile JSON must be an object");
  profile p;
  p.name = "custom";
  std::string field;
  try {
    auto number = [&](const char* key, double& out, bool required) -> bool {
      field = key;
      if (!j.contains(key)) return !required;
      out = j.at(key).get<double>();
      return true;
    };
    auto integer = [&](const char* key, int& out, bool required) -> bool {
      field = key;
      if (!j.contains(key)) return !required;
      out = j.at(key).get<int>();
      return true;
    };
    if (j.contains("name")) p.name = j.at("name").get<std::string>();
    for (auto [key, out] : {std::pair{"alpha1", &p.alpha1}, std::pair{"alpha2", &p.alpha2}, std::pair{"beta1", &p.beta1},
                            std::pair{"act_per_token_mb", &p.act_per_token_mb}, std::pair{"params_b", &p.params_b}})
      if (!number(key, *out, true)) return make_error(errc::invalid_argument, "profile JSON lacks required field '{}'", key);
    for (auto [key, out] : {std::pair{"hidden", &p.hidden}, std::pair{"layers", &p.layers}})
      if (!integer(key, *out, true)) return make_error(errc::invalid_argument, "profile JSON lacks required field '{}'", key);
    (void)number("mem_limit_gb", p.mem_limit_gb, false);
    (void)number("fixed_mb", p.fixed_mb, false);
    (void)integer("state_shards", p.state_shards, false);
    (void)integer("devices_per_node", p.devices_per_node, false);
    field = "bandwidth_gbps";
    const char* bw_key = j.contains("bandwidth_gbps") ? "bandwidth_gbps" : "bandwidth";
    if (!j.contains(bw_key)) return make_error(errc::invalid_argument, "profile JSON lacks required field 'bandwidth_gbps'");
    const auto& bw = j.at(bw_key);
    if (!bw.is_object()) return make_error(errc::invalid_argument, "profile field '{}' must map degrees to GB/s", bw_key);
    for (const auto& [k, v] : bw.items()) {
      std::size_t used = 0;
      int degree = 0;
      try {
        degree = std::stoi(k, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used != k.size()) return make_error(errc::invalid_argument, "profile bandwidth key '{}' is not a degree", k);
      p.bandwidth_gbps[degree] = v.get<double>();
    }
  } catch (const nlohmann::json::exception& e) {
    return make_error(errc::invalid_argument, "profile field '{}' has the wrong type: {}", field, e.what());
  }
  FLEXSP_TRY(p.validate());
  return p;
}

std::string profile_to_json(const profile& p) {
  nlohmann::json bw = nlohmann::json::object();
  for (const auto& [d, v] : p.bandwidth_gbps) bw[std::to_string(d)] = v;
  nlohmann::json j{{"name", p.name},         {"alpha1", p.alpha1},
                   {"alpha2", p.alpha2},     {"beta1", p.beta1},
                   {"act_per_token_mb", p.act_per_token_mb},
                   {"hidden", p.hidden},     {"layers", p.layers},
                   {"params_b", p.params_b}, {"bandwidth_gbps", bw},
                   {"mem_limit_gb", p.mem_limit_gb}, {"devices_per_node", p.devices_per_node},
                   {"state_shards", p.state_shards}, {"fixed_mb", p.fixed_mb}};
  return j.dump(2);
}

expected<profile> load_profile(std::string_view name_or_path) {
  if (auto p = builtin_profile(name_or_path)) return p;
  std::ifstream in{std::string{name_or_path}};
  if (!in)
    return make_error(errc::not_found, "profile '{}' is neither built-in (gpt-7b, gpt-13b, gpt-30b) nor a readable file",
                      name_or_path);
  std::stringstream ss;
  ss << in.rdbuf();
  auto p = profile_from_json(ss.str());
  if (!p) return unexpected<error>{std::move(p).error().with_context(fmt::format("profile file {}", name_or_path))};
  return p;
}

}  // namespace flexsp::scheduler
