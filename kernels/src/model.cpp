#include "flexsp/kernels/model.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <random>

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
}  // namespace

expected<void> gpt_config::validate() const {
  if (layers < 1) return make_error(errc::invalid_argument, "gpt_config.layers = {} (must be >= 1)", layers);
  if (d_model < 1) return make_error(errc::invalid_argument, "gpt_config.d_model = {} (must be >= 1)", d_model);
  if (heads < 1 || d_model % heads != 0)
    return make_error(errc::invalid_argument, "gpt_config.heads = {} must divide d_model = {}", heads, d_model);
  if (vocab < 1) return make_error(errc::invalid_argument, "gpt_config.vocab = {} (must be >= 1)", vocab);
  if (max_positions < 1)
    return make_error(errc::invalid_argument, "gpt_config.max_positions = {} (must be >= 1)", max_positions);
  return {};
}

std::int64_t gpt_config::parameter_count() const noexcept {
  const std::int64_t D = d_model;
  const std::int64_t per_layer = 2 * D + D * 3 * D + 3 * D + D * D + D + 2 * D + D * 4 * D + 4 * D + 4 * D * D + D;
  return vocab * D + max_positions * D + layers * per_layer + 2 * D;
}

struct gpt_model::layer_params {
  std::span<float> ln1_g, ln1_b, w_qkv, b_qkv, w_o, b_o, ln2_g, ln2_b, w_fc, b_fc, w_proj, b_proj;
};

expected<gpt_model> gpt_model::create(const gpt_config& config, std::uint64_t seed) {
  FLEXSP_TRY(config.validate());
  gpt_model m;
  m.config_ = config;
  const std::int64_t D = config.d_model;
  std::int64_t off = 0;
  auto add = [&](std::string name, shape_t shape, bool decay) {
    const auto n = numel_of(shape);
    m.table_.push_back({std::move(name), off, std::move(shape), decay});
    off += n;
  };
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
  FLEXSP_ASSERT(off == config.parameter_count(), "parameter table {} vs count {}", off, config.parameter_count());
  m.params_.assign(sz(off), 0.0f);
  m.grads_.assign(sz(off), 0.0f);
  normal_source rng{seed};
  const float proj_std = 0.02f / std::sqrt(2.0f * static_cast<float>(config.layers));
  for (const auto& p : m.table_) {
    float* v = m.params_.data() + p.offset;
    const auto n = numel_of(p.shape);
    const bool gain = p.name.ends_with(".g");
    const bool is_matrix = p.shape.size() == 2;
    const bool is_proj = p.name.ends_with("w_o") || p.name.ends_with("w_proj");
    for (std::int64_t i = 0; i < n; ++i)
      v[i] = gain ? 1.0f : is_matrix ? rng.next(is_proj ? proj_std : 0.02f) : 0.0f;
  }
  return m;
}

expected<parameter_info> gpt_model::find(std::string_view name) const {
  for (const auto& p : table_)
    if (p.name == name) return p;
  return make_error(errc::not_found, "no parameter named '{}'", name);
}

void gpt_model::zero_grads() noexcept { std::fill(grads_.begin(), grads_.end(), 0.0f); }

gpt_model::layer_params gpt_model::layer(std::int64_t l, std::span<float> buf) const {
  const auto base = sz(2 + l * 12);
  auto at = [&](std::size_t i) {
    const auto& p = table_[base + i];
    return buf.subspan(sz(p.offset), sz(numel_of(p.shape)));
  };
  return {at(0), at(1), at(2), at(3), at(4), at(5), at(6), at(7), at(8), at(9), at(10), at(11)};
}

namespace {
struct layer_cache {
  std::vector<float> x_in, ln1, ln1_mean, ln1_rstd, qkv, qkv_h, att_h, lse, att, x_mid, ln2, ln2_mean, ln2_rstd, fc,
      act;
};
void resize(std::vector<float>& v, std::int64_t n) { v.assign(sz(n), 0.0f); }
}  // namespace

