#include "flexsp/kernels/hf_interchange.hpp"

#include <fstream>
#include <sstream>

#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

namespace flexsp::kernels {

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

std::size_t sz(std::int64_t v) { return static_cast<std::size_t>(v); }

/// One Hugging Face tensor made from a flexsp parameter: columns [first, last) of its [in, out]
/// matrix (all of it for vectors and whole matrices), transposed or not.
struct piece {
  std::string hf;
  bool transpose = false;
  std::int64_t first = 0, last = -1;  // -1: every column
};

/// The Hugging Face tensors of flexsp parameter `name` (see the file comment of the header).
std::vector<piece> pieces_of(const model_config& c, const std::string& name) {
  const std::int64_t D = c.d_model, KV = c.kv() * c.head_dim(), F = c.ffn_dim();
  // "h3.attn.w_o" -> layer 3, rest "attn.w_o"
  std::string layer, rest = name;
  if (name.size() > 1 && name[0] == 'h' && std::isdigit(static_cast<unsigned char>(name[1]))) {
    const auto dot = name.find('.');
    layer = name.substr(1, dot - 1);
    rest = name.substr(dot + 1);
  }
  if (c.family == model_family::gpt2) {
    if (layer.empty()) {
      if (rest == "wte") return {{"transformer.wte.weight"}};
      if (rest == "wpe") return {{"transformer.wpe.weight"}};
      if (rest == "ln_f.g") return {{"transformer.ln_f.weight"}};
      if (rest == "ln_f.b") return {{"transformer.ln_f.bias"}};
      return {};
    }
    const std::string p = "transformer.h." + layer + ".";
    static const std::vector<std::pair<std::string, std::string>> names{
        {"ln1.g", "ln_1.weight"},          {"ln1.b", "ln_1.bias"},         {"attn.w_qkv", "attn.c_attn.weight"},
        {"attn.b_qkv", "attn.c_attn.bias"}, {"attn.w_o", "attn.c_proj.weight"}, {"attn.b_o", "attn.c_proj.bias"},
        {"ln2.g", "ln_2.weight"},          {"ln2.b", "ln_2.bias"},         {"mlp.w_fc", "mlp.c_fc.weight"},
        {"mlp.b_fc", "mlp.c_fc.bias"},     {"mlp.w_proj", "mlp.c_proj.weight"}, {"mlp.b_proj", "mlp.c_proj.bias"}};
    for (const auto& [ours, theirs] : names)
      if (rest == ours) return {{p + theirs}};
    return {};
  }
  if (layer.empty()) {
    if (rest == "tok_embeddings") return {{"model.embed_tokens.weight"}};
    if (rest == "norm_f.g") return {{"model.norm.weight"}};
    if (rest == "lm_head") return {{"lm_head.weight"}};
    return {};
  }
  const std::string p = "model.layers." + layer + ".";
  if (rest == "attn_norm.g") return {{p + "input_layernorm.weight"}};
  if (rest == "mlp_norm.g") return {{p + "post_attention_layernorm.weight"}};
  if (rest == "attn.w_qkv")
    return {{p + "self_attn.q_proj.weight", true, 0, D},
            {p + "self_attn.k_proj.weight", true, D, D + KV},
            {p + "self_attn.v_proj.weight", true, D + KV, D + 2 * KV}};
  if (rest == "attn.w_o") return {{p + "self_attn.o_proj.weight", true}};
  if (rest == "mlp.w_gate_up") return {{p + "mlp.gate_proj.weight", true, 0, F}, {p + "mlp.up_proj.weight", true, F, 2 * F}};
  if (rest == "mlp.w_down") return {{p + "mlp.down_proj.weight", true}};
  return {};
}

/// The shape a piece has on the Hugging Face side.
std::vector<std::int64_t> hf_shape(const parameter_info& p, const piece& pc) {
  if (p.shape.size() != 2) return {p.shape.begin(), p.shape.end()};
  const std::int64_t rows = p.shape[0], cols = p.shape[1];
  const std::int64_t first = pc.first, last = pc.last < 0 ? cols : pc.last;
  return pc.transpose ? std::vector<std::int64_t>{last - first, rows} : std::vector<std::int64_t>{rows, last - first};
}

/// An fp32 setting as the decimal a person wrote (1e-05, not 9.999999747378752e-06).
double short_float(float v) { return std::stod(fmt::format("{:.7g}", v)); }

json config_json(const model_config& c) {
  if (c.family == model_family::gpt2)
    return {{"architectures", {"GPT2LMHeadModel"}},
            {"model_type", "gpt2"},
            {"n_embd", c.d_model},
            {"n_head", c.heads},
            {"n_layer", c.layers},
            {"n_positions", c.max_positions},
            {"n_ctx", c.max_positions},
            {"n_inner", nullptr},
            {"vocab_size", c.vocab},
            {"activation_function", "gelu_new"},
            {"layer_norm_epsilon", kLayerNormEps},
            {"resid_pdrop", 0.0},
            {"embd_pdrop", 0.0},
            {"attn_pdrop", 0.0},
            {"tie_word_embeddings", true},
            {"torch_dtype", "float32"}};
  return {{"architectures", {"LlamaForCausalLM"}},
          {"model_type", "llama"},
          {"hidden_size", c.d_model},
          {"intermediate_size", c.ffn_dim()},
          {"num_attention_heads", c.heads},
          {"num_key_value_heads", c.kv()},
          {"head_dim", c.head_dim()},
          {"num_hidden_layers", c.layers},
          {"vocab_size", c.vocab},
          {"max_position_embeddings", c.max_positions},
          {"rms_norm_eps", short_float(c.norm_eps)},
          {"rope_theta", short_float(c.rope_theta)},
          {"rope_scaling", nullptr},
          {"hidden_act", "silu"},
          {"attention_bias", false},
          {"mlp_bias", false},
          {"tie_word_embeddings", false},
          {"torch_dtype", "float32"}};
}

template <class T>
expected<T> need(const json& j, const char* key, const std::string& where) {
  if (!j.contains(key) || j[key].is_null())
    return make_error(errc::invalid_argument, "{}: config.json lacks \"{}\"", where, key);
  try {
    return j[key].get<T>();
  } catch (const json::exception&) {
    return make_error(errc::invalid_argument, "{}: config.json \"{}\" has the wrong type", where, key);
  }
}

expected<model_config> config_from(const json& j, const std::string& where) {
  const std::string type = j.value("model_type", std::string{});
  model_config c;
  if (type == "gpt2") {
    c.family = model_family::gpt2;
    FLEXSP_TRY_ASSIGN(c.d_model, need<std::int64_t>(j, "n_embd", where));
    FLEXSP_TRY_ASSIGN(c.heads, need<std::int64_t>(j, "n_head", where));
    FLEXSP_TRY_ASSIGN(c.layers, need<std::int64_t>(j, "n_layer", where));
    FLEXSP_TRY_ASSIGN(c.max_positions, need<std::int64_t>(j, "n_positions", where));
    FLEXSP_TRY_ASSIGN(c.vocab, need<std::int64_t>(j, "vocab_size", where));
    const auto act = j.value("activation_function", std::string{"gelu_new"});
    if (act != "gelu_new" && act != "gelu_pytorch_tanh")
      return make_error(errc::invalid_argument, "{}: activation_function {} (the gpt2 family trains the tanh GELU)",
                        where, act);
    if (j.contains("n_inner") && !j["n_inner"].is_null() && j["n_inner"].get<std::int64_t>() != 4 * c.d_model)
      return make_error(errc::invalid_argument, "{}: n_inner {} (the gpt2 family's MLP is 4 x n_embd)", where,
                        j["n_inner"].dump());
    if (std::abs(j.value("layer_norm_epsilon", kLayerNormEps) - kLayerNormEps) > 1e-9)
      return make_error(errc::invalid_argument, "{}: layer_norm_epsilon {} (the gpt2 family uses {})", where,
                        j["layer_norm_epsilon"].dump(), kLayerNormEps);
  } else if (type == "llama") {
    c.family = model_family::llama;
    FLEXSP_TRY_ASSIGN(c.d_model, need<std::int64_t>(j, "hidden_size", where));
    FLEXSP_TRY_ASSIGN(c.ffn, need<std::int64_t>(j, "intermediate_size", where));
    FLEXSP_TRY_ASSIGN(c.heads, need<std::int64_t>(j, "num_attention_heads", where));
    c.kv_heads = j.value("num_key_value_heads", c.heads);
    FLEXSP_TRY_ASSIGN(c.layers, need<std::int64_t>(j, "num_hidden_layers", where));
    FLEXSP_TRY_ASSIGN(c.vocab, need<std::int64_t>(j, "vocab_size", where));
    FLEXSP_TRY_ASSIGN(c.max_positions, need<std::int64_t>(j, "max_position_embeddings", where));
    c.norm_eps = j.value("rms_norm_eps", 1e-6f);
    c.rope_theta = j.value("rope_theta", 10000.0f);
    if (j.contains("rope_scaling") && !j["rope_scaling"].is_null())
      return make_error(errc::invalid_argument, "{}: rope_scaling {} is not supported", where, j["rope_scaling"].dump());
    if (j.value("hidden_act", std::string{"silu"}) != "silu")
      return make_error(errc::invalid_argument, "{}: hidden_act {} (the llama family trains SwiGLU)", where,
                        j["hidden_act"].dump());
    if (j.value("attention_bias", false) || j.value("mlp_bias", false))
      return make_error(errc::invalid_argument, "{}: biases are not part of the llama family", where);
    if (j.contains("head_dim") && !j["head_dim"].is_null() && c.heads > 0 &&
        j["head_dim"].get<std::int64_t>() != c.d_model / c.heads)
      return make_error(errc::invalid_argument, "{}: head_dim {} is not hidden_size / num_attention_heads", where,
                        j["head_dim"].dump());
  } else {
    return make_error(errc::invalid_argument, "{}: model_type '{}' (gpt2 and llama are trained here)", where, type);
  }
  FLEXSP_TRY(c.validate());
  return c;
}

}  // namespace

