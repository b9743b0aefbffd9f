#include "flexsp/kernels/attention.hpp"

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <limits>
#include <thread>
#include <vector>

#include "flexsp/core/check.hpp"
#include "flexsp/kernels/ops.hpp"
#include "vector_math.hpp"

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

std::int64_t forward_scratch(std::int64_t head_dim) { return kTileQ * kTileK + kTileQ * head_dim + 2 * kTileQ; }
// P tile, dP tile, D = rowsum(dO * O) of the query tile.
constexpr std::int64_t kBackwardScratch = 2 * kTileQ * kTileK + kTileQ;

int resolve_threads(int requested) {
  if (requested > 0) return requested;
  return std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
}

// exp(x) for any x <= 0, including -FLT_MAX (the running max before the first tile).
inline float exp_nonpositive(float x) { return detail::exp_core(std::max(x, -87.0f)); }

// row[c] = exp(row[c] - shift) for c < n.
void exp_shifted(float* row, std::int64_t n, float shift) {
  for (std::int64_t c = 0; c < n; ++c) row[c] = detail::exp_core(row[c] - shift);
}

// Reductions over a tile row with eight independent partial results: the compiler may not
// reorder a float reduction by itself, and these orders are fixed, so results stay
// deterministic whatever the thread count.
float row_max_of(const float* row, std::int64_t n) {
  float part[8];
  std::fill_n(part, 8, -std::numeric_limits<float>::max());
  std::int64_t c = 0;
  for (; c + 8 <= n; c += 8)
    for (int k = 0; k < 8; ++k) part[k] = part[k] > row[c + k] ? part[k] : row[c + k];
  for (; c < n; ++c) part[0] = part[0] > row[c] ? part[0] : row[c];
  return *std::max_element(part, part + 8);
}

float row_sum_of(const float* row, std::int64_t n) {
  float part[8] = {};
  std::int64_t c = 0;
  for (; c + 8 <= n; c += 8)
    for (int k = 0; k < 8; ++k) part[k] += row[c + k];
  for (; c < n; ++c) part[0] += row[c];
  return ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
}

// Runs body(item, thread_index) for items [0, count) on `threads` threads, largest first
// (callers order items by decreasing cost); the calling thread is one of the workers.
template <class Body>
void parallel_for(std::size_t count, int threads, Body&& body) {
  const auto workers = static_cast<std::size_t>(std::max(1, std::min<int>(threads, static_cast<int>(count))));
  std::atomic<std::size_t> next{0};
  auto work = [&](std::size_t t) {
    for (std::size_t i; (i = next.fetch_add(1)) < count;) body(i, t);
  };
  std::vector<std::jthread> pool;
  for (std::size_t t = 1; t < workers; ++t) pool.emplace_back(work, t);
  work(0);
}

struct tile_item {
  std::int64_t base, len, head, i0;
  std::int64_t cost;
};

void forward_tile(const forward_args& a, const tile_item& it, float* ws) {
  const std::int64_t H = a.heads, Dh = a.head_dim, ld = H * Dh;
  const float scale = 1.0f / std::sqrt(static_cast<float>(Dh));
  float* s_tile = ws;
  float* acc = s_tile + kTileQ * kTileK;
  float* row_max = acc + kTileQ * Dh;
  float* row_sum = row_max + kTileQ;
  const std::int64_t base = it.base, len = it.len, h = it.head, i0 = it.i0;
  const std::int64_t bq = std::min(kTileQ, len - i0);
  const float* qt = a.q + (base + i0) * ld + h * Dh;
  std::fill(acc, acc + bq * Dh, 0.0f);
  std::fill(row_max, row_max + bq, -std::numeric_limits<float>::max());
  std::fill(row_sum, row_sum + bq, 0.0f);
  for (std::int64_t j0 = 0; j0 < i0 + bq; j0 += kTileK) {
    const std::int64_t bk = std::min(kTileK, len - j0);
    const float* kt = a.k + (base + j0) * ld + h * Dh;
    const float* vt = a.v + (base + j0) * ld + h * Dh;
    gemm(false, true, bq, bk, Dh, scale, qt, ld, kt, ld, 0.0f, s_tile, kTileK);
    for (std::int64_t r = 0; r < bq; ++r) {
      float* srow = s_tile + r * kTileK;
      const std::int64_t last = std::clamp<std::int64_t>(i0 + r - j0 + 1, 0, bk);  // causal: keys <= query
      const float mx = std::max(row_max[r], row_max_of(srow, last));
      const float corr = exp_nonpositive(row_max[r] - mx);
      exp_shifted(srow, last, mx);
      const float sum = row_sum_of(srow, last);
      std::fill(srow + last, srow + bk, 0.0f);
      row_sum[r] = row_sum[r] * corr + sum;
      row_max[r] = mx;
      float* ar = acc + r * Dh;
      for (std::int64_t e = 0; e < Dh; ++e) ar[e] *= corr;
    }
    gemm(false, false, bq, Dh, bk, 1.0f, s_tile, kTileK, vt, ld, 1.0f, acc, Dh);
  }
  for (std::int64_t r = 0; r < bq; ++r) {
    float* o = a.out + (base + i0 + r) * ld + h * Dh;
    const float inv = 1.0f / row_sum[r];
    for (std::int64_t e = 0; e < Dh; ++e) o[e] = acc[r * Dh + e] * inv;
    a.lse[(base + i0 + r) * H + h] = row_max[r] + std::log(row_sum[r]);
  }
}

