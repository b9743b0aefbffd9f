#include "flexsp/kernels/model.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <optional>
#include <random>
#include <vector>

#include "flexsp/core/fnv.hpp"
#include "flexsp/kernels/attention.hpp"

namespace flexsp::kernels {

namespace {
std::size_t sz(std::int64_t v) { return static_cast<std::size_t>(v); }

// Box-Muller on mt19937_64 so initialisation is identical across standard libraries.
class normal_source {
public:
  explicit normal_source(std::uint64_t seed) : rng_{seed} {}
  float next(float stddev) {
    if (have_spare_) {
      have_spare_ = false;
      return spare_ * stddev;
    }
    constexpr double kTwoPi = 6.283185307179586;
    const double u1 = (static_cast<double>(rng_() >> 11) + 1.0) * 0x1.0p-53;
    const double u2 = static_cast<double>(rng_() >> 11) * 0x1.0p-53;
    const double r = std::sqrt(-2.0 * std::log(u1));
    spare_ = static_cast<float>(r * std::sin(kTwoPi * u2));
    have_spare_ = true;
    return static_cast<float>(r * std::cos(kTwoPi * u2)) * stddev;
  }

private:
  std::mt19937_64 rng_;
  float spare_ = 0;
  bool have_spare_ = false;
};
// Per-layer activations kept for the backward pass (one slot each, see slot_of).
enum layer_slot : std::size_t { x_in, ln1, ln1_mean, ln1_rstd, qkv, qkv_full, qkv_h, att_h, lse, att, x_mid, ln2,
                                ln2_mean, ln2_rstd, fc, act, qkv_b, att_b, kLayerSlots };
// Buffers of one step that are not per layer.
enum step_slot : std::size_t { tokens, positions, targets, x, lnf, lnf_mean, lnf_rstd, logits, dlogits, dlnf, dx, dact,
                               dfc, dln, dtmp, datt, datt_h, dqkv_h, dqkv, attn_fwd_ws, attn_bwd_ws, xsend, xrecv,
                               datt_b, dqkv_b, dproj, dkv_acc, dkv_part,
                               // sharded models: gathered units (outer two, two layers in turn),
                               // full gradients of a unit, one chunk of reduced gradients
                               shard_before, shard_after, shard_layer0, shard_layer1, shard_grad_before,
                               shard_grad_after, shard_grad_layer, shard_reduced, kStepSlots };

/// No such parameter (a bias of the llama family).
constexpr std::size_t kNone = ~std::size_t{0};
/// Where a layer's parameters are in the table.
struct layer_index {
  std::size_t norm1_g = kNone, norm1_b = kNone, w_qkv = kNone, b_qkv = kNone, w_o = kNone, b_o = kNone;
  std::size_t norm2_g = kNone, norm2_b = kNone, w_in = kNone, b_in = kNone, w_out = kNone, b_out = kNone;
};
/// Where the parameters outside the layers are.
struct top_index {
  std::size_t embedding = kNone, positions = kNone, norm_g = kNone, norm_b = kNone, output = kNone;
};
}  // namespace

std::string_view to_string(model_family f) noexcept { return f == model_family::llama ? "llama" : "gpt2"; }

expected<void> model_config::validate() const {
  if (layers < 1) return make_error(errc::invalid_argument, "model.layers = {} (must be >= 1)", layers);
  if (d_model < 1) return make_error(errc::invalid_argument, "model.d_model = {} (must be >= 1)", d_model);
  if (heads < 1 || d_model % heads != 0)
    return make_error(errc::invalid_argument, "model.heads = {} must divide model.d_model = {}", heads, d_model);
  if (vocab < 1) return make_error(errc::invalid_argument, "model.vocab = {} (must be >= 1)", vocab);
  if (max_positions < 1)
    return make_error(errc::invalid_argument, "model.max_positions = {} (must be >= 1)", max_positions);
  if (family == model_family::gpt2) {
    if (kv_heads != 0 && kv_heads != heads)
      return make_error(errc::invalid_argument, "model.kv_heads = {}: the gpt2 family has as many K/V heads as heads",
                        kv_heads);
    if (ffn != 0 && ffn != 4 * d_model)
      return make_error(errc::invalid_argument, "model.ffn = {}: the gpt2 family's MLP is 4 x d_model", ffn);
    return {};
  }
  if (kv_heads < 0 || (kv_heads > 0 && heads % kv_heads != 0))
    return make_error(errc::invalid_argument, "model.kv_heads = {} must divide model.heads = {}", kv_heads, heads);
  if (head_dim() % 2 != 0)
    return make_error(errc::invalid_argument, "model: head dimension {} (d_model / heads) must be even for rotary "
                      "embeddings", head_dim());
  if (ffn < 0) return make_error(errc::invalid_argument, "model.ffn = {} (must be >= 0)", ffn);
  if (!(rope_theta > 1.0f)) return make_error(errc::invalid_argument, "model.rope_theta = {} (must be > 1)", rope_theta);
  if (!(norm_eps > 0.0f) || norm_eps > 1e-2f)
    return make_error(errc::invalid_argument, "model.norm_eps = {} (must be in (0, 0.01])", norm_eps);
  return {};
}

std::int64_t model_config::ffn_dim() const noexcept {
  if (family == model_family::gpt2) return 4 * d_model;
  if (ffn > 0) return ffn;
  return (8 * d_model / 3 + 31) / 32 * 32;
}

std::vector<parameter_info> parameter_table(const model_config& config) {
  std::vector<parameter_info> table;
  const std::int64_t D = config.d_model;
  std::int64_t off = 0;
  auto add = [&](std::string name, shape_t shape, bool decay) {
    const auto n = numel_of(shape);
    table.push_back({std::move(name), off, std::move(shape), decay});
    off += n;
  };
  if (config.family == model_family::llama) {
    const std::int64_t P = (config.heads + 2 * config.kv()) * config.head_dim(), F = config.ffn_dim();
    add("tok_embeddings", {config.vocab, D}, true);
    for (std::int64_t l = 0; l < config.layers; ++l) {
      const auto p = fmt::format("h{}.", l);
      add(p + "attn_norm.g", {D}, false);
      add(p + "attn.w_qkv", {D, P}, true);  // Q (heads), K (kv_heads), V (kv_heads)
      add(p + "attn.w_o", {D, D}, true);
      add(p + "mlp_norm.g", {D}, false);
      add(p + "mlp.w_gate_up", {D, 2 * F}, true);  // gate, then up
      add(p + "mlp.w_down", {F, D}, true);
    }
    add("norm_f.g", {D}, false);
    add("lm_head", {config.vocab, D}, true);
    return table;
  }
  add("wte", {config.vocab, D}, true);
  add("wpe", {config.max_positions, D}, true);
  for (std::int64_t l = 0; l < config.layers; ++l) {
    const auto p = fmt::format("h{}.", l);
    add(p + "ln1.g", {D}, false);
    add(p + "ln1.b", {D}, false);
    add(p + "attn.w_qkv", {D, 3 * D}, true);
    add(p + "attn.b_qkv", {3 * D}, false);
    add(p + "attn.w_o", {D, D}, true);
    add(p + "attn.b_o", {D}, false);
    add(p + "ln2.g", {D}, false);
    add(p + "ln2.b", {D}, false);
    add(p + "mlp.w_fc", {D, 4 * D}, true);
    add(p + "mlp.b_fc", {4 * D}, false);
    add(p + "mlp.w_proj", {4 * D, D}, true);
    add(p + "mlp.b_proj", {D}, false);
  }
  add("ln_f.g", {D}, false);
  add("ln_f.b", {D}, false);
  return table;
}


namespace {

std::size_t index_of(const std::vector<parameter_info>& table, const std::string& name) {
  for (std::size_t i = 0; i < table.size(); ++i)
    if (table[i].name == name) return i;
  return kNone;
}

/// Where every parameter the forward pass uses is, by name (both families).
std::pair<top_index, std::vector<layer_index>> index_table(const model_config& config,
                                                           const std::vector<parameter_info>& table) {
  auto at = [&](const std::string& name) { return index_of(table, name); };
  top_index top;
  std::vector<layer_index> layers(sz(config.layers));
  if (config.family == model_family::llama) {
    top = {at("tok_embeddings"), kNone, at("norm_f.g"), kNone, at("lm_head")};
    for (std::int64_t l = 0; l < config.layers; ++l) {
      const auto p = fmt::format("h{}.", l);
      auto& w = layers[sz(l)];
      w.norm1_g = at(p + "attn_norm.g");
      w.w_qkv = at(p + "attn.w_qkv");
      w.w_o = at(p + "attn.w_o");
      w.norm2_g = at(p + "mlp_norm.g");
      w.w_in = at(p + "mlp.w_gate_up");
      w.w_out = at(p + "mlp.w_down");
    }
    return {top, layers};
  }
  top = {at("wte"), at("wpe"), at("ln_f.g"), at("ln_f.b"), at("wte")};
  for (std::int64_t l = 0; l < config.layers; ++l) {
    const auto p = fmt::format("h{}.", l);
    auto& w = layers[sz(l)];
    w = {at(p + "ln1.g"),    at(p + "ln1.b"),    at(p + "attn.w_qkv"), at(p + "attn.b_qkv"),
         at(p + "attn.w_o"), at(p + "attn.b_o"), at(p + "ln2.g"),      at(p + "ln2.b"),
         at(p + "mlp.w_fc"), at(p + "mlp.b_fc"), at(p + "mlp.w_proj"), at(p + "mlp.b_proj")};
  }
  return {top, layers};
}

/// GPT-2 initialisation of the flat parameter buffer, on the host.
std::vector<float> initial_parameters(const model_config& config, const std::vector<parameter_info>& table,
                                      std::uint64_t seed) {
  std::vector<float> params(sz(config.parameter_count()), 0.0f);
  normal_source rng{seed};
  const float proj_std = 0.02f / std::sqrt(2.0f * static_cast<float>(config.layers));
  for (const auto& p : table) {
    float* v = params.data() + p.offset;
    const auto n = numel_of(p.shape);
    const bool gain = p.name.ends_with(".g");
    const bool is_matrix = p.shape.size() == 2;
    // GPT-2 scales the projections into the residual stream; LLaMA (Hugging Face) does not.
    const bool is_proj = config.family == model_family::gpt2 && (p.name.ends_with("w_o") || p.name.ends_with("w_proj"));
    for (std::int64_t i = 0; i < n; ++i)
      v[i] = gain ? 1.0f : is_matrix ? rng.next(is_proj ? proj_std : 0.02f) : 0.0f;
  }
  return params;
}

}  // namespace

std::int64_t model_config::parameter_count() const noexcept {
  std::int64_t n = 0;
  for (const auto& p : parameter_table(*this)) n += numel_of(p.shape);
  return n;
}

struct model::state {
  std::shared_ptr<device> dev;
  model_config config;
  std::vector<parameter_info> table;
  buffer params, grads, m, v;
  std::int64_t step = 0;
  dtype attention = dtype::f32;
  gemm_math math = gemm_math::fp32;
  top_index top;
  std::vector<layer_index> layers;
  // Scratch reused across steps, grown when a step needs more.
  std::vector<buffer> slots;