expected<void> export_hugging_face(const model_config& config, std::span<const float> params, const fs::path& dir,
                                   st_dtype type) {
  FLEXSP_TRY(config.validate());
  if (static_cast<std::int64_t>(params.size()) != config.parameter_count())
    return make_error(errc::invalid_argument, "export: {} parameters for a model of {}", params.size(),
                      config.parameter_count());
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return make_error(errc::io, "cannot create {}: {}", dir.string(), ec.message());
  st_file file;
  file.metadata["format"] = "pt";
  for (const auto& p : parameter_table(config)) {
    const auto list = pieces_of(config, p.name);
    if (list.empty()) return make_error(errc::failed, "export: no Hugging Face name for parameter {}", p.name);
    for (const auto& pc : list) {
      st_tensor t;
      t.shape = hf_shape(p, pc);
      const float* src = params.data() + p.offset;
      if (p.shape.size() != 2) {
        t.values.assign(src, src + numel_of(p.shape));
      } else {
        const std::int64_t rows = p.shape[0], cols = p.shape[1];
        const std::int64_t first = pc.first, last = pc.last < 0 ? cols : pc.last;
        t.values.resize(sz(rows * (last - first)));
        for (std::int64_t r = 0; r < rows; ++r)
          for (std::int64_t col = first; col < last; ++col) {
            const float v = src[r * cols + col];
            if (pc.transpose)
              t.values[sz((col - first) * rows + r)] = v;
            else
              t.values[sz(r * (last - first) + (col - first))] = v;
          }
      }
      file.tensors.emplace(pc.hf, std::move(t));
    }
  }
  FLEXSP_TRY(write_safetensors(dir / "model.safetensors", file, type));
  auto cfg = config_json(config);
  cfg["torch_dtype"] = type == st_dtype::bf16 ? "bfloat16" : "float32";
  std::ofstream out{dir / "config.json", std::ios::trunc};
  out << cfg.dump(2) << "\n";
  if (!out) return make_error(errc::io, "cannot write {}", (dir / "config.json").string());
  return {};
}

