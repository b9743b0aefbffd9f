#include "flexsp/kernels/attention.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string_view>
#include <thread>
#include <vector>

#include "flexsp/core/check.hpp"
#include "attention_tiles.hpp"
#include "cpu_pool.hpp"

namespace flexsp::kernels::attention {

namespace {

template <class Args>
expected<void> check_common(const Args& a) {
  if (a.cu_seqlens.empty() || a.cu_seqlens[0] != 0)
    return make_error(errc::invalid_argument, "attention: cu_seqlens must start with 0 (size {})", a.cu_seqlens.size());
  for (std::size_t i = 1; i < a.cu_seqlens.size(); ++i)
    if (a.cu_seqlens[i] < a.cu_seqlens[i - 1])
      return make_error(errc::invalid_argument, "attention: cu_seqlens decreases at index {} ({} < {})", i,
                        a.cu_seqlens[i], a.cu_seqlens[i - 1]);
  if (a.heads < 0 || a.head_dim <= 0)
    return make_error(errc::invalid_argument, "attention: heads {} head_dim {}", a.heads, a.head_dim);
  return {};
}

std::int64_t tokens_of(std::span<const std::int64_t> cu) { return cu.back(); }
}  // namespace

expected<void> can_implement(const forward_args& a) {
  FLEXSP_TRY(check_common(a));
  if (tokens_of(a.cu_seqlens) > 0 && a.heads > 0 && (!a.q || !a.k || !a.v || !a.out || !a.lse))
    return make_error(errc::invalid_argument, "attention forward: null buffer with {} tokens", tokens_of(a.cu_seqlens));
  return {};
}

expected<void> can_implement(const backward_args& a) {
  FLEXSP_TRY(check_common(a));
  if (tokens_of(a.cu_seqlens) > 0 && a.heads > 0 &&
      (!a.q || !a.k || !a.v || !a.out || !a.lse || !a.dout || !a.dq || !a.dk || !a.dv))
    return make_error(errc::invalid_argument, "attention backward: null buffer with {} tokens",
                      tokens_of(a.cu_seqlens));
  return {};
}

namespace {

int resolve_threads(int requested) {
  if (requested > 0) return requested;
  return std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
}

using kernels::detail::parallel_for;
using detail::tile_item;

const detail::tile_kernels* all_variants[] = {&detail::avx512::kernels, &detail::avx2::kernels,
                                             &detail::baseline::kernels};

bool cpu_runs(const detail::tile_kernels& k) {
  const std::string_view isa = k.isa;
#if defined(__x86_64__) || defined(__i386__)
  if (isa == "avx512") return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq");
  if (isa == "avx2") return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
  return isa == "baseline";
}

const detail::tile_kernels& kernels_for(std::string_view variant) {
  if (variant.empty()) return detail::best_tile_kernels();
  for (const auto* k : all_variants)
    if (k->isa == variant && cpu_runs(*k)) return *k;
  FLEXSP_EXPECTS(false, "attention: variant '{}' is not one this CPU runs", variant);
  return detail::baseline::kernels;
}
}  // namespace

namespace detail {
std::int64_t forward_scratch(std::int64_t head_dim) { return 2 * kTileQ * head_dim + kTileQ * kTileK + 4 * kTileQ; }
std::int64_t backward_scratch(std::int64_t head_dim) { return 5 * kTileQ * head_dim + 2 * kTileQ * kTileK + 2 * kTileQ; }

const tile_kernels& best_tile_kernels() {
  static const tile_kernels& best = []() -> const tile_kernels& {
    for (const auto* k : all_variants)
      if (cpu_runs(*k)) return *k;
    return baseline::kernels;
  }();
  return best;
}
}  // namespace detail

std::vector<std::string_view> supported_variants() {
  std::vector<std::string_view> out;
  for (const auto* k : all_variants)
    if (cpu_runs(*k)) out.push_back(k->isa);
  return out;
}

namespace {
std::int64_t head_major_floats(std::span<const std::int64_t> cu, std::int64_t heads, std::int64_t head_dim) {
  return cu.empty() ? 0 : cu.back() * std::max<std::int64_t>(0, heads) * head_dim;
}

// Copies [tokens, heads, head_dim] rows to [heads][tokens][head_dim] (or back, `inverse`), in
// parallel over blocks of tokens.
void reorder(const float* src, float* dst, std::int64_t tokens, std::int64_t heads, std::int64_t head_dim, int threads,
             bool inverse) {
  constexpr std::int64_t kBlock = 256;
  const auto bytes = static_cast<std::size_t>(head_dim) * sizeof(float);
  parallel_for(static_cast<std::size_t>((tokens + kBlock - 1) / kBlock), threads, [&](std::size_t b, std::size_t) {
    const std::int64_t first = static_cast<std::int64_t>(b) * kBlock, last = std::min(tokens, first + kBlock);
    for (std::int64_t h = 0; h < heads; ++h)
      for (std::int64_t t = first; t < last; ++t) {
        const std::int64_t token_major = (t * heads + h) * head_dim, head_major = (h * tokens + t) * head_dim;
        if (inverse)
          std::memcpy(dst + token_major, src + head_major, bytes);
        else
          std::memcpy(dst + head_major, src + token_major, bytes);
      }
  });
}
}  // namespace

std::int64_t workspace_size(const forward_args& a) {
  return 2 * head_major_floats(a.cu_seqlens, a.heads, a.head_dim) +
         resolve_threads(a.threads) * detail::forward_scratch(a.head_dim);
}

std::int64_t workspace_size(const backward_args& a) {
  return 4 * head_major_floats(a.cu_seqlens, a.heads, a.head_dim) +
         resolve_threads(a.threads) * detail::backward_scratch(a.head_dim);
}

void run(const forward_args& a, std::span<float> ws) {
  FLEXSP_EXPECTS(static_cast<std::int64_t>(ws.size()) >= workspace_size(a), "attention workspace {} < {}", ws.size(),
                 workspace_size(a));
  std::vector<tile_item> items;
  for (std::size_t s = 0; s + 1 < a.cu_seqlens.size(); ++s) {
    const std::int64_t base = a.cu_seqlens[s], len = a.cu_seqlens[s + 1] - base;
    for (std::int64_t h = 0; h < a.heads; ++h)
      for (std::int64_t i0 = 0; i0 < len; i0 += kTileQ) items.push_back({base, len, h, i0, i0 + kTileQ});
  }
  std::sort(items.begin(), items.end(), [](const tile_item& x, const tile_item& y) { return x.cost > y.cost; });
  const int threads = resolve_threads(a.threads);
  const std::int64_t N = a.cu_seqlens.back(), hm = head_major_floats(a.cu_seqlens, a.heads, a.head_dim);
  detail::head_major kv{ws.data(), ws.data() + hm, nullptr, nullptr, N, a.head_dim};
  reorder(a.k, ws.data(), N, a.heads, a.head_dim, threads, false);
  reorder(a.v, ws.data() + hm, N, a.heads, a.head_dim, threads, false);
  float* scratch = ws.data() + 2 * hm;
  const auto per_thread = detail::forward_scratch(a.head_dim);
  const auto forward_tile = kernels_for(a.variant).forward_tile;
  parallel_for(items.size(), threads,
               [&](std::size_t i, std::size_t t) { forward_tile(a, kv, items[i], scratch + t * per_thread); });
}

void run(const backward_args& a, std::span<float> ws) {
  FLEXSP_EXPECTS(static_cast<std::int64_t>(ws.size()) >= workspace_size(a), "attention workspace {} < {}", ws.size(),
                 workspace_size(a));
  const int threads = resolve_threads(a.threads);
  // One item per (sequence, head) when the work balances over the threads; a head whose share
  // is more than one thread's (a long sequence of an SP rank holding few heads) is split into
  // key-tile items (its dK, dV) and query-tile items (its dQ), which recompute P and dS but give
  // the same bits.
  enum class kind : std::uint8_t { head, keys, queries };
  struct item {
    kind k;
    std::int64_t base, len, head, tile;
    double cost;
  };
  double total = 0;
  for (std::size_t s = 0; s + 1 < a.cu_seqlens.size(); ++s) {
    const auto len = static_cast<double>(a.cu_seqlens[s + 1] - a.cu_seqlens[s]);
    total += len * len * static_cast<double>(a.heads);
  }
  std::vector<item> items;
  for (std::size_t s = 0; s + 1 < a.cu_seqlens.size(); ++s) {
    const std::int64_t base = a.cu_seqlens[s], len = a.cu_seqlens[s + 1] - base;
    const double whole = static_cast<double>(len) * static_cast<double>(len);
    const bool split = threads > 1 && len > kTileQ && whole * threads > total;
    for (std::int64_t h = 0; h < a.heads; ++h) {
      if (!split) {
        items.push_back({kind::head, base, len, h, 0, whole});
        continue;
      }
      constexpr std::int64_t block = detail::kKeyTilesPerItem * kTileK;
      for (std::int64_t t = 0; t < len; t += block)
        items.push_back({kind::keys, base, len, h, t, 4.0 / 5.0 * static_cast<double>(len - t) * block});
      for (std::int64_t t = 0; t < len; t += kTileQ)
        items.push_back({kind::queries, base, len, h, t, 3.0 / 5.0 * static_cast<double>(t + kTileQ) * kTileQ});
    }
  }
  std::stable_sort(items.begin(), items.end(), [](const item& x, const item& y) { return x.cost > y.cost; });
  const std::int64_t N = a.cu_seqlens.back(), hm = head_major_floats(a.cu_seqlens, a.heads, a.head_dim);
  float* w = ws.data();
  detail::head_major kv{w, w + hm, w + 2 * hm, w + 3 * hm, N, a.head_dim};
  reorder(a.k, w, N, a.heads, a.head_dim, threads, false);
  reorder(a.v, w + hm, N, a.heads, a.head_dim, threads, false);
  std::fill(w + 2 * hm, w + 4 * hm, 0.0f);
  float* scratch = w + 4 * hm;
  const auto per_thread = detail::backward_scratch(a.head_dim);
  const auto& k = kernels_for(a.variant);
  parallel_for(items.size(), threads, [&](std::size_t i, std::size_t t) {
    const auto& it = items[i];
    float* mine = scratch + t * per_thread;
    switch (it.k) {
      case kind::head: k.backward_head(a, kv, it.base, it.len, it.head, mine); break;
      case kind::keys: k.backward_key_tile(a, kv, it.base, it.len, it.head, it.tile, mine); break;
      case kind::queries: k.backward_query_tile(a, kv, it.base, it.len, it.head, it.tile, mine); break;
    }
  });
  reorder(kv.dk, a.dk, N, a.heads, a.head_dim, threads, true);
  reorder(kv.dv, a.dv, N, a.heads, a.head_dim, threads, true);
}

double forward_flops(std::span<const std::int64_t> cu, std::int64_t heads, std::int64_t head_dim) {
  double f = 0;
  for (std::size_t s = 0; s + 1 < cu.size(); ++s) {
    const double l = static_cast<double>(cu[s + 1] - cu[s]);
    f += 4.0 * l * (l + 1) / 2.0 * static_cast<double>(head_dim) * static_cast<double>(heads);
  }
  return f;
}

double backward_flops(std::span<const std::int64_t> cu, std::int64_t heads, std::int64_t head_dim) {
  return 2.5 * forward_flops(cu, heads, head_dim);
}

}  // namespace flexsp::kernels::attention