  std::int64_t n = 0;  // floats in each (local) flat buffer
  std::int64_t count() const { return n; }
  shard_layout layout;
  // Per parameter: its unit; per unit: where its parameters and gradients are now (the local
  // buffers unless sharded; a gathered copy during a sharded micro-batch).
  std::vector<std::size_t> unit_of;
  std::vector<float*> pbase, gbase;
  double shard_comm_s = 0;
  float* param(std::size_t i) const {
    return i == kNone ? nullptr : pbase[unit_of[i]] + (table[i].offset - layout.unit(unit_of[i]).begin);
  }
  float* grad(std::size_t i) const {
    return i == kNone ? nullptr : gbase[unit_of[i]] + (table[i].offset - layout.unit(unit_of[i]).begin);
  }
  /// Points every unit at the local buffers (an unsharded model's permanent state).
  void point_local() {
    pbase.resize(layout.units());
    gbase.resize(layout.units());
    for (std::size_t u = 0; u < layout.units(); ++u) {
      pbase[u] = params.as<float>() + layout.local_offset(u);
      gbase[u] = grads.as<float>() + layout.local_offset(u);
    }
  }

  template <class T = float>
  expected<T*> scratch(std::size_t slot, std::size_t elements) {
    if (slots.size() <= slot) slots.resize(slot + 1);
    const std::size_t bytes = std::max<std::size_t>(1, elements) * sizeof(T);
    if (slots[slot].bytes() < bytes) {
      slots[slot] = buffer{};  // free first: peak memory stays at one copy
      FLEXSP_TRY_ASSIGN(slots[slot], dev->allocate(bytes));
    }
    return slots[slot].template as<T>();
  }
  std::size_t layer_slot_of(std::int64_t layer, layer_slot s) const {
    return kStepSlots + sz(layer) * kLayerSlots + s;
  }
  std::span<float> host(const buffer& b) const {
    FLEXSP_EXPECTS(dev->host_memory(), "host spans of a model on {}", dev->description());
    return {b.as<float>(), sz(count())};
  }
};

model::model(std::unique_ptr<state> s) : s_{std::move(s)} {}
model::model(model&&) noexcept = default;
model& model::operator=(model&&) noexcept = default;
model::~model() = default;

expected<model> model::create(std::shared_ptr<device> dev, const model_config& config, std::uint64_t seed) {
  return create(std::move(dev), config, seed, shard_spec{});
}

expected<model> model::create(std::shared_ptr<device> dev, const model_config& config, std::uint64_t seed,
                              shard_spec shards, bool zero) {
  FLEXSP_EXPECTS(dev != nullptr, "a model needs a device");
  FLEXSP_TRY(config.validate());
  if (shards.count < 1 || shards.index < 0 || shards.index >= shards.count)
    return make_error(errc::invalid_argument, "shard {} of {}", shards.index, shards.count);
  auto s = std::make_unique<state>();
  s->dev = std::move(dev);
  s->config = config;
  s->table = parameter_table(config);
  s->layout = shard_layout::of(config, shards.count, shards.index);
  s->n = s->layout.local_size();
  for (const auto& p : s->table) {
    std::size_t u = 0;
    while (u + 1 < s->layout.units() && p.offset >= s->layout.unit(u).end) ++u;
    s->unit_of.push_back(u);
  }
  std::tie(s->top, s->layers) = index_table(config, s->table);
  std::vector<float> local(sz(s->n), 0.0f);
  if (!zero) {
    const auto init = initial_parameters(config, s->table, seed);
    for (std::size_t u = 0; u < s->layout.units(); ++u) {
      const auto r = s->layout.range(u, shards.index);
      std::copy(init.begin() + r.begin, init.begin() + r.end, local.begin() + s->layout.local_offset(u));
    }
  }
  const std::size_t bytes = local.size() * sizeof(float);
  auto& d = *s->dev;
  FLEXSP_TRY_ASSIGN(s->params, d.allocate(bytes));
  FLEXSP_TRY_ASSIGN(s->grads, d.allocate(bytes));
  FLEXSP_TRY_ASSIGN(s->m, d.allocate(bytes));
  FLEXSP_TRY_ASSIGN(s->v, d.allocate(bytes));
  FLEXSP_TRY(d.copy_to_device(s->params.get(), local.data(), bytes));
  FLEXSP_TRY(d.fill_zero(s->grads.get(), bytes));
  FLEXSP_TRY(d.fill_zero(s->m.get(), bytes));
  FLEXSP_TRY(d.fill_zero(s->v.get(), bytes));
  FLEXSP_TRY(d.synchronize());
  s->point_local();
  return model{std::move(s)};
}

expected<model> model::create(const model_config& config, std::uint64_t seed) {
  return create(std::shared_ptr<device>{make_host_device()}, config, seed);
}

const model_config& model::config() const noexcept { return s_->config; }
const std::vector<parameter_info>& model::parameters() const noexcept { return s_->table; }
expected<parameter_info> model::find(std::string_view name) const {
  for (const auto& p : s_->table)
    if (p.name == name) return p;
  return make_error(errc::not_found, "no parameter named '{}'", name);
}
device& model::dev() const noexcept { return *s_->dev; }
std::shared_ptr<device> model::device_ptr() const noexcept { return s_->dev; }
std::int64_t model::size() const noexcept { return s_->count(); }
const shard_layout& model::shards() const noexcept { return s_->layout; }
dtype model::attention_type() const noexcept { return s_->attention; }
void model::set_attention_type(dtype type) noexcept { s_->attention = type; }
gemm_math model::gemm_arithmetic() const noexcept { return s_->math; }
void model::set_gemm_math(gemm_math math) noexcept { s_->math = math; }
float* model::params() const noexcept { return s_->params.as<float>(); }
float* model::grads() const noexcept { return s_->grads.as<float>(); }
float* model::first_moments() const noexcept { return s_->m.as<float>(); }
float* model::second_moments() const noexcept { return s_->v.as<float>(); }
std::span<float> model::host_params() const { return s_->host(s_->params); }
std::span<float> model::host_grads() const { return s_->host(s_->grads); }
std::span<float> model::host_first_moments() const { return s_->host(s_->m); }
std::span<float> model::host_second_moments() const { return s_->host(s_->v); }
std::int64_t model::steps() const noexcept { return s_->step; }
void model::set_steps(std::int64_t steps) noexcept { s_->step = steps; }

expected<void> model::zero_grads() { return s_->dev->fill_zero(s_->grads.get(), s_->grads.bytes()); }

expected<micro_batch_result> model::forward_backward(const local_inputs& in, std::span<const std::int64_t> lengths,
                                                     float loss_scale, forward_options options) {
  for (auto len : lengths)
    if (len < 0) return make_error(errc::invalid_argument, "negative sequence length {}", len);
  FLEXSP_TRY_ASSIGN(auto layout, ulysses_layout::make({lengths.begin(), lengths.end()}, 1, 0, s_->config.heads));
  auto local = make_local_communicator();
  return forward_backward(*local, layout, in, loss_scale, options);
}

namespace {
// The buffers forward_backward allocates for one micro-batch, by size: keep this in step with
// forward_backward (the model tests compare it with the device's ledger, byte for byte).
struct step_shape {
  std::int64_t n = 0, N = 0, hm = 0;            // local tokens, group tokens, local heads
  bool single = true, backward = true, bf16 = false;
  std::int64_t most_send = 0, most_recv = 0;    // exchange buffers (floats)
  std::uint64_t fwd_ws = 0, bwd_ws = 0;         // attention workspaces (bytes)
};

std::uint64_t activation_bytes(const model_config& c, const step_shape& k) {
  const bool llama = c.family == model_family::llama;
  const std::int64_t D = c.d_model, H = c.heads, Dh = c.head_dim(), V = c.vocab, L = c.layers;
  const std::int64_t KVH = c.kv(), F = c.ffn_dim(), P = (H + 2 * KVH) * Dh;
  const bool expand = KVH != H;
  const std::int64_t n = k.n, nd = n * D, Nh = k.N * k.hm * Dh, mlp_in = llama ? 2 * F : F;
  std::uint64_t total = 0;
  auto f32 = [&](std::int64_t elements) { total += sz(std::max<std::int64_t>(1, elements)) * sizeof(float); };
  auto i32 = [&](std::int64_t elements) { total += sz(std::max<std::int64_t>(1, elements)) * sizeof(std::int32_t); };
  auto u16 = [&](std::int64_t elements) { total += sz(std::max<std::int64_t>(1, elements)) * sizeof(std::uint16_t); };
  auto bytes = [&](std::uint64_t b) { total += std::max<std::uint64_t>(1, b); };
  if (!k.single) {
    f32(k.most_send);
    f32(k.most_recv);
  }
  i32(n);  // tokens, positions, targets
  i32(n);
  i32(n);
  f32(nd);  // x
  bytes(k.fwd_ws);
  for (std::int64_t l = 0; l < L; ++l) {
    f32(nd);  // x_in
    f32(nd);  // ln1
    f32(n);   // ln1 mean, rstd
    f32(n);
    f32(n * P);  // qkv
    if (expand) f32(3 * nd);
    f32(3 * Nh);     // qkv_h
    f32(Nh);         // att_h
    f32(k.N * k.hm);  // lse
    if (!k.single) f32(nd);  // att
    f32(nd);  // x_mid
    f32(nd);  // ln2
    f32(n);
    f32(n);
    f32(n * mlp_in);  // fc
    f32(n * F);       // act
    if (k.bf16) {
      u16(3 * Nh);
      u16(Nh);
    }
  }
  f32(nd);  // lnf, its mean and rstd
  f32(n);
  f32(n);
  f32(n * V);  // logits
  if (!k.backward) return total;
  f32(n * V);  // dlogits
  f32(nd);     // dlnf, dx
  f32(nd);
  f32(n * F);       // dact
  f32(n * mlp_in);  // dfc
  f32(nd);          // dln, dtmp, datt
  f32(nd);
  f32(nd);
  f32(3 * Nh);  // dqkv_h
  if (!k.single) f32(Nh);
  f32(3 * nd);  // dqkv
  if (expand) {
    f32(n * P);
    f32(n * 2 * KVH * Dh);
    f32(n * 2 * KVH * Dh);
  }
  bytes(k.bwd_ws);
  if (k.bf16) {
    u16(Nh);
    u16(3 * Nh);
  }
  return total;
}

step_shape shape_of(const model_config& c, const ulysses_layout& layout, bool backward) {
  step_shape k;
  k.n = layout.local_tokens();
  k.N = layout.total_tokens();
  k.hm = layout.head_share(layout.rank()).size;
  k.single = layout.degree() == 1;
  k.backward = backward;
  if (!k.single) {
    const std::int64_t Dh = c.head_dim();
    for (const auto& p : {layout.scatter_plan(3, Dh), layout.gather_plan(1, Dh), layout.scatter_plan(1, Dh),
                          layout.gather_plan(3, Dh)}) {
      k.most_send = std::max(k.most_send, p.send_total);
      k.most_recv = std::max(k.most_recv, p.recv_total);
    }
  }
  return k;
}
}  // namespace

namespace {
/// Bytes of the buffers a sharded micro-batch adds (model::shard_pass): the gathered outer units
/// and two layers, and with backward their gradients and one reduced chunk.
std::uint64_t shard_buffer_bytes(const shard_layout& lay, bool backward) {
  if (!lay.sharded()) return 0;
  const std::size_t last = lay.units() - 1;
  auto full = [&](std::size_t u) { return std::max<std::uint64_t>(1, sz(lay.chunk(u) * lay.count())); };
  std::uint64_t layer = 1, chunk = 1;
  for (std::size_t u = 1; u < last; ++u) layer = std::max(layer, full(u));
  for (std::size_t u = 0; u < lay.units(); ++u) chunk = std::max<std::uint64_t>(chunk, sz(lay.chunk(u)));
  std::uint64_t floats = full(0) + full(last) + 2 * layer;
  if (backward) floats += full(0) + full(last) + layer + chunk;
  return floats * sizeof(float);
}
}  // namespace

expected<memory_footprint> model::footprint(const ulysses_layout& layout, forward_options options) const {
  const auto& S = *s_;
  if (layout.heads() != S.config.heads)
    return make_error(errc::invalid_argument, "layout has {} heads, model {}", layout.heads(), S.config.heads);
  auto k = shape_of(S.config, layout, options.backward);
  k.bf16 = S.attention == dtype::bf16;
  attention_forward_args fa{layout.cu_seqlens(), k.hm, S.config.head_dim()};
  fa.type = S.attention;
  attention_backward_args ba{layout.cu_seqlens(), k.hm, S.config.head_dim()};
  ba.type = S.attention;
  k.fwd_ws = S.dev->workspace_size(fa);
  k.bwd_ws = S.dev->workspace_size(ba);
  memory_footprint f;
  f.states = 4 * sz(S.count()) * sizeof(float);
  f.activations = activation_bytes(S.config, k) + shard_buffer_bytes(S.layout, options.backward);
  return f;
}

memory_profile estimate_memory(const model_config& config, int degree, int state_shards) {
  // Two long sequences' footprints on rank 0 of a group of `degree`, host attention workspaces
  // (one thread's tile scratch): the difference is the per-token slope, the rest is fixed.
  auto at = [&](std::int64_t tokens) {
    auto layout = ulysses_layout::make({tokens}, std::max(1, degree), 0, config.heads);
    FLEXSP_EXPECTS(layout.has_value(), "estimate_memory: {}", layout.error().message());
    auto k = shape_of(config, *layout, true);
    attention::forward_args fa{layout->cu_seqlens(), k.hm, config.head_dim()};
    attention::backward_args ba{layout->cu_seqlens(), k.hm, config.head_dim()};
    fa.threads = ba.threads = 1;
    k.fwd_ws = sz(attention::workspace_size(fa)) * sizeof(float);
    k.bwd_ws = sz(attention::workspace_size(ba)) * sizeof(float);
    return static_cast<double>(activation_bytes(config, k));
  };
  const std::int64_t a = 1 << 12, b = 1 << 14;
  const double small = at(a), large = at(b);
  memory_profile m;
  const double slope_per_rank_token = (large - small) / static_cast<double>(b - a);
  m.per_token = slope_per_rank_token * std::max(1, degree);
  m.fixed = small - slope_per_rank_token * static_cast<double>(a);
  const auto lay = shard_layout::of(config, std::max(1, state_shards), 0);
  m.fixed += 4.0 * static_cast<double>(lay.local_size()) * sizeof(float);
  m.fixed += static_cast<double>(shard_buffer_bytes(lay, true));
  return m;
}

namespace {
// Three consecutive [N, hm, Dh] blocks of one buffer: Q, K, V or their gradients.
struct three_blocks {
  void* q;
  void* k;
  void* v;
};
template <class T>
three_blocks split3(T* first, std::size_t block) {
  return {first, first + block, first + 2 * block};
}

}  // namespace

/// The collectives of one sharded micro-batch and the buffers they fill (sharding.hpp). Every
/// micro-batch (and idle round) calls begin, then forward(l) for l = 0..L-1, then for l = L-1..0
/// backward_begin(l) and backward_end(l), then end: the same collectives in the same order on
/// every device of the shard group.
struct model::shard_pass {
  model::state& S;
  std::optional<unit_stream> stream;
  float* layer_buf[2] = {nullptr, nullptr};
  float* grad_buf = nullptr;
  float* reduced = nullptr;
  std::size_t units = 0;