expected<micro_batch_result> gpt_model::forward_backward(communicator& group, const ulysses_layout& layout,
                                                         const local_inputs& in, float loss_scale, bool backward,
                                                         bool keep_logits) {
  const auto& c = config_;
  const std::int64_t D = c.d_model, H = c.heads, Dh = c.head_dim(), V = c.vocab;
  if (layout.heads() != H)
    return make_error(errc::invalid_argument, "layout has {} heads, model {}", layout.heads(), H);
  if (group.size() != layout.degree() || group.rank() != layout.rank())
    return make_error(errc::invalid_argument, "group rank {}/{} does not match layout rank {}/{}", group.rank(),
                      group.size(), layout.rank(), layout.degree());
  const std::int64_t n = layout.local_tokens(), N = layout.total_tokens();
  if (static_cast<std::int64_t>(in.tokens.size()) != n || in.targets.size() != in.tokens.size() ||
      in.positions.size() != in.tokens.size())
    return make_error(errc::invalid_argument, "inputs hold {} tokens, {} targets, {} positions; layout expects {}",
                      in.tokens.size(), in.targets.size(), in.positions.size(), n);
  for (auto L : layout.lengths())
    if (L > c.max_positions)
      return make_error(errc::invalid_argument, "sequence of {} tokens exceeds max_positions {}", L, c.max_positions);
  const std::int64_t hm = layout.head_share(layout.rank()).size;
  const auto& cu = layout.cu_seqlens();
  std::span<float> P = params_;
  const auto wte = P.subspan(sz(table_[0].offset), sz(V * D));
  const auto wpe = P.subspan(sz(table_[1].offset), sz(c.max_positions * D));
  const auto lnf_g = P.subspan(sz(table_[table_.size() - 2].offset), sz(D));
  const auto lnf_b = P.subspan(sz(table_[table_.size() - 1].offset), sz(D));

  std::vector<float> scratch;
  std::vector<layer_cache> caches(sz(c.layers));
  std::vector<float> x(sz(n * D));  // [n, D] residual stream
  FLEXSP_TRY(embedding_forward(in.tokens, in.positions, wte, wpe, x, D));

  attention::forward_args fa;
  fa.cu_seqlens = cu;
  fa.heads = hm;
  fa.head_dim = Dh;
  std::vector<float> attn_ws(sz(attention::workspace_size(fa)));

  for (std::int64_t l = 0; l < c.layers; ++l) {
    auto& k = caches[sz(l)];
    const auto lp = layer(l, P);
    k.x_in = x;
    resize(k.ln1, n * D), resize(k.ln1_mean, n), resize(k.ln1_rstd, n);
    layernorm_forward(k.x_in, lp.ln1_g, lp.ln1_b, k.ln1, k.ln1_mean, k.ln1_rstd, D);
    resize(k.qkv, n * 3 * D);
    linear_forward(k.ln1, lp.w_qkv, lp.b_qkv, k.qkv, n, D, 3 * D);
    resize(k.qkv_h, 3 * N * hm * Dh);
    FLEXSP_TRY(layout.scatter_heads(group, k.qkv, k.qkv_h, 3, Dh, scratch));  // -> [3, N, hm, Dh]
    resize(k.att_h, N * hm * Dh), resize(k.lse, N * hm);
    fa.q = k.qkv_h.data();
    fa.k = k.qkv_h.data() + N * hm * Dh;
    fa.v = k.qkv_h.data() + 2 * N * hm * Dh;
    fa.out = k.att_h.data();
    fa.lse = k.lse.data();
    FLEXSP_TRY(attention::can_implement(fa));
    attention::run(fa, attn_ws);
    resize(k.att, n * D);
    FLEXSP_TRY(layout.gather_heads(group, k.att_h, k.att, 1, Dh, scratch));  // -> [n, D]
    resize(k.x_mid, n * D);
    linear_forward(k.att, lp.w_o, lp.b_o, k.x_mid, n, D, D);
    residual_forward(k.x_mid, k.x_in, k.x_mid);
    resize(k.ln2, n * D), resize(k.ln2_mean, n), resize(k.ln2_rstd, n);
    layernorm_forward(k.x_mid, lp.ln2_g, lp.ln2_b, k.ln2, k.ln2_mean, k.ln2_rstd, D);
    resize(k.fc, n * 4 * D), resize(k.act, n * 4 * D);
    linear_forward(k.ln2, lp.w_fc, lp.b_fc, k.fc, n, D, 4 * D);
    gelu_forward(k.fc, k.act);
    linear_forward(k.act, lp.w_proj, lp.b_proj, x, n, 4 * D, D);
    residual_forward(x, k.x_mid, x);
  }
  std::vector<float> lnf(sz(n * D)), lnf_mean(sz(n)), lnf_rstd(sz(n));
  layernorm_forward(x, lnf_g, lnf_b, lnf, lnf_mean, lnf_rstd, D);
  std::vector<float> logits(sz(n * V));
  gemm(false, true, n, V, D, 1.0f, lnf.data(), D, wte.data(), D, 0.0f, logits.data(), V);
  std::vector<float> dlogits(backward ? sz(n * V) : 0);
  FLEXSP_TRY_ASSIGN(const double loss_sum, cross_entropy_forward_backward(logits, in.targets, dlogits, V, loss_scale));
  micro_batch_result result;
  result.loss_sum = loss_sum;
  result.tokens = n;
  if (keep_logits) result.logits = tensor{{n, V}, std::move(logits)};
  if (!backward) return result;

  std::span<float> G = grads_;
  const auto dwte = G.subspan(sz(table_[0].offset), sz(V * D));
  const auto dwpe = G.subspan(sz(table_[1].offset), sz(c.max_positions * D));
  const auto dlnf_g = G.subspan(sz(table_[table_.size() - 2].offset), sz(D));
  const auto dlnf_b = G.subspan(sz(table_[table_.size() - 1].offset), sz(D));
  std::vector<float> dlnf(sz(n * D));
  gemm(false, false, n, D, V, 1.0f, dlogits.data(), V, wte.data(), D, 0.0f, dlnf.data(), D);
  gemm(true, false, V, D, n, 1.0f, dlogits.data(), V, lnf.data(), D, 1.0f, dwte.data(), D);
  std::vector<float> dx(sz(n * D));  // gradient of the residual stream
  layernorm_backward(dlnf, x, lnf_g, lnf_mean, lnf_rstd, dx, dlnf_g, dlnf_b, D);

  attention::backward_args ba;
  ba.cu_seqlens = cu;
  ba.heads = hm;
  ba.head_dim = Dh;
  std::vector<float> attn_bws(sz(attention::workspace_size(ba)));
  std::vector<float> dact(sz(n * 4 * D)), dfc(sz(n * 4 * D)), dln(sz(n * D)), dtmp(sz(n * D)), datt(sz(n * D));
  std::vector<float> datt_h(sz(N * hm * Dh)), dqkv_h(sz(3 * N * hm * Dh)), dqkv(sz(n * 3 * D));
  for (std::int64_t l = c.layers - 1; l >= 0; --l) {
    auto& k = caches[sz(l)];
    const auto lp = layer(l, P);
    const auto lg = layer(l, G);
    // x_out = x_mid + proj(gelu(fc(ln2(x_mid))))
    linear_backward(dx, k.act, lp.w_proj, dact, lg.w_proj, lg.b_proj, n, 4 * D, D);
    gelu_backward(dact, k.fc, dfc);
    linear_backward(dfc, k.ln2, lp.w_fc, dln, lg.w_fc, lg.b_fc, n, D, 4 * D);
    layernorm_backward(dln, k.x_mid, lp.ln2_g, k.ln2_mean, k.ln2_rstd, dtmp, lg.ln2_g, lg.ln2_b, D);
    for (std::size_t i = 0; i < dx.size(); ++i) dx[i] += dtmp[i];  // now d x_mid
    // x_mid = x_in + o_proj(attention(qkv(ln1(x_in))))
    linear_backward(dx, k.att, lp.w_o, datt, lg.w_o, lg.b_o, n, D, D);
    FLEXSP_TRY(layout.scatter_heads(group, datt, datt_h, 1, Dh, scratch));
    ba.q = k.qkv_h.data();
    ba.k = k.qkv_h.data() + N * hm * Dh;
    ba.v = k.qkv_h.data() + 2 * N * hm * Dh;
    ba.out = k.att_h.data();
    ba.lse = k.lse.data();
    ba.dout = datt_h.data();
    ba.dq = dqkv_h.data();
    ba.dk = dqkv_h.data() + N * hm * Dh;
    ba.dv = dqkv_h.data() + 2 * N * hm * Dh;
    attention::run(ba, attn_bws);
    FLEXSP_TRY(layout.gather_heads(group, dqkv_h, dqkv, 3, Dh, scratch));
    linear_backward(dqkv, k.ln1, lp.w_qkv, dln, lg.w_qkv, lg.b_qkv, n, D, 3 * D);
    layernorm_backward(dln, k.x_in, lp.ln1_g, k.ln1_mean, k.ln1_rstd, dtmp, lg.ln1_g, lg.ln1_b, D);
    for (std::size_t i = 0; i < dx.size(); ++i) dx[i] += dtmp[i];  // now d x_in
    k = layer_cache{};
  }
  embedding_backward(in.tokens, in.positions, dx, dwte, dwpe, D);
  return result;
}