void backward_head(const backward_args& a, std::int64_t base, std::int64_t len, std::int64_t h, float* ws) {
  const std::int64_t H = a.heads, Dh = a.head_dim, ld = H * Dh;
  const float scale = 1.0f / std::sqrt(static_cast<float>(Dh));
  float* p_tile = ws;
  float* dp_tile = p_tile + kTileQ * kTileK;
  float* dvec = dp_tile + kTileQ * kTileK;
  for (std::int64_t t = base; t < base + len; ++t) {
    std::fill_n(a.dq + t * ld + h * Dh, Dh, 0.0f);
    std::fill_n(a.dk + t * ld + h * Dh, Dh, 0.0f);
    std::fill_n(a.dv + t * ld + h * Dh, Dh, 0.0f);
  }
  for (std::int64_t i0 = 0; i0 < len; i0 += kTileQ) {
    const std::int64_t bq = std::min(kTileQ, len - i0);
    const std::int64_t qoff = (base + i0) * ld + h * Dh;
    for (std::int64_t r = 0; r < bq; ++r) {
      const float* o = a.out + qoff + r * ld;
      const float* g = a.dout + qoff + r * ld;
      float d = 0.0f;
      for (std::int64_t e = 0; e < Dh; ++e) d += o[e] * g[e];
      dvec[r] = d;
    }
    for (std::int64_t j0 = 0; j0 < i0 + bq; j0 += kTileK) {
      const std::int64_t bk = std::min(kTileK, len - j0);
      const std::int64_t koff = (base + j0) * ld + h * Dh;
      gemm(false, true, bq, bk, Dh, scale, a.q + qoff, ld, a.k + koff, ld, 0.0f, p_tile, kTileK);
      for (std::int64_t r = 0; r < bq; ++r) {
        float* prow = p_tile + r * kTileK;
        const std::int64_t last = std::clamp<std::int64_t>(i0 + r - j0 + 1, 0, bk);
        const float l = a.lse[(base + i0 + r) * H + h];
        exp_shifted(prow, last, l);
        std::fill(prow + last, prow + bk, 0.0f);
      }
      // dV += P^T dO
      gemm(true, false, bk, Dh, bq, 1.0f, p_tile, kTileK, a.dout + qoff, ld, 1.0f, a.dv + koff, ld);
      // dP = dO V^T
      gemm(false, true, bq, bk, Dh, 1.0f, a.dout + qoff, ld, a.v + koff, ld, 0.0f, dp_tile, kTileK);
      // dS = P * (dP - D), stored over dP
      for (std::int64_t r = 0; r < bq; ++r) {
        const float* prow = p_tile + r * kTileK;
        float* drow = dp_tile + r * kTileK;
        const float dr = dvec[r];
        for (std::int64_t c = 0; c < bk; ++c) drow[c] = prow[c] * (drow[c] - dr);
      }
      // dQ += scale dS K ; dK += scale dS^T Q
      gemm(false, false, bq, Dh, bk, scale, dp_tile, kTileK, a.k + koff, ld, 1.0f, a.dq + qoff, ld);
      gemm(true, false, bk, Dh, bq, scale, dp_tile, kTileK, a.q + qoff, ld, 1.0f, a.dk + koff, ld);
    }
  }
}

}  // namespace

std::int64_t workspace_size(const forward_args& a) { return resolve_threads(a.threads) * forward_scratch(a.head_dim); }

std::int64_t workspace_size(const backward_args& a) { return resolve_threads(a.threads) * kBackwardScratch; }

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
  const auto per_thread = forward_scratch(a.head_dim);
  parallel_for(items.size(), resolve_threads(a.threads),
               [&](std::size_t i, std::size_t t) { forward_tile(a, items[i], ws.data() + t * per_thread); });
}

// TODO(perf): with fewer (sequence, head) items than threads (an SP rank holding one head of
// one long sequence) backward runs on one thread; splitting query tiles would need per-thread
// dK/dV partials and give up thread-count-independent results.
void run(const backward_args& a, std::span<float> ws) {
  FLEXSP_EXPECTS(static_cast<std::int64_t>(ws.size()) >= workspace_size(a), "attention workspace {} < {}", ws.size(),
                 workspace_size(a));
  std::vector<tile_item> items;
  for (std::size_t s = 0; s + 1 < a.cu_seqlens.size(); ++s) {
    const std::int64_t base = a.cu_seqlens[s], len = a.cu_seqlens[s + 1] - base;
    for (std::int64_t h = 0; h < a.heads; ++h) items.push_back({base, len, h, 0, len});
  }
  std::sort(items.begin(), items.end(), [](const tile_item& x, const tile_item& y) { return x.cost > y.cost; });
  parallel_for(items.size(), resolve_threads(a.threads), [&](std::size_t i, std::size_t t) {
    backward_head(a, items[i].base, items[i].len, items[i].head, ws.data() + t * kBackwardScratch);
  });
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