  explicit shard_pass(model::state& s) : S{s}, units{s.layout.units()} {}
  ~shard_pass() {
    if (stream) S.shard_comm_s += stream->exposed_seconds();
  }
  bool active() const { return stream.has_value(); }
  float* local_params(std::size_t u) const { return S.params.as<float>() + S.layout.local_offset(u); }
  float* local_grads(std::size_t u) const { return S.grads.as<float>() + S.layout.local_offset(u); }
  std::size_t full(std::size_t u) const { return sz(S.layout.chunk(u) * S.layout.count()); }

  expected<void> begin(communicator* group, bool prefetch, bool backward) {
    if (!S.layout.sharded()) return {};
    if (group == nullptr || group->size() != S.layout.count() || group->rank() != S.layout.index())
      return make_error(errc::invalid_argument, "a model holding shard {} of {} needs its shard group (got {})",
                        S.layout.index(), S.layout.count(),
                        group ? fmt::format("rank {} of {}", group->rank(), group->size()) : std::string{"none"});
    const std::size_t last = units - 1;
    std::size_t most = 0;
    for (std::size_t u = 1; u < last; ++u) most = std::max(most, full(u));
    FLEXSP_TRY_ASSIGN(float* before, S.scratch(shard_before, full(0)));
    FLEXSP_TRY_ASSIGN(float* after, S.scratch(shard_after, full(last)));
    FLEXSP_TRY_ASSIGN(layer_buf[0], S.scratch(shard_layer0, most));
    FLEXSP_TRY_ASSIGN(layer_buf[1], S.scratch(shard_layer1, most));
    if (backward) {
      FLEXSP_TRY_ASSIGN(float* gb, S.scratch(shard_grad_before, full(0)));
      FLEXSP_TRY_ASSIGN(float* ga, S.scratch(shard_grad_after, full(last)));
      FLEXSP_TRY_ASSIGN(grad_buf, S.scratch(shard_grad_layer, most));
      std::size_t chunk = 0;
      for (std::size_t u = 0; u < units; ++u) chunk = std::max(chunk, sz(S.layout.chunk(u)));
      FLEXSP_TRY_ASSIGN(reduced, S.scratch(shard_reduced, chunk));
      FLEXSP_TRY(S.dev->fill_zero(gb, full(0) * sizeof(float)));
      FLEXSP_TRY(S.dev->fill_zero(ga, full(last) * sizeof(float)));
      S.gbase[0] = gb;
      S.gbase[last] = ga;
    }
    stream.emplace(*S.dev, *group, S.layout, prefetch);
    stream->start_gather(0, local_params(0), before);
    FLEXSP_TRY(stream->wait());
    stream->start_gather(last, local_params(last), after);
    FLEXSP_TRY(stream->wait());
    S.pbase[0] = before;
    S.pbase[last] = after;
    if (units > 2) stream->start_gather(1, local_params(1), layer_buf[0]);
    return {};
  }
  /// Layer l's parameters are in place; the next layer's gather is under way.
  expected<void> forward(std::int64_t l) {
    if (!active()) return {};
    const auto u = sz(l) + 1;
    FLEXSP_TRY(stream->wait());
    S.pbase[u] = layer_buf[sz(l) % 2];
    if (u + 1 < units - 1) stream->start_gather(u + 1, local_params(u + 1), layer_buf[sz(l + 1) % 2]);
    return {};
  }
  /// Layer l's parameters are in place (the last layer's stayed from forward), its gradients
  /// zero, and the previous layer's gather is under way.
  expected<void> backward_begin(std::int64_t l) {
    if (!active()) return {};
    const auto u = sz(l) + 1;
    FLEXSP_TRY(stream->wait());
    S.pbase[u] = layer_buf[sz(l) % 2];
    if (l > 0) stream->start_gather(u - 1, local_params(u - 1), layer_buf[sz(l - 1) % 2]);
    FLEXSP_TRY(S.dev->fill_zero(grad_buf, full(u) * sizeof(float)));
    S.gbase[u] = grad_buf;
    return {};
  }
  /// Layer l's gradients summed over the group, this shard's chunk added to the local gradients.
  expected<void> backward_end(std::int64_t l) {
    if (!active()) return {};
    const auto u = sz(l) + 1;
    FLEXSP_TRY(stream->wait());
    return stream->reduce_scatter_add(u, grad_buf, local_grads(u), reduced);
  }
  expected<void> end(bool backward) {
    if (!active()) return {};
    FLEXSP_TRY(stream->wait());
    if (!backward) return {};
    const std::size_t last = units - 1;
    FLEXSP_TRY(stream->reduce_scatter_add(0, S.gbase[0], local_grads(0), reduced));
    return stream->reduce_scatter_add(last, S.gbase[last], local_grads(last), reduced);
  }
};

namespace {

// One Ulysses head exchange of device tensors: pack on the device, all-to-all-v, unpack on the
// device. Host memory and groups that take device buffers (NCCL) exchange in place; otherwise
// (Gloo from a GPU) only the packed send and receive buffers travel through host memory.
expected<void> exchange(device& dev, communicator& group, const ulysses_layout::exchange_plan& plan, const float* src,
                        float* dst, float* send, float* recv, std::vector<float>& host) {
  FLEXSP_TRY(dev.copy_blocks(send, src, plan.pack));
  const auto st = sz(plan.send_total), rt = sz(plan.recv_total);
  if (dev.host_memory() || group.exchanges_device_buffers()) {
    FLEXSP_TRY(dev.synchronize());  // the collective runs on its own stream
    FLEXSP_TRY(group.all_to_all_v({send, st}, plan.send_counts, {recv, rt}, plan.recv_counts));
  } else {
    host.resize(st + rt);
    FLEXSP_TRY(dev.copy_to_host(host.data(), send, st * sizeof(float)));
    FLEXSP_TRY(group.all_to_all_v({host.data(), st}, plan.send_counts, {host.data() + st, rt}, plan.recv_counts));
    FLEXSP_TRY(dev.copy_to_device(recv, host.data() + st, rt * sizeof(float)));
  }
  return dev.copy_blocks(dst, recv, plan.unpack);
}
}  // namespace

expected<micro_batch_result> model::forward_backward(communicator& group, const ulysses_layout& layout,
                                                    const local_inputs& in, float loss_scale, forward_options options) {
  auto& S = *s_;
  auto& dev = *S.dev;
  const auto& c = S.config;
  const bool llama = c.family == model_family::llama;
  const std::int64_t D = c.d_model, H = c.heads, Dh = c.head_dim(), V = c.vocab, L = c.layers;
  const std::int64_t KVH = c.kv(), F = c.ffn_dim(), G = H / KVH;  // G query heads share a KV head
  const std::int64_t P = (H + 2 * KVH) * Dh;  // width of the Q/K/V projection
  const bool expand = KVH != H;               // K and V heads are repeated to H before the exchange
  if (layout.heads() != H) return make_error(errc::invalid_argument, "layout has {} heads, model {}", layout.heads(), H);
  if (group.size() != layout.degree() || group.rank() != layout.rank())
    return make_error(errc::invalid_argument, "group rank {}/{} does not match layout rank {}/{}", group.rank(),
                      group.size(), layout.rank(), layout.degree());
  for (auto len : layout.lengths())
    if (len > c.max_positions)
      return make_error(errc::invalid_argument, "sequence of {} tokens exceeds max_positions {}", len, c.max_positions);
  const std::int64_t n = layout.local_tokens(), N = layout.total_tokens();
  const std::int64_t hm = layout.head_share(layout.rank()).size;
  const auto& cu = layout.cu_seqlens();
  if (static_cast<std::int64_t>(in.tokens.size()) != n || in.targets.size() != in.tokens.size() ||
      in.positions.size() != in.tokens.size())
    return make_error(errc::invalid_argument, "inputs hold {} tokens, {} targets, {} positions; layout expects {}",
                      in.tokens.size(), in.targets.size(), in.positions.size(), n);
  const bool single = layout.degree() == 1;
  // A rank without tokens still takes part in every all-to-all of its group.
  const std::size_t nd = sz(n * D);
  const std::size_t Nh = sz(N * hm * Dh);  // one component of the head layout [N, hm, Dh]
  const std::int64_t mlp_in = llama ? 2 * F : F;  // the first MLP projection's width (gate and up for SwiGLU)
  std::vector<float> host;  // packed exchange buffers, when the group needs host memory
  // The four head exchanges of a layer (forward scatter of Q/K/V and gather of the output,
  // backward scatter of dO and gather of dQ/dK/dV) and their device buffers.
  ulysses_layout::exchange_plan qkv_in, att_out, datt_in, dqkv_out;
  float *send = nullptr, *recv = nullptr;
  if (!single) {
    qkv_in = layout.scatter_plan(3, Dh);
    att_out = layout.gather_plan(1, Dh);
    datt_in = layout.scatter_plan(1, Dh);
    dqkv_out = layout.gather_plan(3, Dh);
    std::int64_t most_send = 0, most_recv = 0;
    for (const auto* p : {&qkv_in, &att_out, &datt_in, &dqkv_out}) {
      most_send = std::max(most_send, p->send_total);
      most_recv = std::max(most_recv, p->recv_total);
    }
    FLEXSP_TRY_ASSIGN(send, S.scratch(xsend, sz(most_send)));
    FLEXSP_TRY_ASSIGN(recv, S.scratch(xrecv, sz(most_recv)));
  }
  // Grouped-query attention: K and V heads repeated to every query head ([n, P] -> [n, 3, H, Dh],
  // expanded head h reads KV head h / G), and the backward sums of the repeated heads.
  std::vector<row_block> widen, narrow_q, narrow_kv;
  std::vector<std::vector<row_block>> pick_kv(sz(G));
  if (expand) {
    widen.push_back({0, 0, P, 3 * D, n, D});
    narrow_q.push_back({0, 0, 3 * D, P, n, D});
    for (std::int64_t h = 0; h < H; ++h) {
      const std::int64_t kv = h / G;
      widen.push_back({D + kv * Dh, D + h * Dh, P, 3 * D, n, Dh});
      widen.push_back({D + KVH * Dh + kv * Dh, 2 * D + h * Dh, P, 3 * D, n, Dh});
      auto& pick = pick_kv[sz(h % G)];  // [n, 3, H, Dh] -> [n, 2 KVH Dh]
      pick.push_back({D + h * Dh, kv * Dh, 3 * D, 2 * KVH * Dh, n, Dh});
      pick.push_back({2 * D + h * Dh, (KVH + kv) * Dh, 3 * D, 2 * KVH * Dh, n, Dh});
    }
    narrow_kv.push_back({0, D, 2 * KVH * Dh, P, n, 2 * KVH * Dh});
  }

  FLEXSP_TRY_ASSIGN(auto* tok, S.scratch<std::int32_t>(tokens, sz(n)));
  FLEXSP_TRY_ASSIGN(auto* pos, S.scratch<std::int32_t>(positions, sz(n)));
  FLEXSP_TRY_ASSIGN(auto* tgt, S.scratch<std::int32_t>(targets, sz(n)));
  FLEXSP_TRY(dev.copy_to_device(tok, in.tokens.data(), sz(n) * sizeof(std::int32_t)));
  FLEXSP_TRY(dev.copy_to_device(pos, in.positions.data(), sz(n) * sizeof(std::int32_t)));
  FLEXSP_TRY(dev.copy_to_device(tgt, in.targets.data(), sz(n) * sizeof(std::int32_t)));

  shard_pass shards{S};
  FLEXSP_TRY(shards.begin(options.shard_group, options.prefetch, options.backward));
  const auto& top = S.top;
  float* wte = S.param(top.embedding);
  float* wpe = llama ? nullptr : S.param(top.positions);
  float* w_out = S.param(top.output);  // the tied embedding (gpt2) or the output head (llama)
  FLEXSP_TRY_ASSIGN(float* xs, S.scratch(x, nd));
  FLEXSP_TRY(dev.embedding_forward(tok, pos, wte, wpe, xs, n, D, V, c.max_positions));
  // The norms of both families: LayerNorm (gain and bias) or RMSNorm (gain).
  auto norm = [&](const float* xin, std::size_t gain, std::size_t bias, float* y, float* mean, float* rstd) {
    return llama ? dev.rmsnorm_forward(xin, S.param(gain), y, rstd, n, D, c.norm_eps)
                 : dev.layernorm_forward(xin, S.param(gain), S.param(bias), y, mean, rstd, n, D);
  };
  auto norm_backward = [&](const float* dy, const float* xin, std::size_t gain, std::size_t bias, const float* mean,
                           const float* rstd, float* dxo) {
    return llama ? dev.rmsnorm_backward(dy, xin, S.param(gain), rstd, dxo, S.grad(gain), n, D)
                 : dev.layernorm_backward(dy, xin, S.param(gain), mean, rstd, dxo, S.grad(gain), S.grad(bias), n, D);
  };

  // bf16 attention: Q, K, V and the output are cast around the kernels and kept in bf16 for
  // the backward pass; the exchanges and every other op stay fp32.
  const bool bf16 = S.attention == dtype::bf16;
  const gemm_math math = S.math;
  attention_forward_args fa{cu, hm, Dh};
  fa.type = S.attention;
  FLEXSP_TRY_ASSIGN(void* fws, S.scratch<char>(attn_fwd_ws, dev.workspace_size(fa)));
  struct layer_ptrs {
    float *x_in, *ln1, *ln1_mean, *ln1_rstd, *qkv, *qkv_full, *qkv_h, *att_h, *lse, *att, *x_mid, *ln2, *ln2_mean,
        *ln2_rstd, *fc, *act;
    std::uint16_t *qkv_b = nullptr, *att_b = nullptr;  // bf16 attention only
  };
  std::vector<layer_ptrs> cache(sz(L));
  for (std::int64_t l = 0; l < L; ++l) {
    FLEXSP_TRY(shards.forward(l));
    auto get = [&](layer_slot s, std::size_t floats) { return S.scratch(S.layer_slot_of(l, s), floats); };
    auto& k = cache[sz(l)];
    const auto& w = S.layers[sz(l)];
    FLEXSP_TRY_ASSIGN(k.x_in, get(x_in, nd));
    FLEXSP_TRY_ASSIGN(k.ln1, get(ln1, nd));
    FLEXSP_TRY_ASSIGN(k.ln1_mean, get(ln1_mean, sz(n)));
    FLEXSP_TRY_ASSIGN(k.ln1_rstd, get(ln1_rstd, sz(n)));
    FLEXSP_TRY_ASSIGN(k.qkv, get(qkv, sz(n * P)));
    k.qkv_full = k.qkv;  // [n, 3, H, Dh]
    if (expand) {
      FLEXSP_TRY_ASSIGN(k.qkv_full, get(qkv_full, 3 * nd));
    }
    FLEXSP_TRY_ASSIGN(k.qkv_h, get(qkv_h, 3 * Nh));
    FLEXSP_TRY_ASSIGN(k.att_h, get(att_h, Nh));
    FLEXSP_TRY_ASSIGN(k.lse, get(lse, sz(N * hm)));
    if (single) {
      k.att = k.att_h;  // [n, H, Dh] is [n, D]
    } else {
      FLEXSP_TRY_ASSIGN(k.att, get(att, nd));
    }
    FLEXSP_TRY_ASSIGN(k.x_mid, get(x_mid, nd));
    FLEXSP_TRY_ASSIGN(k.ln2, get(ln2, nd));
    FLEXSP_TRY_ASSIGN(k.ln2_mean, get(ln2_mean, sz(n)));
    FLEXSP_TRY_ASSIGN(k.ln2_rstd, get(ln2_rstd, sz(n)));
    FLEXSP_TRY_ASSIGN(k.fc, get(fc, sz(n * mlp_in)));
    FLEXSP_TRY_ASSIGN(k.act, get(act, sz(n * F)));
    if (bf16) {
      FLEXSP_TRY_ASSIGN(k.qkv_b, S.scratch<std::uint16_t>(S.layer_slot_of(l, qkv_b), 3 * Nh));
      FLEXSP_TRY_ASSIGN(k.att_b, S.scratch<std::uint16_t>(S.layer_slot_of(l, att_b), Nh));
    }
    FLEXSP_TRY(dev.copy_on_device(k.x_in, xs, nd * sizeof(float)));
    FLEXSP_TRY(norm(k.x_in, w.norm1_g, w.norm1_b, k.ln1, k.ln1_mean, k.ln1_rstd));
    FLEXSP_TRY(dev.linear_forward(k.ln1, S.param(w.w_qkv), S.param(w.b_qkv), k.qkv, n, D, P, math));
    if (llama) FLEXSP_TRY(dev.rope(k.qkv, pos, n, H + KVH, P, Dh, c.rope_theta, false));  // Q and K heads
    if (expand) FLEXSP_TRY(dev.copy_blocks(k.qkv_full, k.qkv, widen));
    if (single) {  // [n, 3, D] -> [3, n, D]: the head layout of a group of one
      for (std::int64_t part = 0; part < 3; ++part)
        FLEXSP_TRY(dev.copy_rows(k.qkv_h + part * n * D, sz(D) * sizeof(float), k.qkv_full + part * D,
                                 sz(3 * D) * sizeof(float), sz(D) * sizeof(float), sz(n)));
    } else {  // [n, 3, H, Dh] -> [3, N, hm, Dh]
      FLEXSP_TRY(exchange(dev, group, qkv_in, k.qkv_full, k.qkv_h, send, recv, host));
    }
    fa.lse = k.lse;
    if (bf16) FLEXSP_TRY(dev.to_bf16(k.qkv_h, k.qkv_b, static_cast<std::int64_t>(3 * Nh)));
    const auto qkv_in_h = bf16 ? split3(k.qkv_b, Nh) : split3(k.qkv_h, Nh);
    fa.q = qkv_in_h.q;
    fa.k = qkv_in_h.k;
    fa.v = qkv_in_h.v;
    fa.out = bf16 ? static_cast<void*>(k.att_b) : k.att_h;
    FLEXSP_TRY(dev.run(fa, fws));
    if (bf16) FLEXSP_TRY(dev.from_bf16(k.att_b, k.att_h, static_cast<std::int64_t>(Nh)));
    if (!single)  // [N, hm, Dh] -> [n, H, Dh]
      FLEXSP_TRY(exchange(dev, group, att_out, k.att_h, k.att, send, recv, host));
    FLEXSP_TRY(dev.linear_forward(k.att, S.param(w.w_o), S.param(w.b_o), k.x_mid, n, D, D, math));
    FLEXSP_TRY(dev.residual_forward(k.x_mid, k.x_in, k.x_mid, static_cast<std::int64_t>(nd)));
    FLEXSP_TRY(norm(k.x_mid, w.norm2_g, w.norm2_b, k.ln2, k.ln2_mean, k.ln2_rstd));
    FLEXSP_TRY(dev.linear_forward(k.ln2, S.param(w.w_in), S.param(w.b_in), k.fc, n, D, mlp_in, math));
    if (llama)
      FLEXSP_TRY(dev.swiglu_forward(k.fc, k.act, n, F));
    else
      FLEXSP_TRY(dev.gelu_forward(k.fc, k.act, n * F));
    FLEXSP_TRY(dev.linear_forward(k.act, S.param(w.w_out), S.param(w.b_out), xs, n, F, D, math));
    FLEXSP_TRY(dev.residual_forward(xs, k.x_mid, xs, static_cast<std::int64_t>(nd)));
  }
  FLEXSP_TRY_ASSIGN(float* lnf_out, S.scratch(lnf, nd));
  FLEXSP_TRY_ASSIGN(float* lnf_m, S.scratch(lnf_mean, sz(n)));
  FLEXSP_TRY_ASSIGN(float* lnf_r, S.scratch(lnf_rstd, sz(n)));
  FLEXSP_TRY(norm(xs, top.norm_g, top.norm_b, lnf_out, lnf_m, lnf_r));
  FLEXSP_TRY_ASSIGN(float* lg, S.scratch(logits, sz(n * V)));
  FLEXSP_TRY(dev.gemm({.trans_b = true, .m = n, .n = V, .k = D, .a = lnf_out, .lda = D, .b = w_out, .ldb = D,
                       .c = lg, .ldc = V, .math = math}));
  float* dlg = nullptr;
  if (options.backward) {
    FLEXSP_TRY_ASSIGN(dlg, S.scratch(dlogits, sz(n * V)));
  }
  FLEXSP_TRY_ASSIGN(const double loss_sum, dev.cross_entropy(lg, tgt, dlg, n, V, loss_scale));
  micro_batch_result result;
  result.loss_sum = loss_sum;
  result.tokens = n;
  if (options.keep_logits) {
    std::vector<float> host_logits(sz(n * V));
    FLEXSP_TRY(dev.copy_to_host(host_logits.data(), lg, host_logits.size() * sizeof(float)));
    result.logits = tensor{{n, V}, std::move(host_logits)};
  }
  if (!options.backward) {
    FLEXSP_TRY(shards.end(false));
    return result;
  }

  // ---- backward ----
  float* dw_out = S.grad(top.output);
  FLEXSP_TRY_ASSIGN(float* dlnf_p, S.scratch(dlnf, nd));
  FLEXSP_TRY_ASSIGN(float* dx_p, S.scratch(dx, nd));
  FLEXSP_TRY_ASSIGN(float* dact_p, S.scratch(dact, sz(n * F)));
  FLEXSP_TRY_ASSIGN(float* dfc_p, S.scratch(dfc, sz(n * mlp_in)));
  FLEXSP_TRY_ASSIGN(float* dln_p, S.scratch(dln, nd));
  FLEXSP_TRY_ASSIGN(float* dtmp_p, S.scratch(dtmp, nd));
  FLEXSP_TRY_ASSIGN(float* datt_p, S.scratch(datt, nd));
  FLEXSP_TRY_ASSIGN(float* dqkv_h_p, S.scratch(dqkv_h, 3 * Nh));
  float* datt_h_p = datt_p;  // a group of one: [n, D] is [N, hm, Dh]
  if (!single) {
    FLEXSP_TRY_ASSIGN(datt_h_p, S.scratch(datt_h, Nh));
  }
  FLEXSP_TRY_ASSIGN(float* dqkv_p, S.scratch(dqkv, 3 * nd));  // [n, 3, H, Dh]
  float* dproj_p = dqkv_p;                                    // [n, P]
  float *dkv_sum = nullptr, *dkv_one = nullptr;               // [n, 2 KVH Dh]
  if (expand) {
    FLEXSP_TRY_ASSIGN(dproj_p, S.scratch(dproj, sz(n * P)));
    FLEXSP_TRY_ASSIGN(dkv_sum, S.scratch(dkv_acc, sz(n * 2 * KVH * Dh)));
    FLEXSP_TRY_ASSIGN(dkv_one, S.scratch(dkv_part, sz(n * 2 * KVH * Dh)));
  }
  FLEXSP_TRY(dev.gemm({.m = n, .n = D, .k = V, .a = dlg, .lda = V, .b = w_out, .ldb = D, .c = dlnf_p, .ldc = D,
                       .math = math}));
  FLEXSP_TRY(dev.gemm({.trans_a = true, .m = V, .n = D, .k = n, .a = dlg, .lda = V, .b = lnf_out, .ldb = D,
                       .beta = 1.0f, .c = dw_out, .ldc = D, .math = math}));
  FLEXSP_TRY(norm_backward(dlnf_p, xs, top.norm_g, top.norm_b, lnf_m, lnf_r, dx_p));
  attention_backward_args ba{cu, hm, Dh};
  ba.type = S.attention;
  FLEXSP_TRY_ASSIGN(void* bws, S.scratch<char>(attn_bwd_ws, dev.workspace_size(ba)));
  std::uint16_t *datt_b_p = nullptr, *dqkv_b_p = nullptr;
  if (bf16) {
    FLEXSP_TRY_ASSIGN(datt_b_p, S.scratch<std::uint16_t>(datt_b, Nh));
    FLEXSP_TRY_ASSIGN(dqkv_b_p, S.scratch<std::uint16_t>(dqkv_b, 3 * Nh));
  }
  const auto count = static_cast<std::int64_t>(nd);
  for (std::int64_t l = L - 1; l >= 0; --l) {
    FLEXSP_TRY(shards.backward_begin(l));
    const auto& k = cache[sz(l)];
    const auto& w = S.layers[sz(l)];
    FLEXSP_TRY(dev.linear_backward(dx_p, k.act, S.param(w.w_out), dact_p, S.grad(w.w_out), S.grad(w.b_out), n, F, D,
                                   math));
    if (llama)
      FLEXSP_TRY(dev.swiglu_backward(dact_p, k.fc, dfc_p, n, F));
    else
      FLEXSP_TRY(dev.gelu_backward(dact_p, k.fc, dfc_p, n * F));
    FLEXSP_TRY(dev.linear_backward(dfc_p, k.ln2, S.param(w.w_in), dln_p, S.grad(w.w_in), S.grad(w.b_in), n, D, mlp_in,
                                   math));
    FLEXSP_TRY(norm_backward(dln_p, k.x_mid, w.norm2_g, w.norm2_b, k.ln2_mean, k.ln2_rstd, dtmp_p));
    FLEXSP_TRY(dev.axpy(1.0f, dtmp_p, dx_p, count));  // d x_mid
    FLEXSP_TRY(
        dev.linear_backward(dx_p, k.att, S.param(w.w_o), datt_p, S.grad(w.w_o), S.grad(w.b_o), n, D, D, math));
    if (!single)
      FLEXSP_TRY(exchange(dev, group, datt_in, datt_p, datt_h_p, send, recv, host));
    ba.lse = k.lse;
    if (bf16) FLEXSP_TRY(dev.to_bf16(datt_h_p, datt_b_p, static_cast<std::int64_t>(Nh)));
    const auto qkv_saved = bf16 ? split3(k.qkv_b, Nh) : split3(k.qkv_h, Nh);
    const auto grad = bf16 ? split3(dqkv_b_p, Nh) : split3(dqkv_h_p, Nh);
    ba.q = qkv_saved.q;
    ba.k = qkv_saved.k;
    ba.v = qkv_saved.v;
    ba.out = bf16 ? static_cast<void*>(k.att_b) : k.att_h;
    ba.dout = bf16 ? static_cast<void*>(datt_b_p) : datt_h_p;
    ba.dq = grad.q;
    ba.dk = grad.k;
    ba.dv = grad.v;
    FLEXSP_TRY(dev.run(ba, bws));
    if (bf16) FLEXSP_TRY(dev.from_bf16(dqkv_b_p, dqkv_h_p, static_cast<std::int64_t>(3 * Nh)));
    if (single) {  // [3, n, D] -> [n, 3, D]
      for (std::int64_t part = 0; part < 3; ++part)
        FLEXSP_TRY(dev.copy_rows(dqkv_p + part * D, sz(3 * D) * sizeof(float), dqkv_h_p + part * n * D,
                                 sz(D) * sizeof(float), sz(D) * sizeof(float), sz(n)));
    } else {  // [3, N, hm, Dh] -> [n, 3, H, Dh]
      FLEXSP_TRY(exchange(dev, group, dqkv_out, dqkv_h_p, dqkv_p, send, recv, host));
    }
    if (expand) {  // [n, 3, H, Dh] -> [n, P]: Q as it is, each KV head the sum of its G copies
      FLEXSP_TRY(dev.copy_blocks(dproj_p, dqkv_p, narrow_q));
      FLEXSP_TRY(dev.copy_blocks(dkv_sum, dqkv_p, pick_kv[0]));
      for (std::int64_t r = 1; r < G; ++r) {
        FLEXSP_TRY(dev.copy_blocks(dkv_one, dqkv_p, pick_kv[sz(r)]));
        FLEXSP_TRY(dev.axpy(1.0f, dkv_one, dkv_sum, n * 2 * KVH * Dh));
      }
      FLEXSP_TRY(dev.copy_blocks(dproj_p, dkv_sum, narrow_kv));
    }
    if (llama) FLEXSP_TRY(dev.rope(dproj_p, pos, n, H + KVH, P, Dh, c.rope_theta, true));
    FLEXSP_TRY(dev.linear_backward(dproj_p, k.ln1, S.param(w.w_qkv), dln_p, S.grad(w.w_qkv), S.grad(w.b_qkv), n, D, P,
                                   math));
    FLEXSP_TRY(norm_backward(dln_p, k.x_in, w.norm1_g, w.norm1_b, k.ln1_mean, k.ln1_rstd, dtmp_p));
    FLEXSP_TRY(dev.axpy(1.0f, dtmp_p, dx_p, count));  // d x_in
    FLEXSP_TRY(shards.backward_end(l));
  }
  FLEXSP_TRY(dev.embedding_backward(tok, pos, dx_p, S.grad(top.embedding), llama ? nullptr : S.grad(top.positions), n,
                                    D));
  FLEXSP_TRY(shards.end(true));
  FLEXSP_TRY(dev.synchronize());  // the caller times the work: it has finished
  return result;
}

expected<void> model::idle_micro_batch(communicator* shard_group, bool prefetch) {
  auto& S = *s_;
  if (!S.layout.sharded()) return {};
  shard_pass shards{S};
  FLEXSP_TRY(shards.begin(shard_group, prefetch, true));
  for (std::int64_t l = 0; l < S.config.layers; ++l) FLEXSP_TRY(shards.forward(l));
  for (std::int64_t l = S.config.layers - 1; l >= 0; --l) {
    FLEXSP_TRY(shards.backward_begin(l));
    FLEXSP_TRY(shards.backward_end(l));
  }
  return shards.end(true);
}

double model::take_shard_comm_seconds() noexcept { return std::exchange(s_->shard_comm_s, 0.0); }

expected<double> model::gradient_norm(communicator* shard_group) {
  auto& S = *s_;
  FLEXSP_TRY_ASSIGN(double sum_sq, S.dev->sum_squares(grads(), S.count()));
  if (S.layout.sharded()) {
    if (shard_group == nullptr || shard_group->size() != S.layout.count())
      return make_error(errc::invalid_argument, "the gradient norm of a sharded model needs its shard group");
    // Summed in double precision: two floats per rank (high and low part), gathered and added in
    // rank order, so every rank of every replica group gets the same bits.
    const float hi = static_cast<float>(sum_sq);
    const float lo = static_cast<float>(sum_sq - static_cast<double>(hi));
    const float mine[2] = {hi, lo};
    std::vector<float> all(2 * sz(shard_group->size()));
    FLEXSP_TRY(shard_group->all_gather(mine, all));
    sum_sq = 0;
    for (std::size_t r = 0; r < all.size(); r += 2) sum_sq += static_cast<double>(all[r]) + static_cast<double>(all[r + 1]);
  }
  return std::sqrt(sum_sq);
}

expected<double> model::optimizer_step(const adamw_params& hyper, double max_grad_norm) {
  if (s_->layout.sharded())
    return make_error(errc::invalid_argument, "a sharded model's gradient norm comes from its shard group");
  FLEXSP_TRY_ASSIGN(const double norm, gradient_norm());
  return optimizer_step(hyper, max_grad_norm, norm);
}

expected<double> model::optimizer_step(const adamw_params& hyper, double max_grad_norm, double norm) {
  auto& S = *s_;
  if (max_grad_norm > 0 && norm > max_grad_norm)
    FLEXSP_TRY(S.dev->scale(grads(), static_cast<float>(max_grad_norm / (norm + 1e-6)), S.count()));
  ++S.step;
  // Each parameter's part in this shard (all of it unless sharded), at its local position.
  const auto& lay = S.layout;
  for (std::size_t i = 0; i < S.table.size(); ++i) {
    const auto& p = S.table[i];
    const auto u = S.unit_of[i];
    const auto r = lay.range(u, lay.index());
    const std::int64_t b = std::max(r.begin, p.offset), e = std::min(r.end, p.offset + numel_of(p.shape));
    if (b >= e) continue;
    const std::int64_t at = lay.local_offset(u) + (b - r.begin);
    adamw_params hp = hyper;
    if (!p.decay) hp.weight_decay = 0.0f;
    FLEXSP_TRY(S.dev->adamw_update(params() + at, grads() + at, S.m.as<float>() + at, S.v.as<float>() + at, e - b,
                                   S.step, hp));
  }
  return norm;
}

expected<void> model::download_moments(std::span<float> first, std::span<float> second) const {
  if (static_cast<std::int64_t>(first.size()) != s_->count() || second.size() != first.size())
    return make_error(errc::invalid_argument, "download_moments: {} and {} floats for {} parameters", first.size(),
                      second.size(), s_->count());
  FLEXSP_TRY(s_->dev->copy_to_host(first.data(), first_moments(), first.size_bytes()));
  return s_->dev->copy_to_host(second.data(), second_moments(), second.size_bytes());
}

expected<void> model::upload_state(std::span<const float> params_in, std::span<const float> first,
                                         std::span<const float> second, std::int64_t steps) {
  const auto n = static_cast<std::size_t>(s_->count());
  if (params_in.size() != n || first.size() != n || second.size() != n || steps < 0)
    return make_error(errc::invalid_argument, "upload_state: {}, {}, {} floats and step {} for {} parameters",
                      params_in.size(), first.size(), second.size(), steps, n);
  FLEXSP_TRY(s_->dev->copy_to_device(params(), params_in.data(), params_in.size_bytes()));
  FLEXSP_TRY(s_->dev->copy_to_device(first_moments(), first.data(), first.size_bytes()));
  FLEXSP_TRY(s_->dev->copy_to_device(second_moments(), second.data(), second.size_bytes()));
  s_->step = steps;
  return {};
}

expected<void> model::download_params(std::span<float> out) const {
  if (static_cast<std::int64_t>(out.size()) != s_->count())
    return make_error(errc::invalid_argument, "download_params: {} floats for {} parameters", out.size(), s_->count());
  return s_->dev->copy_to_host(out.data(), params(), out.size_bytes());
}

expected<void> model::download_grads(std::span<float> out) const {
  if (static_cast<std::int64_t>(out.size()) != s_->count())
    return make_error(errc::invalid_argument, "download_grads: {} floats for {} parameters", out.size(), s_->count());
  return s_->dev->copy_to_host(out.data(), grads(), out.size_bytes());
}

expected<std::uint64_t> model::fingerprint() const {
  const auto n = static_cast<std::uint64_t>(s_->count());
  FLEXSP_TRY_ASSIGN(const auto a, s_->dev->fingerprint(params(), s_->count(), 0));
  FLEXSP_TRY_ASSIGN(const auto b, s_->dev->fingerprint(first_moments(), s_->count(), n));
  FLEXSP_TRY_ASSIGN(const auto c, s_->dev->fingerprint(second_moments(), s_->count(), 2 * n));
  return a + b + c;
}

expected<void> model::upload_grads(std::span<const float> in) {
  if (static_cast<std::int64_t>(in.size()) != s_->count())
    return make_error(errc::invalid_argument, "upload_grads: {} floats for {} parameters", in.size(), s_->count());
  return s_->dev->copy_to_device(grads(), in.data(), in.size_bytes());
}

expected<void> model::upload_params(std::span<const float> in) {
  if (static_cast<std::int64_t>(in.size()) != s_->count())
    return make_error(errc::invalid_argument, "upload_params: {} floats for {} parameters", in.size(), s_->count());
  return s_->dev->copy_to_device(params(), in.data(), in.size_bytes());
}

expected<micro_batch_result> run_micro_batch(model& m, communicator& group,
                                             std::span<const std::vector<std::int32_t>> sequences, float loss_scale) {
  std::vector<std::int64_t> lengths;
  lengths.reserve(sequences.size());
  for (std::size_t i = 0; i < sequences.size(); ++i) {
    if (sequences[i].empty())
      return make_error(errc::invalid_argument, "sequence {} has no ids (a sequence of length L carries L + 1)", i);
    lengths.push_back(static_cast<std::int64_t>(sequences[i].size()) - 1);
  }
  FLEXSP_TRY_ASSIGN(auto layout, ulysses_layout::make(std::move(lengths), group.size(), group.rank(), m.config().heads));
  FLEXSP_TRY_ASSIGN(auto inputs, shard_inputs(layout, sequences));
  return m.forward_backward(group, layout, inputs, loss_scale);
}

namespace {
/// Whether `group` can run a collective on `m`'s device buffers in place.
bool in_place(const communicator& group, const model& m) {
  return m.dev().host_memory() || group.reduces_device_buffers();
}
}  // namespace

expected<void> all_reduce_gradients(communicator& world, model& m) {
  const auto n = sz(m.size());
  if (in_place(world, m)) {
    FLEXSP_TRY(world.all_reduce_sum(std::span<float>{m.grads(), n}));
    return m.dev().synchronize();
  }
  std::vector<float> host(n);
  FLEXSP_TRY(m.download_grads(host));
  FLEXSP_TRY(world.all_reduce_sum(host));
  return m.upload_grads(host);
}

expected<void> broadcast_training_state(communicator& group, int root, model& m) {
  // The step count travels as a float: exact up to 2^24 steps.
  std::vector<float> step{static_cast<float>(m.steps())};
  FLEXSP_TRY(group.broadcast(step, root));
  const auto steps = static_cast<std::int64_t>(step[0]);
  const auto n = sz(m.size());
  if (in_place(group, m)) {
    for (float* buf : {m.params(), m.first_moments(), m.second_moments()})
      FLEXSP_TRY(group.broadcast(std::span<float>{buf, n}, root));
    FLEXSP_TRY(m.dev().synchronize());
    m.set_steps(steps);
    return {};
  }
  std::vector<float> p(n), first(n), second(n);
  FLEXSP_TRY(m.download_params(p));
  FLEXSP_TRY(m.download_moments(first, second));
  for (auto* buf : {&p, &first, &second}) FLEXSP_TRY(group.broadcast(*buf, root));
  return m.upload_state(p, first, second, steps);
}

namespace {
/// Copies the part of shard `from` (its local params, first, second moments: [3, local] floats)
/// that falls in `to`'s shard into `dst` ([3, to.local_size()] floats).
void copy_overlap(const shard_layout& from, std::span<const float> src, const shard_layout& to, std::span<float> dst) {
  const auto fn = from.local_size(), tn = to.local_size();
  for (std::size_t u = 0; u < from.units(); ++u) {
    const auto a = from.range(u, from.index()), b = to.range(u, to.index());
    const std::int64_t lo = std::max(a.begin, b.begin), hi = std::min(a.end, b.end);
    if (lo >= hi) continue;
    const auto s0 = from.local_offset(u) + (lo - a.begin), d0 = to.local_offset(u) + (lo - b.begin);
    for (std::int64_t part = 0; part < 3; ++part)
      std::copy_n(src.begin() + part * fn + s0, hi - lo, dst.begin() + part * tn + d0);
  }
}

expected<void> download_all(const model& m, std::vector<float>& out) {
  const auto n = sz(m.size());
  out.resize(3 * n);
  FLEXSP_TRY(m.download_params({out.data(), n}));
  return m.download_moments({out.data() + n, n}, {out.data() + 2 * n, n});
}
}  // namespace

expected<void> transfer_shards(communicator& world, std::span<const int> sources, const model* held, model& target) {
  const int count = static_cast<int>(sources.size());
  if (count < 1) return make_error(errc::invalid_argument, "transfer_shards: no source shards");
  for (int r : sources)
    if (r < 0 || r >= world.size())
      return make_error(errc::invalid_argument, "transfer_shards: source rank {} outside a world of {}", r, world.size());
  const auto& config = target.config();
  const auto& to = target.shards();
  std::vector<float> staged(3 * sz(to.local_size()), 0.0f), buf;
  std::vector<float> step{0.0f};
  for (int r = 0; r < count; ++r) {
    const auto from = shard_layout::of(config, count, r);
    const bool root = world.rank() == sources[sz(r)];
    if (root) {
      if (held == nullptr || held->shards() != from || held->config() != config)
        return make_error(errc::invalid_argument, "transfer_shards: rank {} is the source of shard {} of {} but holds {}",
                          world.rank(), r, count,
                          held ? fmt::format("shard {} of {}", held->shards().index(), held->shards().count())
                               : std::string{"nothing"});
      FLEXSP_TRY(download_all(*held, buf));
      step[0] = static_cast<float>(held->steps());  // exact up to 2^24 steps
    } else {
      buf.assign(3 * sz(from.local_size()), 0.0f);
    }
    FLEXSP_TRY(world.broadcast(buf, sources[sz(r)]));
    if (r == 0) FLEXSP_TRY(world.broadcast(step, sources[0]));
    copy_overlap(from, buf, to, staged);
  }
  const auto n = sz(to.local_size());
  const std::span<const float> all{staged};
  return target.upload_state(all.subspan(0, n), all.subspan(n, n), all.subspan(2 * n, n),
                             static_cast<std::int64_t>(step[0]));
}

namespace {
constexpr char kMagic[8] = {'F', 'L', 'E', 'X', 'S', 'P', 'C', 'K'};
constexpr std::uint32_t kVersion = 2, kShardVersion = 3;
constexpr std::size_t kHeaderV1 = 48, kHeaderV2 = 72, kHeaderV3 = 80;

using fnv1a = flexsp::fnv1a64;

template <class T>
void put(std::string& out, T v) {
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));
  out.append(b, sizeof(T));
}
template <class T>
T get_at(const std::string& in, std::size_t off) {
  T v;
  std::memcpy(&v, in.data() + off, sizeof(T));
  return v;
}
}  // namespace