expected<micro_batch_result> run_micro_batch(gpt_model& model, communicator& group,
                                             std::span<const std::vector<std::int32_t>> sequences, float loss_scale) {
  std::vector<std::int64_t> lengths;
  lengths.reserve(sequences.size());
  for (std::size_t i = 0; i < sequences.size(); ++i) {
    if (sequences[i].empty())
      return make_error(errc::invalid_argument, "sequence {} has no ids (a sequence of length L carries L + 1)", i);
    lengths.push_back(static_cast<std::int64_t>(sequences[i].size()) - 1);
  }
  FLEXSP_TRY_ASSIGN(auto layout, ulysses_layout::make(std::move(lengths), group.size(), group.rank(),
                                                      model.config().heads));
  FLEXSP_TRY_ASSIGN(auto inputs, shard_inputs(layout, sequences));
  return model.forward_backward(group, layout, inputs, loss_scale);
}

expected<void> broadcast_training_state(communicator& group, int root, gpt_model& model, adamw_optimizer& optimizer) {
  FLEXSP_TRY(group.broadcast(model.params(), root));
  FLEXSP_TRY(group.broadcast(optimizer.first_moments(), root));
  FLEXSP_TRY(group.broadcast(optimizer.second_moments(), root));
  // The step count travels as a float: exact up to 2^24 steps.
  std::vector<float> step{static_cast<float>(optimizer.steps())};
  FLEXSP_TRY(group.broadcast(step, root));
  optimizer.set_steps(static_cast<std::int64_t>(step[0]));
  return {};
}