expected<imported_model> import_hugging_face(const fs::path& dir) {
  const auto where = dir.string();
  std::ifstream in{dir / "config.json"};
  if (!in) return make_error(errc::not_found, "{}: no config.json", where);
  std::stringstream ss;
  ss << in.rdbuf();
  auto j = json::parse(ss.str(), nullptr, false);
  if (!j.is_object()) return make_error(errc::invalid_argument, "{}: config.json is not a JSON object", where);
  imported_model out;
  FLEXSP_TRY_ASSIGN(out.config, config_from(j, where));
  FLEXSP_TRY_ASSIGN(auto file, read_safetensors(dir / "model.safetensors"));
  const bool tied = j.value("tie_word_embeddings", out.config.family == model_family::gpt2);
  out.params.assign(sz(out.config.parameter_count()), 0.0f);
  for (const auto& p : parameter_table(out.config)) {
    for (const auto& pc : pieces_of(out.config, p.name)) {
      auto it = file.tensors.find(pc.hf);
      if (it == file.tensors.end() && pc.hf == "lm_head.weight" && tied) it = file.tensors.find("model.embed_tokens.weight");
      if (it == file.tensors.end())
        return make_error(errc::invalid_argument, "{}: model.safetensors has no tensor {}", where, pc.hf);
      const auto want = hf_shape(p, pc);
      if (it->second.shape != want)
        return make_error(errc::invalid_argument, "{}: tensor {} has shape [{}], expected [{}]", where, pc.hf,
                          fmt::join(it->second.shape, ", "), fmt::join(want, ", "));
      const auto& v = it->second.values;
      float* dst = out.params.data() + p.offset;
      if (p.shape.size() != 2) {
        std::copy(v.begin(), v.end(), dst);
        continue;
      }
      const std::int64_t rows = p.shape[0], cols = p.shape[1];
      const std::int64_t first = pc.first, last = pc.last < 0 ? cols : pc.last;
      for (std::int64_t r = 0; r < rows; ++r)
        for (std::int64_t col = first; col < last; ++col)
          dst[r * cols + col] =
              pc.transpose ? v[sz((col - first) * rows + r)] : v[sz(r * (last - first) + (col - first))];
    }
  }
  return out;
}

}  // namespace flexsp::kernels
