#include "flexsp/actors/job_spec.hpp"

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>

#include <nlohmann/json.hpp>

#include "flexsp/scheduler/synthetic.hpp"

namespace flexsp::actors {

using json = nlohmann::json;

std::string job_strategy::to_string() const {
  if (kind == strategy_kind::static_degree) return fmt::format("static:{}", degree);
  return std::string{actors::to_string(kind)};
}

expected<job_strategy> job_strategy::parse(std::string_view text) {
  job_strategy s;
  if (text.rfind("static:", 0) == 0) {
    const auto digits = text.substr(7);
    bool ok = !digits.empty() && digits.size() <= 6;
    for (char c : digits) ok = ok && std::isdigit(static_cast<unsigned char>(c));
    if (ok) {
      s.kind = strategy_kind::static_degree;
      s.degree = static_cast<std::uint32_t>(std::stoul(std::string{digits}));
      if (s.degree >= 1) return s;
    }
  } else if (text != "static_degree" && parse_strategy_kind(text, s.kind)) {
    return s;
  }
  return make_error(errc::invalid_argument, "'{}' is not one of flexsp, batchada, static:D (D >= 1)", text);
}

float job_spec::lr_at(std::uint64_t step) const {
  if (warmup == 0 || step + 1 >= warmup) return optimizer.lr;
  return optimizer.lr * static_cast<float>(step + 1) / static_cast<float>(warmup);
}

namespace {

expected<void> check_keys(const json& obj, const std::string& where, const std::set<std::string>& allowed) {
  for (const auto& [key, _] : obj.items())
    if (!allowed.count(key)) {
      std::string list;
      for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
      return make_error(errc::invalid_argument, "{}{}: unknown key (known: {})", where, key, list);
    }
  return {};
}

template <class T>
expected<void> read_uint(const json& obj, const char* key, const std::string& where, T& out) {
  if (!obj.contains(key)) return {};
  const auto& v = obj[key];
  if (!v.is_number_integer() || v.get<std::int64_t>() < 0)
    return make_error(errc::invalid_argument, "{}{}: must be a non-negative integer, got {}", where, key, v.dump());
  const auto u = v.get<std::uint64_t>();
  if (u > static_cast<std::uint64_t>(std::numeric_limits<T>::max()))
    return make_error(errc::invalid_argument, "{}{}: {} is too large", where, key, u);
  out = static_cast<T>(u);
  return {};
}

template <class T>
expected<void> read_number(const json& obj, const char* key, const std::string& where, T& out) {
  if (!obj.contains(key)) return {};
  const auto& v = obj[key];
  if (!v.is_number()) return make_error(errc::invalid_argument, "{}{}: must be a number, got {}", where, key, v.dump());
  out = static_cast<T>(v.get<double>());
  return {};
}

expected<void> read_string(const json& obj, const char* key, const std::string& where, std::string& out) {
  if (!obj.contains(key)) return {};
  const auto& v = obj[key];
  if (!v.is_string()) return make_error(errc::invalid_argument, "{}{}: must be a string, got {}", where, key, v.dump());
  out = v.get<std::string>();
  return {};
}

/// A string naming one value of a closed set (`parse` maps it); with `allow_auto`, "auto"
/// leaves `out` empty.
template <class E, class Out>
expected<void> read_choice(const json& obj, const char* key, const std::string& where, bool (*parse)(std::string_view, E&),
                           bool allow_auto, const char* choices, Out& out) {
  std::string text;
  if (!obj.contains(key)) return {};
  FLEXSP_TRY(read_string(obj, key, where, text));
  if constexpr (std::is_same_v<Out, std::optional<E>>) {
    if (allow_auto && text == "auto") {
      out.reset();
      return {};
    }
  }
  E v{};
  if (!parse(text, v)) return make_error(errc::invalid_argument, "{}{}: '{}' is not one of {}", where, key, text, choices);
  out = v;
  return {};
}

expected<void> read_object(const json& obj, const char* key, const json*& out) {
  out = nullptr;
  if (!obj.contains(key)) return {};
  if (!obj[key].is_object())
    return make_error(errc::invalid_argument, "{}: must be an object, got {}", key, obj[key].dump());
  out = &obj[key];
  return {};
}

}  // namespace

expected<void> validate_job_spec(const job_spec& s) {
  auto bad = [](std::string_view field, const std::string& what) {
    return make_error(errc::invalid_argument, "{}: {}", field, what);
  };
  if (s.name.empty() || s.name.size() > 64) return bad("name", "must have 1 to 64 characters");
  for (char c : s.name)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.'))
      return bad("name", "may only hold letters, digits, '-', '_' and '.'");
  if (s.steps < 1) return bad("steps", "is required and must be at least 1");
  if (s.model.layers < 1 || s.model.layers > 64) return bad("model.layers", "must be in 1..64");
  if (s.model.d_model < 1 || s.model.d_model > 8192) return bad("model.d_model", "must be in 1..8192");
  if (s.model.heads < 1) return bad("model.heads", "must be at least 1");
  if (s.model.d_model % s.model.heads != 0)
    return bad("model.d_model", fmt::format("must be divisible by model.heads ({})", s.model.heads));
  if (s.model.vocab < 2 || s.model.vocab > 1'000'000) return bad("model.vocab", "must be in 2..1000000");
  if (s.data_path.empty() && s.prepared.empty() && s.model.vocab < 256)
    return bad("model.vocab", "must be at least 256 for byte-level text data");
  if (s.model.max_seq < 8 || s.model.max_seq > 1'000'000) return bad("model.max_seq", "must be in 8..1000000");
  if (auto shape = kernel_config(s.model).validate(); !shape) return unexpected<error>{shape.error()};
  if (s.model.attention == attention_precision::bf16 && s.backend == device_kind::cpu)
    return bad("model.attention", "bf16 attention runs on CUDA devices; use backend cuda (or auto)");
  if (s.model.matmul == matmul_precision::tf32 && s.backend == device_kind::cpu)
    return bad("model.matmul", "tf32 GEMMs run on CUDA devices; use backend cuda (or auto)");
  if (s.batch_size < 1 || s.batch_size > 1'000'000) return bad("batch_size", "must be in 1..1000000");
  for (std::size_t i = 0; i < s.prepared.size(); ++i) {
    if (s.prepared[i].dir.empty()) return bad("data.prepared", "is empty");
    if (!(s.prepared[i].weight > 0) || !std::isfinite(s.prepared[i].weight))
      return bad(fmt::format("data.mixture[{}].weight", i), "must be positive");
  }
  if (s.data_path.empty() && s.prepared.empty()) {
    const auto kinds = scheduler::synthetic_kinds();
    if (std::find(kinds.begin(), kinds.end(), s.synthetic) == kinds.end())
      return bad("data.synthetic", fmt::format("unknown generator '{}' (known: {})", s.synthetic, fmt::join(kinds, ", ")));
  }
  if (s.strategy.kind == strategy_kind::static_degree && s.strategy.degree < 1)
    return bad("strategy", "static:D needs a degree D >= 1");
  if (!(s.optimizer.lr > 0) || !std::isfinite(s.optimizer.lr) || s.optimizer.lr > 10) return bad("optimizer.lr", "must be in (0, 10]");
  if (!(s.optimizer.weight_decay >= 0) || s.optimizer.weight_decay > 10)
    return bad("optimizer.weight_decay", "must be in [0, 10]");
  if (!(s.optimizer.max_grad_norm >= 0)) return bad("optimizer.max_grad_norm", "must be >= 0");
  if (s.checkpoints_off && s.checkpoint_every > 0) return bad("checkpoint.every", "is set but checkpoint.dir is \"none\"");
  if (s.collective_timeout_ms < 100) return bad("collective_timeout_ms", "must be at least 100");
  if (!(s.planner_time_limit_ms > 0)) return bad("planner_time_limit_ms", "must be positive");
  if (s.min_devices < 1) return bad("min_devices", "must be at least 1");
  if (!(s.memory_limit_gb >= 0) || s.memory_limit_gb > 1e6) return bad("memory_limit_gb", "must be in [0, 1e6] (0: what the devices report)");
  if (!(s.milp_min_gap >= 0 && s.milp_min_gap <= 1)) return bad("milp_min_gap", "must be in [0, 1]");
  if (s.collectives == collective_library::nccl && s.backend == device_kind::cpu)
    return bad("collectives", "nccl needs backend cuda (or auto)");
  if (s.shard_group > 0 && s.sharding != sharding_mode::hsdp)
    return bad("shard_group", "applies to sharding \"hsdp\" only");
  if (s.shard_group > 4096) return bad("shard_group", "must be at most 4096");
  if (s.fault.max_retries > 10000) return bad("fault.max_retries", "must be at most 10000");
  if (s.fault.membership_grace_ms > 600'000) return bad("fault.membership_grace_ms", "must be at most 600000");
  if (s.fault.device_timeout_ms != 0 && s.fault.device_timeout_ms < 100)
    return bad("fault.device_timeout_ms", "must be 0 (default) or at least 100");
  if (s.fault.join_timeout_ms < 100) return bad("fault.join_timeout_ms", "must be at least 100");
  if (s.fault.checkpoint_timeout_ms < 100) return bad("fault.checkpoint_timeout_ms", "must be at least 100");
  if (s.fault.max_checkpoint_failures > 1000) return bad("fault.max_checkpoint_failures", "must be at most 1000");
  return {};
}

expected<void> check_job_fits(const job_spec& s, const std::vector<node_record>& nodes) {
  std::size_t cpu = 0, cuda = 0;
  for (const auto& n : nodes) {
    if (n.state != node_state::alive) continue;
    for (const auto& d : n.devices) (d.kind == device_kind::cuda ? cuda : cpu) += 1;
  }
  const auto offers = [&]() {
    if (cpu + cuda == 0) return std::string{"the cluster has no devices (start a node: flexsp start --address HEAD)"};
    return fmt::format("the cluster offers {} cpu and {} cuda devices", cpu, cuda);
  };
  // Which kind the job trains on, and which field decides it (as the job controller resolves it).
  std::string field = "backend";
  device_kind kind = device_kind::cpu;
  if (s.backend) {
    kind = *s.backend;
  } else if (s.collectives == collective_library::nccl) {
    kind = device_kind::cuda;
    field = "collectives";
  } else if (const auto why = cuda_only_reason(s.model); !why.empty()) {
    kind = device_kind::cuda;
    field = s.model.attention == attention_precision::bf16 ? "model.attention" : "model.matmul";
  } else {
    kind = cuda > 0 ? device_kind::cuda : device_kind::cpu;
    field = "";
  }
  const auto have = kind == device_kind::cuda ? cuda : cpu;
  if (have == 0) {
    if (field.empty()) return make_error(errc::invalid_argument, "{}", offers());
    const std::string what = field == "backend"       ? fmt::format("no {} devices to train on", to_string(kind))
                             : field == "collectives" ? std::string{"nccl needs cuda devices"}
                                                      : cuda_only_reason(s.model);
    return make_error(errc::invalid_argument, "{}: {}; {}", field, what, offers());
  }
  if (s.min_devices > have)
    return make_error(errc::invalid_argument, "min_devices: {} {} devices wanted, but {}", s.min_devices, to_string(kind),
                      offers());
  if (s.strategy.kind == strategy_kind::static_degree && s.strategy.degree > have)
    return make_error(errc::invalid_argument, "strategy: {} puts every sequence on {} {} devices, but {}",
                      s.strategy.to_string(), s.strategy.degree, to_string(kind), offers());
  return {};
}

expected<void> check_checkpoint_dir(const std::string& dir) {
  namespace fs = std::filesystem;
  if (dir.empty()) return {};
  const fs::path p{dir};
  if (p.is_relative())
    return make_error(errc::invalid_argument, "checkpoint.dir: '{}' is relative; give an absolute path (the job runs "
                      "on the head and the nodes, not in the submitter's directory)", dir);
  std::error_code ec;
  fs::create_directories(p, ec);
  if (ec) return make_error(errc::invalid_argument, "checkpoint.dir: cannot create {}: {}", dir, ec.message());
  const auto probe = p / fmt::format(".flexsp-write-check-{}", ::getpid());
  {
    std::ofstream out{probe, std::ios::trunc};
    out << "ok\n";
    out.flush();
    if (!out) {
      fs::remove(probe, ec);
      return make_error(errc::invalid_argument, "checkpoint.dir: cannot write files in {}", dir);
    }
  }
  fs::remove(probe, ec);
  return {};
}

expected<job_spec> parse_job_spec(std::string_view text) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::parse_error& e) {
    return make_error(errc::invalid_argument, "job spec is not valid JSON: {}", e.what());
  }
  if (!j.is_object()) return make_error(errc::invalid_argument, "job spec must be a JSON object");
  FLEXSP_TRY(check_keys(j, "", {"name", "model", "data", "batch_size", "steps", "strategy", "seed", "optimizer",
                                "checkpoint", "calibrate", "collective_timeout_ms", "planner_time_limit_ms",
                                "min_devices", "backend", "collectives", "milp", "milp_min_gap", "fault",
                                "memory_limit_gb", "sharding", "shard_group"}));
  job_spec s;
  if (!j.contains("steps")) return make_error(errc::invalid_argument, "steps: is required");
  FLEXSP_TRY(read_string(j, "name", "", s.name));
  FLEXSP_TRY(read_uint(j, "steps", "", s.steps));
  FLEXSP_TRY(read_uint(j, "batch_size", "", s.batch_size));
  if (j.contains("strategy")) {
    std::string text;
    FLEXSP_TRY(read_string(j, "strategy", "", text));
    auto parsed = job_strategy::parse(text);
    if (!parsed) return make_error(errc::invalid_argument, "strategy: {}", parsed.error().message());
    s.strategy = *parsed;
  }
  FLEXSP_TRY(read_uint(j, "seed", "", s.seed));
  FLEXSP_TRY(read_uint(j, "collective_timeout_ms", "", s.collective_timeout_ms));
  FLEXSP_TRY(read_number(j, "planner_time_limit_ms", "", s.planner_time_limit_ms));
  FLEXSP_TRY(read_number(j, "milp_min_gap", "", s.milp_min_gap));
  FLEXSP_TRY(read_uint(j, "min_devices", "", s.min_devices));
  FLEXSP_TRY(read_number(j, "memory_limit_gb", "", s.memory_limit_gb));
  FLEXSP_TRY(read_choice(j, "backend", "", parse_device_kind, true, "auto, cpu, cuda", s.backend));
  FLEXSP_TRY(read_choice(j, "collectives", "", parse_collective_library, true, "auto, gloo, nccl", s.collectives));
  FLEXSP_TRY(read_choice(j, "sharding", "", parse_sharding_mode, false, "replicate, zero3, hsdp", s.sharding));
  FLEXSP_TRY(read_uint(j, "shard_group", "", s.shard_group));
  if (j.contains("milp")) {
    if (!j["milp"].is_boolean()) return make_error(errc::invalid_argument, "milp: must be true or false");
    s.milp = j["milp"].get<bool>();
  }
  if (j.contains("calibrate")) {
    if (!j["calibrate"].is_boolean()) return make_error(errc::invalid_argument, "calibrate: must be true or false");
    s.calibrate = j["calibrate"].get<bool>();
  }
  const json* o = nullptr;
  FLEXSP_TRY(read_object(j, "model", o));
  if (o) {
    FLEXSP_TRY(check_keys(*o, "model.", {"preset", "family", "layers", "d_model", "heads", "kv_heads", "ffn", "vocab",
                                         "max_seq", "rope_theta", "norm_eps", "attention", "matmul"}));
    // A preset first; explicit keys then change what it set.
    std::string preset;
    FLEXSP_TRY(read_string(*o, "preset", "model.", preset));
    if (!preset.empty()) FLEXSP_TRY(apply_model_preset(preset, s.model));
    FLEXSP_TRY(read_choice(*o, "family", "model.", parse_model_family, false, "gpt2, llama", s.model.family));
    FLEXSP_TRY(read_uint(*o, "kv_heads", "model.", s.model.kv_heads));
    FLEXSP_TRY(read_uint(*o, "ffn", "model.", s.model.ffn));
    FLEXSP_TRY(read_number(*o, "rope_theta", "model.", s.model.rope_theta));
    FLEXSP_TRY(read_number(*o, "norm_eps", "model.", s.model.norm_eps));
    FLEXSP_TRY(read_uint(*o, "layers", "model.", s.model.layers));
    FLEXSP_TRY(read_uint(*o, "d_model", "model.", s.model.d_model));
    FLEXSP_TRY(read_uint(*o, "heads", "model.", s.model.heads));
    FLEXSP_TRY(read_uint(*o, "vocab", "model.", s.model.vocab));
    FLEXSP_TRY(read_uint(*o, "max_seq", "model.", s.model.max_seq));
    FLEXSP_TRY(read_choice(*o, "attention", "model.", parse_attention_precision, false, "fp32, bf16", s.model.attention));
    FLEXSP_TRY(read_choice(*o, "matmul", "model.", parse_matmul_precision, false, "fp32, tf32", s.model.matmul));
  }
  FLEXSP_TRY(read_object(j, "data", o));
  if (o) {
    FLEXSP_TRY(check_keys(*o, "data.", {"path", "synthetic", "prepared", "mixture", "long_documents"}));
    const int sources = static_cast<int>(o->contains("path")) + static_cast<int>(o->contains("synthetic")) +
                        static_cast<int>(o->contains("prepared")) + static_cast<int>(o->contains("mixture"));
    if (sources > 1)
      return make_error(errc::invalid_argument, "data: give one of path, synthetic, prepared and mixture");
    FLEXSP_TRY(read_string(*o, "path", "data.", s.data_path));
    FLEXSP_TRY(read_string(*o, "synthetic", "data.", s.synthetic));
    if (o->contains("path") && s.data_path.empty()) return make_error(errc::invalid_argument, "data.path: is empty");
    if (o->contains("prepared")) {
      job_spec::prepared_data p;
      FLEXSP_TRY(read_string(*o, "prepared", "data.", p.dir));
      s.prepared.push_back(p);
    }
    if (o->contains("mixture")) {
      const auto& m = (*o)["mixture"];
      if (!m.is_array() || m.empty())
        return make_error(errc::invalid_argument, "data.mixture: must be a non-empty list of {{\"prepared\": DIR, \"weight\": W}}");
      for (std::size_t i = 0; i < m.size(); ++i) {
        const auto where = fmt::format("data.mixture[{}].", i);
        if (!m[i].is_object()) return make_error(errc::invalid_argument, "{}: must be an object", where);
        FLEXSP_TRY(check_keys(m[i], where, {"prepared", "weight"}));
        job_spec::prepared_data p;
        if (!m[i].contains("prepared")) return make_error(errc::invalid_argument, "{}prepared: is required", where);
        FLEXSP_TRY(read_string(m[i], "prepared", where, p.dir));
        FLEXSP_TRY(read_number(m[i], "weight", where, p.weight));
        s.prepared.push_back(p);
      }
    }
    if (o->contains("long_documents")) {
      std::string policy;
      FLEXSP_TRY(read_string(*o, "long_documents", "data.", policy));
      if (policy != "split" && policy != "drop")
        return make_error(errc::invalid_argument, "data.long_documents: '{}' is not one of split, drop", policy);
      s.drop_long_documents = policy == "drop";
    }
  }
  FLEXSP_TRY(read_object(j, "optimizer", o));
  if (o) {
    FLEXSP_TRY(check_keys(*o, "optimizer.", {"lr", "weight_decay", "warmup", "beta1", "beta2", "max_grad_norm"}));
    FLEXSP_TRY(read_number(*o, "lr", "optimizer.", s.optimizer.lr));
    FLEXSP_TRY(read_number(*o, "weight_decay", "optimizer.", s.optimizer.weight_decay));
    FLEXSP_TRY(read_uint(*o, "warmup", "optimizer.", s.warmup));
    FLEXSP_TRY(read_number(*o, "beta1", "optimizer.", s.optimizer.beta1));
    FLEXSP_TRY(read_number(*o, "beta2", "optimizer.", s.optimizer.beta2));
    FLEXSP_TRY(read_number(*o, "max_grad_norm", "optimizer.", s.optimizer.max_grad_norm));
  }
  FLEXSP_TRY(read_object(j, "checkpoint", o));
  if (o) {
    FLEXSP_TRY(check_keys(*o, "checkpoint.", {"dir", "every", "keep"}));
    FLEXSP_TRY(read_string(*o, "dir", "checkpoint.", s.checkpoint_dir));
    FLEXSP_TRY(read_uint(*o, "every", "checkpoint.", s.checkpoint_every));
    FLEXSP_TRY(read_uint(*o, "keep", "checkpoint.", s.checkpoint_keep));
    if (s.checkpoint_dir == "none") {
      s.checkpoint_dir.clear();
      s.checkpoints_off = true;
    }
  }
  FLEXSP_TRY(read_object(j, "fault", o));
  if (o) {
    FLEXSP_TRY(check_keys(*o, "fault.", {"max_retries", "membership_grace_ms", "device_timeout_ms", "join_timeout_ms",
                                         "device_wait_ms", "checkpoint_timeout_ms", "max_checkpoint_failures"}));
    FLEXSP_TRY(read_uint(*o, "max_retries", "fault.", s.fault.max_retries));
    FLEXSP_TRY(read_uint(*o, "membership_grace_ms", "fault.", s.fault.membership_grace_ms));
    FLEXSP_TRY(read_uint(*o, "device_timeout_ms", "fault.", s.fault.device_timeout_ms));
    FLEXSP_TRY(read_uint(*o, "join_timeout_ms", "fault.", s.fault.join_timeout_ms));
    FLEXSP_TRY(read_uint(*o, "device_wait_ms", "fault.", s.fault.device_wait_ms));
    FLEXSP_TRY(read_uint(*o, "checkpoint_timeout_ms", "fault.", s.fault.checkpoint_timeout_ms));
    FLEXSP_TRY(read_uint(*o, "max_checkpoint_failures", "fault.", s.fault.max_checkpoint_failures));
  }
  FLEXSP_TRY(validate_job_spec(s));
  return s;
}