expected<void> save_checkpoint(const std::filesystem::path& path, const model& m) {
  const auto& c = m.config();
  const auto n = sz(m.size());
  std::vector<float> p(n), first(n), second(n);
  FLEXSP_TRY(m.download_params(p));
  FLEXSP_TRY(m.download_moments(first, second));
  std::string buf;
  buf.reserve(kHeaderV3 + 12 * n + 8);
  buf.append(kMagic, 8);
  put<std::uint32_t>(buf, m.shards().sharded() ? kShardVersion : kVersion);
  for (auto v : {c.layers, c.d_model, c.heads, c.vocab, c.max_positions}) put<std::uint32_t>(buf, static_cast<std::uint32_t>(v));
  put<std::uint32_t>(buf, c.family == model_family::llama ? 1u : 0u);
  put<std::uint32_t>(buf, static_cast<std::uint32_t>(c.kv_heads));
  put<std::uint32_t>(buf, static_cast<std::uint32_t>(c.ffn));
  put<float>(buf, c.rope_theta);
  put<float>(buf, c.norm_eps);
  if (m.shards().sharded()) {
    put<std::uint32_t>(buf, static_cast<std::uint32_t>(m.shards().count()));
    put<std::uint32_t>(buf, static_cast<std::uint32_t>(m.shards().index()));
    put<std::uint32_t>(buf, 0);
  } else {
    put<std::uint32_t>(buf, 0);
  }
  put<std::uint64_t>(buf, static_cast<std::uint64_t>(m.steps()));
  put<std::uint64_t>(buf, n);
  for (const auto* s : {&p, &first, &second})
    buf.append(reinterpret_cast<const char*>(s->data()), s->size() * sizeof(float));
  fnv1a h;
  h.add(buf.data(), buf.size());
  put<std::uint64_t>(buf, h.h);
  auto tmp = path;
  tmp += ".tmp";
  {
    std::ofstream out{tmp, std::ios::binary | std::ios::trunc};
    out.write(buf.data(), static_cast<std::streamsize>(buf.size()));
    out.flush();
    if (!out) return make_error(errc::io, "cannot write checkpoint {}", tmp.string());
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) return make_error(errc::io, "cannot rename {} to {}: {}", tmp.string(), path.string(), ec.message());
  return {};
}

