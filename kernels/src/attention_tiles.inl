// Tile loops of the CPU attention kernel for one instruction set. Included by attention_isa_*.cpp,
// which define FLEXSP_ATTENTION_ISA (the namespace) and FLEXSP_ATTENTION_LANES (floats per
// vector register) and compile with the matching -m flags.
//
// Scores are computed transposed, S^T[key][query], with the queries of a tile along the vector
// lanes: the online softmax (max, exp, sum per query) then runs down the key rows with whole
// vectors and never reduces across lanes, and every product is a register-blocked micro-kernel
// that streams rows of K, V, Q or dO straight from their [tokens, heads, head_dim] layout.
// Only the query tile itself (Q scaled, and dO in backward) is transposed into scratch.
//
// Every sum runs in a fixed order that does not depend on the thread count.

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <utility>

#include "attention_tiles.hpp"

namespace flexsp::kernels::attention::detail::FLEXSP_ATTENTION_ISA {
namespace {

constexpr int W = FLEXSP_ATTENTION_LANES;
using vf = float __attribute__((vector_size(W * sizeof(float))));
using vi = std::int32_t __attribute__((vector_size(W * sizeof(float))));

constexpr std::int64_t T = kTileQ;  // query rows and key rows per tile
static_assert(kTileQ == kTileK && T % W == 0, "tiles are square and a whole number of vectors");
constexpr int NV = static_cast<int>(T / W);  // vectors across a tile row

inline vf load(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store(float* p, vf v) { std::memcpy(p, &v, sizeof v); }
// Every lane x, written as an initializer list (what _mm512_set1_ps is): `vf{} + x` would be a
// real addition (0 + -0 is +0) and a loop of lane stores compiles to masked moves.
template <std::size_t... I>
inline vf splat_lanes(float x, std::index_sequence<I...>) {
  return vf{((void)I, x)...};
}
inline vf splat(float x) { return splat_lanes(x, std::make_index_sequence<W>{}); }
inline vf vmax(vf a, vf b) { return a > b ? a : b; }

// 2^x for x <= 0: x = n + r with n an integer and |r| <= 1/2, 2^r from its degree-6 Taylor
// polynomial (relative error ~1e-7), 2^n added to the exponent. Arguments below -126 give
// about 1e-38. Scores are kept in base-2 units (the query scale carries log2 e), which saves
// the multiply and the two-part ln 2 reduction of exp.
inline vf vexp2(vf x) {
  x = vmax(x, splat(-126.0f));
  const vf shifted = x + 0x1.8p23f;  // rounds x to the nearest integer in the low bits
  const vi n = std::bit_cast<vi>(shifted) - 0x4B400000;
  const vf r = x - (shifted - 0x1.8p23f);
  vf p = splat(1.5403530393381609e-4f);  // ln2^6 / 720
  p = p * r + 1.3333558146428443e-3f;    // ln2^5 / 120
  p = p * r + 9.6181291076284772e-3f;    // ln2^4 / 24
  p = p * r + 5.5504108664821580e-2f;    // ln2^3 / 6
  p = p * r + 2.4022650695910071e-1f;    // ln2^2 / 2
  p = p * r + 6.9314718055994531e-1f;    // ln2
  p = p * r + 1.0f;
  return std::bit_cast<vf>(std::bit_cast<vi>(p) + n * (1 << 23));
}

constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2 = 0.693147180559945309f;

// Lane indices 0..W-1, for the causal mask.
inline vi lane_index() {
  vi v;
  for (int l = 0; l < W; ++l) v[l] = l;
  return v;
}

// ---- micro-kernel 1: st[j][0..T) = sum_e rows[j][e] * ct[e][0..T), j < nrows ----------------
// rows: nrows rows of head_dim floats, row stride ld (K or V of one head); ct: [head_dim][T]
// (the transposed query tile). Key rows are broadcast, queries run along the lanes.
constexpr int kKeyBlock = 4;
constexpr int kQueryVectors = W >= 16 ? 4 : 2;  // accumulators: kKeyBlock x kQueryVectors

// With `tile_max`, also folds the block's scores into tile_max[0..T) (the running column max),
// so that the softmax needs no separate pass to find it.
template <int KB>
inline void st_block(const float* rows, std::int64_t ld, const float* ct, std::int64_t dh, float* st,
                     float* tile_max) {
  for (int c = 0; c < NV; c += kQueryVectors) {
    vf acc[KB][kQueryVectors] = {};
    for (std::int64_t e = 0; e < dh; ++e) {
      vf q[kQueryVectors];
      for (int v = 0; v < kQueryVectors; ++v) q[v] = load(ct + e * T + (c + v) * W);
      for (int j = 0; j < KB; ++j) {
        const vf b = splat(rows[j * ld + e]);
        for (int v = 0; v < kQueryVectors; ++v) acc[j][v] += b * q[v];
      }
    }
    for (int j = 0; j < KB; ++j)
      for (int v = 0; v < kQueryVectors; ++v) store(st + j * T + (c + v) * W, acc[j][v]);
    if (tile_max != nullptr)
      for (int v = 0; v < kQueryVectors; ++v) {
        vf m = load(tile_max + (c + v) * W);
        for (int j = 0; j < KB; ++j) m = vmax(m, acc[j][v]);
        store(tile_max + (c + v) * W, m);
      }
  }
}

void score_tile(const float* rows, std::int64_t ld, std::int64_t nrows, const float* ct, std::int64_t dh, float* st,
                float* tile_max = nullptr) {
  std::int64_t j = 0;
  for (; j + kKeyBlock <= nrows; j += kKeyBlock)
    st_block<kKeyBlock>(rows + j * ld, ld, ct, dh, st + j * T, tile_max);
  for (; j < nrows; ++j) st_block<1>(rows + j * ld, ld, ct, dh, st + j * T, tile_max);
}

// ---- micro-kernel 2: c[r][e] += sum_t a(r, t) * b[t][e], r < m, t < kk, e < dh --------------
// a(r, t) = a[r * ars + t * acs] (a tile or its transpose, broadcast); b and c are rows of
// head_dim floats with strides ldb and ldc, e along the lanes.
template <int RB, int EV>
inline void acc_block(std::int64_t kk, const float* a, std::int64_t ars, std::int64_t acs, const float* b,
                      std::int64_t ldb, float* c, std::int64_t ldc) {
  vf acc[RB][EV];
  for (int r = 0; r < RB; ++r)
    for (int v = 0; v < EV; ++v) acc[r][v] = load(c + r * ldc + v * W);
  for (std::int64_t t = 0; t < kk; ++t) {
    vf bv[EV];
    for (int v = 0; v < EV; ++v) bv[v] = load(b + t * ldb + v * W);
    for (int r = 0; r < RB; ++r) {
      const vf av = splat(a[r * ars + t * acs]);
      for (int v = 0; v < EV; ++v) acc[r][v] += av * bv[v];
    }
  }
  for (int r = 0; r < RB; ++r)
    for (int v = 0; v < EV; ++v) store(c + r * ldc + v * W, acc[r][v]);
}

// Rows in blocks of RB (then one at a time) for one column chunk of EV vectors.
template <int RB, int EV>
inline void acc_rows_chunk(std::int64_t m, std::int64_t kk, const float* a, std::int64_t ars, std::int64_t acs,
                           const float* b, std::int64_t ldb, float* c, std::int64_t ldc) {
  std::int64_t r = 0;
  for (; r + RB <= m; r += RB) acc_block<RB, EV>(kk, a + r * ars, ars, acs, b, ldb, c + r * ldc, ldc);
  for (; r < m; ++r) acc_block<1, EV>(kk, a + r * ars, ars, acs, b, ldb, c + r * ldc, ldc);
}

constexpr int kMaxChunk = W >= 16 ? 4 : 2;  // vectors of head_dim per pass

void accumulate(std::int64_t m, std::int64_t kk, const float* a, std::int64_t ars, std::int64_t acs, const float* b,
                std::int64_t ldb, float* c, std::int64_t ldc, std::int64_t dh) {
  std::int64_t e = 0;
  for (; e + kMaxChunk * W <= dh; e += kMaxChunk * W) {
    if constexpr (kMaxChunk == 4)
      acc_rows_chunk<4, 4>(m, kk, a, ars, acs, b + e, ldb, c + e, ldc);
    else
      acc_rows_chunk<4, 2>(m, kk, a, ars, acs, b + e, ldb, c + e, ldc);
  }
  switch ((dh - e) / W) {
    case 3:
      acc_rows_chunk<4, 3>(m, kk, a, ars, acs, b + e, ldb, c + e, ldc);
      e += 3 * W;
      break;
    case 2:
      acc_rows_chunk<8, 2>(m, kk, a, ars, acs, b + e, ldb, c + e, ldc);
      e += 2 * W;
      break;
    case 1:
      acc_rows_chunk<8, 1>(m, kk, a, ars, acs, b + e, ldb, c + e, ldc);
      e += W;
      break;
    default:
      break;
  }
  for (; e < dh; ++e)  // head_dim not a multiple of the vector width
    for (std::int64_t r = 0; r < m; ++r) {
      float s = c[r * ldc + e];
      for (std::int64_t t = 0; t < kk; ++t) s += a[r * ars + t * acs] * b[t * ldb + e];
      c[r * ldc + e] = s;
    }
}

// ct[e][i] = scale * rows[i][e] for i < n, 0 for n <= i < T.
void transpose_tile(const float* rows, std::int64_t ld, std::int64_t n, std::int64_t dh, float scale, float* ct) {
  for (std::int64_t e = 0; e < dh; ++e) std::fill_n(ct + e * T + n, T - n, 0.0f);
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t e = 0; e < dh; ++e) ct[e * T + i] = scale * rows[i * ld + e];
}

// Keeps key row j against query vector c: key position j0 + j <= query position i0 + c*W + lane.
inline vi causal_keep(std::int64_t i0, std::int64_t j0, std::int64_t j, int c) {
  return (lane_index() + static_cast<std::int32_t>(i0 + c * W - j0 - j)) >= 0;
}

struct forward_scratch_layout {
  float *qt, *st, *acc, *tile_max, *row_max, *row_sum, *corr;
};

forward_scratch_layout forward_layout(float* ws, std::int64_t dh) {
  forward_scratch_layout s;
  s.qt = ws;
  s.st = s.qt + dh * T;
  s.acc = s.st + T * T;
  s.tile_max = s.acc + T * dh;
  s.row_max = s.tile_max + T;
  s.row_sum = s.row_max + T;
  s.corr = s.row_sum + T;
  return s;
}

// Online softmax over one score tile (base-2 scores), vectors of queries: updates the running
// max and sum, leaves P^T = 2^(S^T - max) in st (masked entries exactly 0) and the rescale
// factor in corr. Off the diagonal, tile_max holds the tile's column max (from score_tile).
template <bool Diagonal>
void softmax_tile(float* st, std::int64_t bk, std::int64_t i0, std::int64_t j0, const float* tile_max,
                  float* row_max, float* row_sum, float* corr) {
  const vf lowest = splat(-std::numeric_limits<float>::max());
  for (int c = 0; c < NV; ++c) {
    const vf old_max = load(row_max + c * W);
    vf mx = old_max;
    if constexpr (Diagonal) {
      for (std::int64_t j = 0; j < bk; ++j)
        mx = vmax(mx, causal_keep(i0, j0, j, c) ? load(st + j * T + c * W) : lowest);
    } else {
      mx = vmax(mx, load(tile_max + c * W));
    }
    vf sum = {};
    for (std::int64_t j = 0; j < bk; ++j) {
      vf p = vexp2(load(st + j * T + c * W) - mx);
      if constexpr (Diagonal) p = causal_keep(i0, j0, j, c) ? p : vf{};
      store(st + j * T + c * W, p);
      sum += p;
    }
    const vf f = vexp2(old_max - mx);
    store(corr + c * W, f);
    store(row_max + c * W, mx);
    store(row_sum + c * W, load(row_sum + c * W) * f + sum);
  }
}

void forward_tile(const forward_args& a, const head_major& kv, const tile_item& it, float* ws) {
  const std::int64_t H = a.heads, Dh = a.head_dim, ld = H * Dh;
  const float scale = 1.0f / std::sqrt(static_cast<float>(Dh));
  const auto s = forward_layout(ws, Dh);
  const std::int64_t base = it.base, len = it.len, h = it.head, i0 = it.i0;
  const std::int64_t bq = std::min(T, len - i0);
  transpose_tile(a.q + (base + i0) * ld + h * Dh, ld, bq, Dh, scale * kLog2e, s.qt);
  std::fill_n(s.acc, bq * Dh, 0.0f);
  std::fill_n(s.row_max, T, -std::numeric_limits<float>::max());
  std::fill_n(s.row_sum, T, 0.0f);
  for (std::int64_t j0 = 0; j0 < i0 + bq; j0 += T) {
    const std::int64_t bk = std::min(T, len - j0);
    const float* kt = kv.k + kv.at(h, base + j0);
    const float* vt = kv.v + kv.at(h, base + j0);
    if (j0 + bk - 1 > i0) {  // the diagonal tile: the max must skip masked scores
      score_tile(kt, Dh, bk, s.qt, Dh, s.st);
      softmax_tile<true>(s.st, bk, i0, j0, nullptr, s.row_max, s.row_sum, s.corr);
    } else {
      std::fill_n(s.tile_max, T, -std::numeric_limits<float>::max());
      score_tile(kt, Dh, bk, s.qt, Dh, s.st, s.tile_max);
      softmax_tile<false>(s.st, bk, i0, j0, s.tile_max, s.row_max, s.row_sum, s.corr);
    }
    for (std::int64_t r = 0; r < bq; ++r) {
      const float f = s.corr[r];
      float* ar = s.acc + r * Dh;
      for (std::int64_t e = 0; e < Dh; ++e) ar[e] *= f;
    }
    // acc[i][e] += sum_j P^T[j][i] V[j][e]
    accumulate(bq, bk, s.st, 1, T, vt, Dh, s.acc, Dh, Dh);
  }
  for (std::int64_t r = 0; r < bq; ++r) {
    float* o = a.out + (base + i0 + r) * ld + h * Dh;
    const float inv = 1.0f / s.row_sum[r];
    for (std::int64_t e = 0; e < Dh; ++e) o[e] = s.acc[r * Dh + e] * inv;
    a.lse[(base + i0 + r) * H + h] = s.row_max[r] * kLn2 + std::log(s.row_sum[r]);  // natural units
  }
}

struct backward_scratch_layout {
  float *qt, *dot, *qp, *dop, *dq, *p, *ds, *delta, *lse;
};

backward_scratch_layout backward_layout(float* ws, std::int64_t dh) {
  backward_scratch_layout s;
  s.qt = ws;
  s.dot = s.qt + dh * T;
  s.qp = s.dot + dh * T;
  s.dop = s.qp + T * dh;
  s.dq = s.dop + T * dh;
  s.p = s.dq + T * dh;
  s.ds = s.p + T * T;
  s.delta = s.ds + T * T;
  s.lse = s.delta + T;
  return s;
}

// P^T[j][i] = 2^(S^T[j][i] - lse[i]) (base-2 scores and lse), masked entries exactly 0.
template <bool Diagonal>
void probabilities(float* st, std::int64_t bk, std::int64_t i0, std::int64_t j0, const float* lse) {
  for (int c = 0; c < NV; ++c) {
    const vf l = load(lse + c * W);
    for (std::int64_t j = 0; j < bk; ++j) {
      vf p = vexp2(load(st + j * T + c * W) - l);
      if constexpr (Diagonal) p = causal_keep(i0, j0, j, c) ? p : vf{};
      store(st + j * T + c * W, p);
    }
  }
}

// dst[i][0..dh) = rows[i * ld + 0..dh) for i < n: one head's rows of a query tile made contiguous.
void pack_rows(const float* rows, std::int64_t ld, std::int64_t n, std::int64_t dh, float* dst) {
  for (std::int64_t i = 0; i < n; ++i)
    std::memcpy(dst + i * dh, rows + i * ld, static_cast<std::size_t>(dh) * sizeof(float));
}

// Query tile i0 of head h: its Q and dO rows packed and transposed (Q scaled into base-2
// scores), D = rowsum(dO * O) and the base-2 lse. Returns the tile's rows.
std::int64_t load_query_tile(const backward_args& a, const backward_scratch_layout& s, std::int64_t base,
                             std::int64_t len, std::int64_t h, std::int64_t i0) {
  const std::int64_t H = a.heads, Dh = a.head_dim, ld = H * Dh;
  const float scale = 1.0f / std::sqrt(static_cast<float>(Dh));
  const std::int64_t bq = std::min(T, len - i0);
  const std::int64_t qoff = (base + i0) * ld + h * Dh;
  pack_rows(a.q + qoff, ld, bq, Dh, s.qp);
  pack_rows(a.dout + qoff, ld, bq, Dh, s.dop);
  transpose_tile(s.qp, Dh, bq, Dh, scale * kLog2e, s.qt);
  transpose_tile(s.dop, Dh, bq, Dh, 1.0f, s.dot);
  std::fill_n(s.delta, T, 0.0f);
  std::fill_n(s.lse, T, 0.0f);
  for (std::int64_t r = 0; r < bq; ++r) {
    const float* o = a.out + qoff + r * ld;
    const float* g = s.dop + r * Dh;
    float d = 0.0f;
    for (std::int64_t e = 0; e < Dh; ++e) d += o[e] * g[e];
    s.delta[r] = d;
    s.lse[r] = a.lse[(base + i0 + r) * H + h] * kLog2e;
  }
  return bq;
}

// One (query tile i0, key tile j0) pair of the backward pass: P and dS recomputed, then dV and
// dK of the key tile (into kv) and/or dQ of the query tile (into s.dq). Every way of running
// the pass calls this with the same arguments, so the bits do not depend on how the work was
// split: dK and dV take their query tiles in ascending order, dQ its key tiles.
void tile_pair(const backward_args& a, const head_major& kv, const backward_scratch_layout& s, std::int64_t base,
               std::int64_t len, std::int64_t h, std::int64_t i0, std::int64_t bq, std::int64_t j0, bool key_grads,
               bool query_grads) {
  const std::int64_t Dh = a.head_dim;
  const float scale = 1.0f / std::sqrt(static_cast<float>(Dh));
  const std::int64_t bk = std::min(T, len - j0);
  const std::int64_t koff = kv.at(h, base + j0);
  score_tile(kv.k + koff, Dh, bk, s.qt, Dh, s.p);
  if (j0 + bk - 1 > i0)
    probabilities<true>(s.p, bk, i0, j0, s.lse);
  else
    probabilities<false>(s.p, bk, i0, j0, s.lse);
  // dV[j] += sum_i P^T[j][i] dO[i]
  if (key_grads) accumulate(bk, bq, s.p, T, 1, s.dop, Dh, kv.dv + koff, Dh, Dh);
  // dP^T[j][i] = V[j] . dO[i]; dS^T = scale * P^T * (dP^T - D), stored over dP^T
  score_tile(kv.v + koff, Dh, bk, s.dot, Dh, s.ds);
  for (std::int64_t j = 0; j < bk; ++j)
    for (int c = 0; c < NV; ++c) {
      const vf p = load(s.p + j * T + c * W);
      const vf dp = load(s.ds + j * T + c * W);
      store(s.ds + j * T + c * W, (p * (dp - load(s.delta + c * W))) * scale);
    }
  // dQ[i] += sum_j dS^T[j][i] K[j]; dK[j] += sum_i dS^T[j][i] Q[i]
  if (query_grads) accumulate(bq, bk, s.ds, 1, T, kv.k + koff, Dh, s.dq, Dh, Dh);
  if (key_grads) accumulate(bk, bq, s.ds, T, 1, s.qp, Dh, kv.dk + koff, Dh, Dh);
}

void store_dq(const backward_args& a, const backward_scratch_layout& s, std::int64_t base, std::int64_t h,
              std::int64_t i0, std::int64_t bq) {
  const std::int64_t ld = a.heads * a.head_dim;
  for (std::int64_t r = 0; r < bq; ++r)
    std::memcpy(a.dq + (base + i0 + r) * ld + h * a.head_dim, s.dq + r * a.head_dim,
                static_cast<std::size_t>(a.head_dim) * sizeof(float));
}

void backward_head(const backward_args& a, const head_major& kv, std::int64_t base, std::int64_t len, std::int64_t h,
                   float* ws) {
  const auto s = backward_layout(ws, a.head_dim);
  for (std::int64_t i0 = 0; i0 < len; i0 += T) {
    const std::int64_t bq = load_query_tile(a, s, base, len, h, i0);
    std::fill_n(s.dq, bq * a.head_dim, 0.0f);
    for (std::int64_t j0 = 0; j0 < i0 + bq; j0 += T) tile_pair(a, kv, s, base, len, h, i0, bq, j0, true, true);
    store_dq(a, s, base, h, i0, bq);
  }
}

// Key tiles [first, first + kKeyTilesPerItem * T): each query tile that sees them is loaded
// once for the whole block.
void backward_key_tile(const backward_args& a, const head_major& kv, std::int64_t base, std::int64_t len,
                       std::int64_t h, std::int64_t first, float* ws) {
  const auto s = backward_layout(ws, a.head_dim);
  const std::int64_t last = std::min(len, first + kKeyTilesPerItem * T);
  for (std::int64_t i0 = first; i0 < len; i0 += T) {
    const std::int64_t bq = load_query_tile(a, s, base, len, h, i0);
    for (std::int64_t j0 = first; j0 < last && j0 < i0 + bq; j0 += T)
      tile_pair(a, kv, s, base, len, h, i0, bq, j0, true, false);
  }
}

void backward_query_tile(const backward_args& a, const head_major& kv, std::int64_t base, std::int64_t len,
                         std::int64_t h, std::int64_t i0, float* ws) {
  const auto s = backward_layout(ws, a.head_dim);
  const std::int64_t bq = load_query_tile(a, s, base, len, h, i0);
  std::fill_n(s.dq, bq * a.head_dim, 0.0f);
  for (std::int64_t j0 = 0; j0 < i0 + bq; j0 += T) tile_pair(a, kv, s, base, len, h, i0, bq, j0, false, true);
  store_dq(a, s, base, h, i0, bq);
}

}  // namespace

extern const tile_kernels kernels;
const tile_kernels kernels{FLEXSP_ATTENTION_ISA_NAME, &forward_tile, &backward_head, &backward_key_tile,
                           &backward_query_tile};

}  // namespace flexsp::kernels::attention::detail::FLEXSP_ATTENTION_ISA