std::string job_spec_to_json(const job_spec& s) {
  json j;
  j["name"] = s.name;
  j["steps"] = s.steps;
  j["batch_size"] = s.batch_size;
  j["strategy"] = s.strategy.to_string();
  j["seed"] = s.seed;
  j["model"] = {{"family", to_string(s.model.family)}, {"layers", s.model.layers},    {"d_model", s.model.d_model},
                {"heads", s.model.heads},                {"kv_heads", s.model.kv_heads}, {"ffn", s.model.ffn},
                {"vocab", s.model.vocab},                {"max_seq", s.model.max_seq},   {"rope_theta", s.model.rope_theta},
                {"norm_eps", s.model.norm_eps},          {"attention", to_string(s.model.attention)},
                {"matmul", to_string(s.model.matmul)}};
  if (!s.prepared.empty()) {
    auto m = nlohmann::json::array();
    for (const auto& p : s.prepared) m.push_back({{"prepared", p.dir}, {"weight", p.weight}});
    j["data"] = {{"mixture", m}, {"long_documents", s.drop_long_documents ? "drop" : "split"}};
  } else if (s.data_path.empty()) {
    j["data"] = {{"synthetic", s.synthetic}};
  } else {
    j["data"] = {{"path", s.data_path}};
  }
  j["optimizer"] = {{"lr", s.optimizer.lr}, {"weight_decay", s.optimizer.weight_decay}, {"warmup", s.warmup},
                    {"beta1", s.optimizer.beta1}, {"beta2", s.optimizer.beta2},
                    {"max_grad_norm", s.optimizer.max_grad_norm}};
  j["checkpoint"] = {{"dir", s.checkpoints_off ? std::string{"none"} : s.checkpoint_dir},
                     {"every", s.checkpoint_every},
                     {"keep", s.checkpoint_keep}};
  j["calibrate"] = s.calibrate;
  j["collective_timeout_ms"] = s.collective_timeout_ms;
  j["planner_time_limit_ms"] = s.planner_time_limit_ms;
  j["min_devices"] = s.min_devices;
  j["memory_limit_gb"] = s.memory_limit_gb;
  j["backend"] = s.backend ? std::string{to_string(*s.backend)} : "auto";
  j["collectives"] = s.collectives ? std::string{to_string(*s.collectives)} : "auto";
  j["sharding"] = std::string{to_string(s.sharding)};
  j["shard_group"] = s.shard_group;
  j["milp"] = s.milp;
  j["milp_min_gap"] = s.milp_min_gap;
  j["fault"] = {{"max_retries", s.fault.max_retries},         {"membership_grace_ms", s.fault.membership_grace_ms},
                {"device_timeout_ms", s.fault.device_timeout_ms}, {"join_timeout_ms", s.fault.join_timeout_ms},
                {"device_wait_ms", s.fault.device_wait_ms},   {"checkpoint_timeout_ms", s.fault.checkpoint_timeout_ms},
                {"max_checkpoint_failures", s.fault.max_checkpoint_failures}};
  return j.dump();
}