namespace {
// The model a checkpoint header describes (a version-1 header: a GPT-2 without the later
// fields, which keep their defaults).
model_config config_in_header(const std::string& buf, std::uint32_t version) {
  model_config c;
  c.layers = get_at<std::uint32_t>(buf, 12);
  c.d_model = get_at<std::uint32_t>(buf, 16);
  c.heads = get_at<std::uint32_t>(buf, 20);
  c.vocab = get_at<std::uint32_t>(buf, 24);
  c.max_positions = get_at<std::uint32_t>(buf, 28);
  if (version >= 2) {
    c.family = get_at<std::uint32_t>(buf, 32) == 1 ? model_family::llama : model_family::gpt2;
    c.kv_heads = get_at<std::uint32_t>(buf, 36);
    c.ffn = get_at<std::uint32_t>(buf, 40);
    c.rope_theta = get_at<float>(buf, 44);
    c.norm_eps = get_at<float>(buf, 48);
  }
  return c;
}
}  // namespace

std::string shard_file_name(int count, int index) { return fmt::format("shard-{:05d}-of-{:05d}.ckpt", index, count); }

namespace {
/// The files of a checkpoint: `path` itself, or every shard file of a sharded checkpoint
/// directory (all `count` of them, in shard order).
expected<std::vector<std::filesystem::path>> checkpoint_files(const std::filesystem::path& path) {
  std::error_code ec;
  if (!std::filesystem::is_directory(path, ec)) return std::vector<std::filesystem::path>{path};
  int count = 0;
  for (const auto& e : std::filesystem::directory_iterator{path, ec}) {
    int index = 0, of = 0;
    const auto name = e.path().filename().string();
    if (std::sscanf(name.c_str(), "shard-%d-of-%d.ckpt", &index, &of) == 2 && of > 0 && name == shard_file_name(of, index)) {
      if (count != 0 && of != count)
        return make_error(errc::invalid_argument, "{}: shard files of {} and of {} shards", path.string(), count, of);
      count = of;
    }
  }
  if (ec) return make_error(errc::io, "cannot list checkpoint directory {}: {}", path.string(), ec.message());
  if (count == 0) return make_error(errc::not_found, "{}: a directory without shard files", path.string());
  std::vector<std::filesystem::path> files;
  for (int r = 0; r < count; ++r) {
    auto f = path / shard_file_name(count, r);
    if (!std::filesystem::exists(f, ec))
      return make_error(errc::invalid_argument, "{}: shard {} of {} is missing", path.string(), r, count);
    files.push_back(std::move(f));
  }
  return files;
}

/// One checkpoint file, checked against the model `want`: its shard and its [3, local] floats.
struct checkpoint_file {
  int count = 1, index = 0;
  std::uint64_t steps = 0;
  std::vector<float> data;
};

expected<checkpoint_file> read_checkpoint_file(const std::filesystem::path& path, const model_config& c) {
  std::ifstream in{path, std::ios::binary};
  if (!in) return make_error(errc::not_found, "checkpoint {} cannot be opened", path.string());
  std::string buf{std::istreambuf_iterator<char>{in}, std::istreambuf_iterator<char>{}};
  const auto where = path.string();
  if (buf.size() < kHeaderV1 + 8 || std::memcmp(buf.data(), kMagic, 8) != 0)
    return make_error(errc::invalid_argument, "{}: not a flexsp checkpoint (bad magic or shorter than a header)", where);
  const auto version = get_at<std::uint32_t>(buf, 8);
  if (version < 1 || version > kShardVersion)
    return make_error(errc::invalid_argument, "{}: format version {} (this build reads 1 to {})", where, version,
                      kShardVersion);
  const std::size_t header = version == 1 ? kHeaderV1 : version == 2 ? kHeaderV2 : kHeaderV3;
  if (buf.size() < header + 8)
    return make_error(errc::invalid_argument, "{}: shorter than its header", where);
  const std::int64_t want[5] = {c.layers, c.d_model, c.heads, c.vocab, c.max_positions};
  static constexpr const char* kNames[5] = {"layers", "d_model", "heads", "vocab", "max_positions"};
  for (std::size_t i = 0; i < 5; ++i) {
    const auto got = get_at<std::uint32_t>(buf, 12 + 4 * i);
    if (got != static_cast<std::uint32_t>(want[i]))
      return make_error(errc::invalid_argument, "{}: {} is {} in the checkpoint but {} in the model", where, kNames[i],
                        got, want[i]);
  }
  const model_config saved = config_in_header(buf, version);
  if (saved.family != c.family)
    return make_error(errc::invalid_argument, "{}: a {} model in the checkpoint, {} in the job", where,
                      to_string(saved.family), to_string(c.family));
  if (saved.kv() != c.kv() || saved.ffn_dim() != c.ffn_dim())
    return make_error(errc::invalid_argument, "{}: kv_heads/ffn are {}/{} in the checkpoint but {}/{} in the model",
                      where, saved.kv(), saved.ffn_dim(), c.kv(), c.ffn_dim());
  if (version >= 2 && (saved.rope_theta != c.rope_theta || saved.norm_eps != c.norm_eps))
    return make_error(errc::invalid_argument, "{}: rope_theta/norm_eps are {}/{} in the checkpoint but {}/{} in the model",
                      where, saved.rope_theta, saved.norm_eps, c.rope_theta, c.norm_eps);
  checkpoint_file f;
  if (version == kShardVersion) {
    f.count = static_cast<int>(get_at<std::uint32_t>(buf, 52));
    f.index = static_cast<int>(get_at<std::uint32_t>(buf, 56));
    if (f.count < 1 || f.index < 0 || f.index >= f.count)
      return make_error(errc::invalid_argument, "{}: shard {} of {}", where, f.index, f.count);
  }
  f.steps = get_at<std::uint64_t>(buf, header - 16);
  const auto n = get_at<std::uint64_t>(buf, header - 8);
  const auto layout = shard_layout::of(c, f.count, f.index);
  if (n != static_cast<std::uint64_t>(layout.local_size()))
    return make_error(errc::invalid_argument, "{}: {} parameters in the checkpoint, {} in the model's shard {} of {}",
                      where, n, layout.local_size(), f.index, f.count);
  const std::size_t expected_size = header + 12 * n + 8;
  if (buf.size() != expected_size)
    return make_error(errc::invalid_argument, "{}: {} bytes, expected {} (truncated or padded)", where, buf.size(),
                      expected_size);
  fnv1a h;
  h.add(buf.data(), expected_size - 8);
  if (h.h != get_at<std::uint64_t>(buf, expected_size - 8))
    return make_error(errc::invalid_argument, "{}: checksum mismatch (file is corrupt)", where);
  f.data.resize(3 * n);
  std::memcpy(f.data.data(), buf.data() + header, 3 * n * sizeof(float));
  return f;
}
}  // namespace