expected<void> all_reduce_gradients(communicator& world, gpt_model& model) {
  return world.all_reduce_sum(model.grads());
}

adamw_optimizer::adamw_optimizer(const gpt_model& model, adamw_params params)
    : params_{params}, m_(model.params().size(), 0.0f), v_(model.params().size(), 0.0f) {}

double adamw_optimizer::step(gpt_model& model, double max_grad_norm) {
  FLEXSP_EXPECTS(m_.size() == model.params().size(), "optimizer built for {} parameters, model has {}", m_.size(),
                 model.params().size());
  const double norm = clip_grad_norm(model.grads(), max_grad_norm);
  ++step_;
  for (const auto& p : model.parameters()) {
    const auto off = sz(p.offset), cnt = sz(numel_of(p.shape));
    adamw_params hp = params_;
    if (!p.decay) hp.weight_decay = 0.0f;
    adamw_update(model.params().subspan(off, cnt), model.grads().subspan(off, cnt), std::span{m_}.subspan(off, cnt),
                 std::span{v_}.subspan(off, cnt), step_, hp);
  }
  return norm;
}

namespace {
constexpr char kMagic[8] = {'F', 'L', 'E', 'X', 'S', 'P', 'C', 'K'};
constexpr std::uint32_t kVersion = 1;

struct fnv1a {
  std::uint64_t h = 0xcbf29ce484222325ull;
  void add(const void* data, std::size_t n) {
    const auto* p = static_cast<const unsigned char*>(data);
    for (std::size_t i = 0; i < n; ++i) {
      h ^= p[i];
      h *= 0x100000001b3ull;
    }
  }
};

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

expected<void> save_checkpoint(const std::filesystem::path& path, const gpt_model& model,
                               const adamw_optimizer& optimizer) {
  const auto& c = model.config();
  std::string buf;
  const auto n = model.params().size();
  buf.reserve(48 + 12 * n + 8);
  buf.append(kMagic, 8);
  put<std::uint32_t>(buf, kVersion);
  for (auto v : {c.layers, c.d_model, c.heads, c.vocab, c.max_positions}) put<std::uint32_t>(buf, static_cast<std::uint32_t>(v));
  put<std::uint64_t>(buf, static_cast<std::uint64_t>(optimizer.steps()));
  put<std::uint64_t>(buf, n);
  for (auto s : {model.params(), optimizer.first_moments(), optimizer.second_moments()})
    buf.append(reinterpret_cast<const char*>(s.data()), s.size_bytes());
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

expected<void> load_checkpoint(const std::filesystem::path& path, gpt_model& model, adamw_optimizer& optimizer) {
  std::ifstream in{path, std::ios::binary};
  if (!in) return make_error(errc::not_found, "checkpoint {} cannot be opened", path.string());
  std::string buf{std::istreambuf_iterator<char>{in}, std::istreambuf_iterator<char>{}};
  const auto where = path.string();
  if (buf.size() < 56 || std::memcmp(buf.data(), kMagic, 8) != 0)
    return make_error(errc::invalid_argument, "{}: not a flexsp checkpoint (bad magic or shorter than a header)", where);
  if (const auto v = get_at<std::uint32_t>(buf, 8); v != kVersion)
    return make_error(errc::invalid_argument, "{}: format version {} (this build reads {})", where, v, kVersion);
  const auto& c = model.config();
  const std::int64_t want[5] = {c.layers, c.d_model, c.heads, c.vocab, c.max_positions};
  static constexpr const char* kNames[5] = {"layers", "d_model", "heads", "vocab", "max_positions"};
  for (std::size_t i = 0; i < 5; ++i) {
    const auto got = get_at<std::uint32_t>(buf, 12 + 4 * i);
    if (got != static_cast<std::uint32_t>(want[i]))
      return make_error(errc::invalid_argument, "{}: {} is {} in the checkpoint but {} in the model", where, kNames[i],
                        got, want[i]);
  }
  const auto steps = get_at<std::uint64_t>(buf, 32);
  const auto n = get_at<std::uint64_t>(buf, 40);
  if (n != model.params().size())
    return make_error(errc::invalid_argument, "{}: {} parameters in the checkpoint, {} in the model", where, n,
                      model.params().size());
  const std::size_t expected_size = 48 + 12 * n + 8;
  if (buf.size() != expected_size)
    return make_error(errc::invalid_argument, "{}: {} bytes, expected {} (truncated or padded)", where, buf.size(),
                      expected_size);
  fnv1a h;
  h.add(buf.data(), expected_size - 8);
  if (h.h != get_at<std::uint64_t>(buf, expected_size - 8))
    return make_error(errc::invalid_argument, "{}: checksum mismatch (file is corrupt)", where);
  const char* p = buf.data() + 48;
  for (auto s : {model.params(), optimizer.first_moments(), optimizer.second_moments()}) {
    std::memcpy(s.data(), p, s.size_bytes());
    p += s.size_bytes();
  }
  optimizer.set_steps(static_cast<std::int64_t>(steps));
  return {};
}

}  // namespace flexsp::kernels
