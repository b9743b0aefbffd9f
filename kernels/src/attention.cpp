#include "flexsp/kernels/attention.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include "flexsp/core/check.hpp"
#include "flexsp/kernels/ops.hpp"

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

// Scratch layout of the forward pass: S/P tile [kTileQ, kTileK], acc [kTileQ, head_dim],
// running max and sum [kTileQ] each.
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

std::int64_t workspace_size(const forward_args& a) { return kTileQ * kTileK + kTileQ * a.head_dim + 2 * kTileQ; }

std::int64_t workspace_size(const backward_args&) {
  return 2 * kTileQ * kTileK + kTileQ;  // P tile, dP tile, D (rowsum dO*O) of the query tile
}

void run(const forward_args& a, std::span<float> ws) {
  FLEXSP_EXPECTS(static_cast<std::int64_t>(ws.size()) >= workspace_size(a), "attention workspace {} < {}", ws.size(),
                 workspace_size(a));
  const std::int64_t H = a.heads, Dh = a.head_dim, ld = H * Dh;
  const float scale = 1.0f / std::sqrt(static_cast<float>(Dh));
  float* s_tile = ws.data();
  float* acc = s_tile + kTileQ * kTileK;
  float* row_max = acc + kTileQ * Dh;
  float* row_sum = row_max + kTileQ;
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  for (std::size_t s = 0; s + 1 < a.cu_seqlens.size(); ++s) {
    const std::int64_t base = a.cu_seqlens[s], len = a.cu_seqlens[s + 1] - base;
    for (std::int64_t h = 0; h < H; ++h) {
      for (std::int64_t i0 = 0; i0 < len; i0 += kTileQ) {
        const std::int64_t bq = std::min(kTileQ, len - i0);
        const float* qt = a.q + (base + i0) * ld + h * Dh;
        std::fill(acc, acc + bq * Dh, 0.0f);
        std::fill(row_max, row_max + bq, kNegInf);
        std::fill(row_sum, row_sum + bq, 0.0f);
        for (std::int64_t j0 = 0; j0 < i0 + bq; j0 += kTileK) {
          const std::int64_t bk = std::min(kTileK, len - j0);
          const float* kt = a.k + (base + j0) * ld + h * Dh;
          const float* vt = a.v + (base + j0) * ld + h * Dh;
          gemm(false, true, bq, bk, Dh, scale, qt, ld, kt, ld, 0.0f, s_tile, kTileK);
          for (std::int64_t r = 0; r < bq; ++r) {
            float* srow = s_tile + r * kTileK;
            const std::int64_t last = std::min(bk, i0 + r - j0 + 1);  // causal: keys <= query
            float mx = row_max[r];
            for (std::int64_t c = 0; c < last; ++c) mx = std::max(mx, srow[c]);
            const float corr = row_max[r] == kNegInf ? 0.0f : std::exp(row_max[r] - mx);
            float sum = 0.0f;
            for (std::int64_t c = 0; c < last; ++c) {
              srow[c] = std::exp(srow[c] - mx);
              sum += srow[c];
            }
            for (std::int64_t c = std::max<std::int64_t>(last, 0); c < bk; ++c) srow[c] = 0.0f;
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
    }
  }
}

void run(const backward_args& a, std::span<float> ws) {
  FLEXSP_EXPECTS(static_cast<std::int64_t>(ws.size()) >= workspace_size(a), "attention workspace {} < {}", ws.size(),
                 workspace_size(a));
  const std::int64_t H = a.heads, Dh = a.head_dim, ld = H * Dh;
  const std::int64_t tokens = tokens_of(a.cu_seqlens);
  const float scale = 1.0f / std::sqrt(static_cast<float>(Dh));
  std::fill(a.dq, a.dq + tokens * ld, 0.0f);
  std::fill(a.dk, a.dk + tokens * ld, 0.0f);
  std::fill(a.dv, a.dv + tokens * ld, 0.0f);
  float* p_tile = ws.data();
  float* dp_tile = p_tile + kTileQ * kTileK;
  float* dvec = dp_tile + kTileQ * kTileK;
  for (std::size_t s = 0; s + 1 < a.cu_seqlens.size(); ++s) {
    const std::int64_t base = a.cu_seqlens[s], len = a.cu_seqlens[s + 1] - base;
    for (std::int64_t h = 0; h < H; ++h) {
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
            const std::int64_t last = std::min(bk, i0 + r - j0 + 1);
            const float l = a.lse[(base + i0 + r) * H + h];
            for (std::int64_t c = 0; c < last; ++c) prow[c] = std::exp(prow[c] - l);
            for (std::int64_t c = std::max<std::int64_t>(last, 0); c < bk; ++c) prow[c] = 0.0f;
          }
          // dV += P^T dO
          gemm(true, false, bk, Dh, bq, 1.0f, p_tile, kTileK, a.dout + qoff, ld, 1.0f, a.dv + koff, ld);
          // dP = dO V^T
          gemm(false, true, bq, bk, Dh, 1.0f, a.dout + qoff, ld, a.v + koff, ld, 0.0f, dp_tile, kTileK);
          // dS = P * (dP - D), stored over dP
          for (std::int64_t r = 0; r < bq; ++r) {
            const float* prow = p_tile + r * kTileK;
            float* drow = dp_tile + r * kTileK;
            for (std::int64_t c = 0; c < bk; ++c) drow[c] = prow[c] * (drow[c] - dvec[r]);
          }
          // dQ += scale dS K ; dK += scale dS^T Q
          gemm(false, false, bq, Dh, bk, scale, dp_tile, kTileK, a.k + koff, ld, 1.0f, a.dq + qoff, ld);
          gemm(true, false, bk, Dh, bq, scale, dp_tile, kTileK, a.q + qoff, ld, 1.0f, a.dk + koff, ld);
        }
      }
    }
  }
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