expected<model_config> read_checkpoint_config(const std::filesystem::path& dir_or_file) {
  FLEXSP_TRY_ASSIGN(const auto files, checkpoint_files(dir_or_file));
  const auto& path = files.front();
  std::ifstream in{path, std::ios::binary};
  if (!in) return make_error(errc::not_found, "checkpoint {} cannot be opened", path.string());
  std::string buf(kHeaderV2, '\0');
  in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
  buf.resize(static_cast<std::size_t>(in.gcount()));
  const auto where = path.string();
  if (buf.size() < kHeaderV1 || std::memcmp(buf.data(), kMagic, 8) != 0)
    return make_error(errc::invalid_argument, "{}: not a flexsp checkpoint (bad magic or shorter than a header)", where);
  const auto version = get_at<std::uint32_t>(buf, 8);
  if (version < 1 || version > kShardVersion || (version > 1 && buf.size() < kHeaderV2))
    return make_error(errc::invalid_argument, "{}: format version {} (this build reads 1 to {})", where, version,
                      kShardVersion);
  const model_config c = config_in_header(buf, version);
  if (auto ok = c.validate(); !ok)
    return make_error(errc::invalid_argument, "{}: its header describes no valid model: {}", where, ok.error().message());
  return c;
}

expected<void> load_checkpoint(const std::filesystem::path& path, model& m) {
  FLEXSP_TRY_ASSIGN(const auto files, checkpoint_files(path));
  const auto& to = m.shards();
  std::vector<float> staged(3 * sz(to.local_size()), 0.0f);
  std::optional<std::uint64_t> steps;
  for (std::size_t i = 0; i < files.size(); ++i) {
    FLEXSP_TRY_ASSIGN(const auto f, read_checkpoint_file(files[i], m.config()));
    if (f.count != static_cast<int>(files.size()) || f.index != static_cast<int>(i))
      return make_error(errc::invalid_argument,
                        "{}: holds shard {} of {}{}", files[i].string(), f.index, f.count,
                        files.size() == 1 ? "; load the directory of all its shards" : " where another was expected");
    if (steps && *steps != f.steps)
      return make_error(errc::invalid_argument, "{}: step {} but shard 0 is at step {}", files[i].string(), f.steps,
                        *steps);
    steps = f.steps;
    copy_overlap(shard_layout::of(m.config(), f.count, f.index), f.data, to, staged);
  }
  const auto n = sz(to.local_size());
  const std::span<const float> all{staged};
  return m.upload_state(all.subspan(0, n), all.subspan(n, n), all.subspan(2 * n, n),
                        static_cast<std::int64_t>(steps.value_or(0)));
}

}  // namespace flexsp::kernels