const std::vector<model_preset>& model_presets() {
  static const std::vector<model_preset> presets{
      {"gpt2-tiny", "GPT-2 family, 2 layers, d_model 64, 4 heads (the default)"},
      {"gpt2-small", "GPT-2 family, 12 layers, d_model 768, 12 heads (GPT-2's 124M body)"},
      {"llama-tiny", "LLaMA family, 2 layers, d_model 64, 4 heads, 2 K/V heads, SwiGLU 176"},
      {"llama-small", "LLaMA family, 12 layers, d_model 768, 12 heads, 4 K/V heads, SwiGLU 2048"},
  };
  return presets;
}

expected<void> apply_model_preset(std::string_view name, model_shape& m) {
  auto set = [&](model_family family, std::uint32_t layers, std::uint32_t d, std::uint32_t heads, std::uint32_t kv,
                 std::uint32_t ffn) {
    m.family = family;
    m.layers = layers;
    m.d_model = d;
    m.heads = heads;
    m.kv_heads = kv;
    m.ffn = ffn;
    return expected<void>{};
  };
  if (name == "gpt2-tiny") return set(model_family::gpt2, 2, 64, 4, 0, 0);
  if (name == "gpt2-small") return set(model_family::gpt2, 12, 768, 12, 0, 0);
  if (name == "llama-tiny") return set(model_family::llama, 2, 64, 4, 2, 176);
  if (name == "llama-small") return set(model_family::llama, 12, 768, 12, 4, 2048);
  std::string known;
  for (const auto& p : model_presets()) known += (known.empty() ? "" : ", ") + std::string{p.name};
  return make_error(errc::invalid_argument, "model.preset: unknown preset '{}' (known: {})", name, known);
}

kernels::model_config kernel_config(const model_shape& shape) {
  kernels::model_config c;
  c.family = shape.family == model_family::llama ? kernels::model_family::llama : kernels::model_family::gpt2;
  c.layers = shape.layers;
  c.d_model = shape.d_model;
  c.heads = shape.heads;
  c.vocab = shape.vocab;
  c.max_positions = shape.max_seq;
  c.kv_heads = shape.kv_heads;
  c.ffn = shape.ffn;
  c.rope_theta = shape.rope_theta;
  c.norm_eps = shape.norm_eps;
  return c;
}

}  // namespace flexsp::actors
