#include "flexsp/kernels/ops.hpp"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string_view>
#include <thread>
#include <vector>

#include <cblas.h>

#include "flexsp/core/check.hpp"
#include "cpu_pool.hpp"
#include "fingerprint_mix.hpp"
#include "vector_math.hpp"

namespace flexsp::kernels {

namespace {
std::size_t sz(std::int64_t v) { return static_cast<std::size_t>(v); }

// Runs body(first, last) over [0, n) in blocks of `grain` on the shared worker pool, with the
// device's share of the cores. Block boundaries depend on n and grain only, never on the thread
// count, so a reduction over per-block partial results, summed in block order, gives the same
// bits on any number of threads.
template <class Body>
void for_blocks(std::size_t n, std::size_t grain, Body&& body) {
  grain = std::max<std::size_t>(1, grain);
  const std::size_t blocks = (n + grain - 1) / grain;
  const int threads = cpu_math_threads();
  if (blocks <= 1 || threads <= 1) {
    for (std::size_t b = 0; b < blocks; ++b) body(b * grain, std::min(n, (b + 1) * grain));
    return;
  }
  detail::parallel_for(blocks, threads,
                       [&](std::size_t b, std::size_t) { body(b * grain, std::min(n, (b + 1) * grain)); });
}

constexpr std::size_t kBlockFloats = 1 << 15;  // ~128 KB of one operand per block
std::size_t rows_per_block(std::int64_t d) { return std::max<std::size_t>(1, kBlockFloats / std::max<std::size_t>(1, sz(d))); }

// sigmoid(g) without a libm call, so that the loops vectorise: exp_core of -|g| <= 0.
inline float sigmoid(float g) {
  const float e = detail::exp_core(-std::fabs(g));
  const float num = g >= 0.0f ? 1.0f : e;  // a select, not a branch: the loop vectorises
  return num / (1.0f + e);
}
}  // namespace

expected<void> embedding_forward(std::span<const std::int32_t> tokens, std::span<const std::int32_t> positions,
                                 std::span<const float> wte, std::span<const float> wpe, std::span<float> out,
                                 std::int64_t d) {
  const auto n = tokens.size();
  FLEXSP_EXPECTS(positions.size() == n && out.size() == n * sz(d), "embedding: {} tokens, {} positions, out {}", n,
                 positions.size(), out.size());
  const auto vocab = static_cast<std::int64_t>(wte.size()) / d;
  const auto max_pos = static_cast<std::int64_t>(wpe.size()) / d;
  for (std::size_t t = 0; t < n; ++t) {
    const auto tok = tokens[t];
    const auto pos = positions[t];
    if (tok < 0 || tok >= vocab)
      return make_error(errc::invalid_argument, "token id {} at index {} outside vocabulary [0, {})", tok, t, vocab);
    if (!wpe.empty() && (pos < 0 || pos >= max_pos))
      return make_error(errc::invalid_argument, "position {} at index {} outside [0, {}) (max positions)", pos, t,
                        max_pos);
    const float* a = wte.data() + tok * d;
    float* o = out.data() + t * sz(d);
    if (wpe.empty()) {
      std::copy(a, a + d, o);
      continue;
    }
    const float* b = wpe.data() + pos * d;
    for (std::int64_t i = 0; i < d; ++i) o[i] = a[i] + b[i];
  }
  return {};
}

void embedding_backward(std::span<const std::int32_t> tokens, std::span<const std::int32_t> positions,
                        std::span<const float> dout, std::span<float> dwte, std::span<float> dwpe, std::int64_t d) {
  const auto n = tokens.size();
  FLEXSP_EXPECTS(positions.size() == n && dout.size() == n * sz(d), "embedding backward sizes");
  for (std::size_t t = 0; t < n; ++t) {
    const float* g = dout.data() + t * sz(d);
    float* a = dwte.data() + tokens[t] * d;
    for (std::int64_t i = 0; i < d; ++i) a[i] += g[i];
    if (dwpe.empty()) continue;
    float* b = dwpe.data() + positions[t] * d;
    for (std::int64_t i = 0; i < d; ++i) b[i] += g[i];
  }
}

void rmsnorm_forward(std::span<const float> x, std::span<const float> gamma, std::span<float> y, std::span<float> rstd,
                     std::int64_t d, float eps) {
  const auto n = x.size() / sz(d);
  FLEXSP_EXPECTS(x.size() == n * sz(d) && y.size() == x.size() && rstd.size() == n && gamma.size() == sz(d),
                 "rmsnorm: x {} y {} rstd {} d {}", x.size(), y.size(), rstd.size(), d);
  for_blocks(n, rows_per_block(d), [&](std::size_t first, std::size_t last) {
    for (std::size_t r = first; r < last; ++r) {
      const float* xr = x.data() + r * sz(d);
      double s = 0;
      for (std::int64_t i = 0; i < d; ++i) s += static_cast<double>(xr[i]) * xr[i];
      const float rs = static_cast<float>(1.0 / std::sqrt(s / static_cast<double>(d) + eps));
      float* yr = y.data() + r * sz(d);
      for (std::int64_t i = 0; i < d; ++i) yr[i] = xr[i] * rs * gamma[sz(i)];
      rstd[r] = rs;
    }
  });
}

void rmsnorm_backward(std::span<const float> dy, std::span<const float> x, std::span<const float> gamma,
                      std::span<const float> rstd, std::span<float> dx, std::span<float> dgamma, std::int64_t d) {
  const auto n = x.size() / sz(d);
  FLEXSP_EXPECTS(dy.size() == x.size() && dx.size() == x.size() && rstd.size() == n && gamma.size() == sz(d) &&
                     dgamma.size() == sz(d),
                 "rmsnorm backward sizes");
  // dgamma: one partial sum per block of rows, added in block order.
  const std::size_t grain = rows_per_block(d);
  std::vector<float> partial(((n + grain - 1) / grain) * sz(d), 0.0f);
  for_blocks(n, grain, [&](std::size_t first, std::size_t last) {
    float* pg = partial.data() + (first / grain) * sz(d);
    for (std::size_t r = first; r < last; ++r) {
      const float* xr = x.data() + r * sz(d);
      const float* gr = dy.data() + r * sz(d);
      const float rs = rstd[r];
      // y_i = x_i rs g_i, rs = (mean x^2 + eps)^-1/2: dx_i = rs (dy_i g_i - x_i rs^2 mean_j(dy_j g_j x_j)).
      double dot = 0;
      for (std::int64_t i = 0; i < d; ++i) dot += static_cast<double>(gr[i]) * gamma[sz(i)] * xr[i];
      const float m = static_cast<float>(dot / static_cast<double>(d));
      float* dxr = dx.data() + r * sz(d);
      for (std::int64_t i = 0; i < d; ++i) {
        dxr[i] = rs * (gr[i] * gamma[sz(i)] - xr[i] * rs * rs * m);
        pg[i] += gr[i] * xr[i] * rs;
      }
    }
  });
  for (std::size_t b = 0; b < partial.size(); b += sz(d))
    for (std::int64_t i = 0; i < d; ++i) dgamma[sz(i)] += partial[b + sz(i)];
}

void rope(std::span<float> x, std::span<const std::int32_t> positions, std::int64_t heads, std::int64_t row_stride,
          std::int64_t head_dim, float theta, bool inverse) {
  const auto n = positions.size();
  const std::int64_t half = head_dim / 2;
  FLEXSP_EXPECTS(head_dim % 2 == 0 && heads * head_dim <= row_stride && x.size() >= n * sz(row_stride),
                 "rope: {} heads of {} in rows of {}, {} floats for {} rows", heads, head_dim, row_stride, x.size(), n);
  // Frequencies as Hugging Face computes them: 1 / theta^(2i / head_dim) in fp32.
  std::vector<float> inv_freq(sz(half));
  for (std::int64_t i = 0; i < half; ++i)
    inv_freq[sz(i)] = 1.0f / std::pow(theta, static_cast<float>(2 * i) / static_cast<float>(head_dim));
  for_blocks(n, rows_per_block(row_stride), [&](std::size_t first, std::size_t last) {
    std::vector<float> c(sz(half)), sn(sz(half));
    for (std::size_t t = first; t < last; ++t) {
      const float pos = static_cast<float>(positions[t]);
      for (std::int64_t i = 0; i < half; ++i) {
        const float angle = pos * inv_freq[sz(i)];
        c[sz(i)] = std::cos(angle);
        sn[sz(i)] = inverse ? -std::sin(angle) : std::sin(angle);
      }
      float* row = x.data() + t * sz(row_stride);
      for (std::int64_t h = 0; h < heads; ++h) {
        float* v = row + h * head_dim;
        for (std::int64_t i = 0; i < half; ++i) {
          const float a = v[i], b = v[i + half];
          v[i] = a * c[sz(i)] - b * sn[sz(i)];
          v[i + half] = b * c[sz(i)] + a * sn[sz(i)];
        }
      }
    }
  });
}

void swiglu_forward(std::span<const float> gate_up, std::span<float> y, std::int64_t f) {
  const auto n = y.size() / sz(f);
  FLEXSP_EXPECTS(y.size() == n * sz(f) && gate_up.size() == 2 * n * sz(f), "swiglu: gate_up {} y {} f {}",
                 gate_up.size(), y.size(), f);
  for_blocks(n, rows_per_block(2 * f), [&](std::size_t first, std::size_t last) {
    for (std::size_t r = first; r < last; ++r) {
      const float* g = gate_up.data() + r * 2 * sz(f);
      const float* u = g + f;
      float* yr = y.data() + r * sz(f);
      for (std::int64_t i = 0; i < f; ++i) yr[i] = g[i] * sigmoid(g[i]) * u[i];
    }
  });
}

void swiglu_backward(std::span<const float> dy, std::span<const float> gate_up, std::span<float> dgate_up,
                     std::int64_t f) {
  const auto n = dy.size() / sz(f);
  FLEXSP_EXPECTS(dy.size() == n * sz(f) && gate_up.size() == 2 * n * sz(f) && dgate_up.size() == gate_up.size(),
                 "swiglu backward sizes");
  for_blocks(n, rows_per_block(2 * f), [&](std::size_t first, std::size_t last) {
    for (std::size_t r = first; r < last; ++r) {
      const float* g = gate_up.data() + r * 2 * sz(f);
      const float* u = g + f;
      const float* d = dy.data() + r * sz(f);
      float* dg = dgate_up.data() + r * 2 * sz(f);
      float* du = dg + f;
      for (std::int64_t i = 0; i < f; ++i) {
        const float s = sigmoid(g[i]);
        du[i] = d[i] * g[i] * s;
        dg[i] = d[i] * u[i] * s * (1.0f + g[i] * (1.0f - s));
      }
    }
  });
}

void layernorm_forward(std::span<const float> x, std::span<const float> gamma, std::span<const float> beta,
                       std::span<float> y, std::span<float> mean, std::span<float> rstd, std::int64_t d) {
  const auto n = x.size() / sz(d);
  FLEXSP_EXPECTS(x.size() == n * sz(d) && y.size() == x.size() && mean.size() == n && rstd.size() == n &&
                     gamma.size() == sz(d) && beta.size() == sz(d),
                 "layernorm: x {} y {} mean {} rstd {} d {}", x.size(), y.size(), mean.size(), rstd.size(), d);
  for_blocks(n, rows_per_block(d), [&](std::size_t first, std::size_t last) {
    for (std::size_t r = first; r < last; ++r) {
      const float* xr = x.data() + r * sz(d);
      double s = 0;
      for (std::int64_t i = 0; i < d; ++i) s += xr[i];
      const double mu = s / static_cast<double>(d);
      double v = 0;
      for (std::int64_t i = 0; i < d; ++i) v += (xr[i] - mu) * (xr[i] - mu);
      const float rs = static_cast<float>(1.0 / std::sqrt(v / static_cast<double>(d) + kLayerNormEps));
      const float m = static_cast<float>(mu);
      float* yr = y.data() + r * sz(d);
      for (std::int64_t i = 0; i < d; ++i) yr[i] = (xr[i] - m) * rs * gamma[sz(i)] + beta[sz(i)];
      mean[r] = m;
      rstd[r] = rs;
    }
  });
}

void layernorm_backward(std::span<const float> dy, std::span<const float> x, std::span<const float> gamma,
                        std::span<const float> mean, std::span<const float> rstd, std::span<float> dx,
                        std::span<float> dgamma, std::span<float> dbeta, std::int64_t d) {
  const auto n = x.size() / sz(d);
  FLEXSP_EXPECTS(dy.size() == x.size() && dx.size() == x.size() && mean.size() == n && rstd.size() == n,
                 "layernorm backward sizes");
  // dgamma and dbeta: one partial sum per block of rows, added in block order.
  const std::size_t grain = rows_per_block(d);
  std::vector<float> partial(((n + grain - 1) / grain) * 2 * sz(d), 0.0f);
  for_blocks(n, grain, [&](std::size_t first, std::size_t last) {
    float* pg = partial.data() + (first / grain) * 2 * sz(d);
    float* pb = pg + d;
    for (std::size_t r = first; r < last; ++r) {
      const float* xr = x.data() + r * sz(d);
      const float* gr = dy.data() + r * sz(d);
      float* dxr = dx.data() + r * sz(d);
      const float m = mean[r], rs = rstd[r];
      double sum_g = 0, sum_gx = 0;
      for (std::int64_t i = 0; i < d; ++i) {
        const float xhat = (xr[i] - m) * rs;
        const float g = gr[i] * gamma[sz(i)];
        sum_g += g;
        sum_gx += g * xhat;
        pg[i] += gr[i] * xhat;
        pb[i] += gr[i];
      }
      const float mg = static_cast<float>(sum_g / static_cast<double>(d));
      const float mgx = static_cast<float>(sum_gx / static_cast<double>(d));
      for (std::int64_t i = 0; i < d; ++i) {
        const float xhat = (xr[i] - m) * rs;
        dxr[i] = rs * (gr[i] * gamma[sz(i)] - mg - xhat * mgx);
      }
    }
  });
  for (std::size_t b = 0; b < partial.size(); b += 2 * sz(d))
    for (std::int64_t i = 0; i < d; ++i) {
      dgamma[sz(i)] += partial[b + sz(i)];
      dbeta[sz(i)] += partial[b + sz(d + i)];
    }
}

void gemm(bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k, float alpha, const float* a,
          std::int64_t lda, const float* b, std::int64_t ldb, float beta, float* c, std::int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0) {
    for (std::int64_t i = 0; i < m; ++i)
      for (std::int64_t j = 0; j < n; ++j) c[i * ldc + j] = beta == 0.0f ? 0.0f : beta * c[i * ldc + j];
    return;
  }
  auto call = [&](std::int64_t rows, std::int64_t cols, const float* ap, const float* bp, float* cp) {
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
                static_cast<blasint>(rows), static_cast<blasint>(cols), static_cast<blasint>(k), alpha, ap,
                static_cast<blasint>(lda), bp, static_cast<blasint>(ldb), beta, cp, static_cast<blasint>(ldc));
  };
  // OpenBLAS runs single-threaded (its idle threads would spin and take cores from the
  // attention and pointwise work); a large product is split into blocks of C rows (or columns,
  // when C is wide) over the shared worker pool. Every element of C is still one OpenBLAS dot
  // product over the whole of k in the same order, whatever the split.
  const int threads = cpu_math_threads();
  constexpr double kMinFlopsPerBlock = 8.0e6;  // ~50 us of one core: worth waking a worker
  const double flops = 2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k);
  const auto parts = static_cast<std::int64_t>(std::min<double>(threads, flops / kMinFlopsPerBlock));
  const bool split_rows = m >= n;
  const std::int64_t extent = split_rows ? m : n;
  if (parts <= 1 || extent < 32) {
    call(m, n, a, b, c);
    return;
  }
  const std::int64_t block = ((extent + parts - 1) / parts + 15) & ~std::int64_t{15};
  const auto blocks = static_cast<std::size_t>((extent + block - 1) / block);
  detail::parallel_for(blocks, threads, [&](std::size_t i, std::size_t) {
    const std::int64_t first = static_cast<std::int64_t>(i) * block, count = std::min(block, extent - first);
    if (split_rows)
      call(count, n, trans_a ? a + first : a + first * lda, b, c + first * ldc);
    else
      call(m, count, a, trans_b ? b + first * ldb : b + first, c + first);
  });
}

void linear_forward(std::span<const float> x, std::span<const float> w, std::span<const float> b,
                    std::span<float> y, std::int64_t n, std::int64_t in, std::int64_t out) {
  FLEXSP_EXPECTS(x.size() == sz(n * in) && w.size() == sz(in * out) && y.size() == sz(n * out) &&
                     (b.empty() || b.size() == sz(out)),
                 "linear: x {} w {} y {} b {} for n={} in={} out={}", x.size(), w.size(), y.size(), b.size(), n, in,
                 out);
  if (!b.empty()) {
    for (std::int64_t r = 0; r < n; ++r) std::copy(b.begin(), b.end(), y.begin() + r * out);
  }
  gemm(false, false, n, out, in, 1.0f, x.data(), in, w.data(), out, b.empty() ? 0.0f : 1.0f, y.data(), out);
}

void linear_backward(std::span<const float> dy, std::span<const float> x, std::span<const float> w,
                     std::span<float> dx, std::span<float> dw, std::span<float> db, std::int64_t n, std::int64_t in,
                     std::int64_t out) {
  FLEXSP_EXPECTS(dy.size() == sz(n * out) && x.size() == sz(n * in) && dw.size() == sz(in * out) &&
                     (dx.empty() || dx.size() == sz(n * in)) && (db.empty() || db.size() == sz(out)),
                 "linear backward sizes");
  if (!dx.empty()) gemm(false, true, n, in, out, 1.0f, dy.data(), out, w.data(), out, 0.0f, dx.data(), in);
  gemm(true, false, in, out, n, 1.0f, x.data(), in, dy.data(), out, 1.0f, dw.data(), out);
  if (!db.empty()) {
    for (std::int64_t r = 0; r < n; ++r) {
      const float* g = dy.data() + r * out;
      for (std::int64_t j = 0; j < out; ++j) db[sz(j)] += g[j];
    }
  }
}

namespace {
constexpr float kGeluC = 0.7978845608028654f;  // sqrt(2 / pi)
}

void gelu_forward(std::span<const float> x, std::span<float> y) {
  FLEXSP_EXPECTS(x.size() == y.size(), "gelu: x {} y {}", x.size(), y.size());
  for_blocks(x.size(), kBlockFloats, [&](std::size_t first, std::size_t last) {
    for (std::size_t i = first; i < last; ++i) {
      const float v = x[i];
      y[i] = 0.5f * v * (1.0f + detail::tanh_approx(kGeluC * (v + 0.044715f * v * v * v)));
    }
  });
}

void gelu_backward(std::span<const float> dy, std::span<const float> x, std::span<float> dx) {
  FLEXSP_EXPECTS(x.size() == dy.size() && dx.size() == x.size(), "gelu backward sizes");
  for_blocks(x.size(), kBlockFloats, [&](std::size_t first, std::size_t last) {
    for (std::size_t i = first; i < last; ++i) {
      const float v = x[i];
      const float u = kGeluC * (v + 0.044715f * v * v * v);
      const float th = detail::tanh_approx(u);
      const float du = kGeluC * (1.0f + 3.0f * 0.044715f * v * v);
      dx[i] = dy[i] * (0.5f * (1.0f + th) + 0.5f * v * (1.0f - th * th) * du);
    }
  });
}

void residual_forward(std::span<const float> a, std::span<const float> b, std::span<float> out) {
  FLEXSP_EXPECTS(a.size() == b.size() && out.size() == a.size(), "residual sizes {} {} {}", a.size(), b.size(),
                 out.size());
  for_blocks(a.size(), kBlockFloats, [&](std::size_t first, std::size_t last) {
    for (std::size_t i = first; i < last; ++i) out[i] = a[i] + b[i];
  });
}

void residual_backward(std::span<const float> dout, std::span<float> da, std::span<float> db) {
  FLEXSP_EXPECTS(da.size() == dout.size() && db.size() == dout.size(), "residual backward sizes");
  for_blocks(dout.size(), kBlockFloats, [&](std::size_t first, std::size_t last) {
    for (std::size_t i = first; i < last; ++i) {
      da[i] += dout[i];
      db[i] += dout[i];
    }
  });
}

expected<double> cross_entropy_forward_backward(std::span<const float> logits, std::span<const std::int32_t> targets,
                                                std::span<float> dlogits, std::int64_t vocab, float scale) {
  const auto n = targets.size();
  FLEXSP_EXPECTS(logits.size() == n * sz(vocab) && (dlogits.empty() || dlogits.size() == logits.size()),
                 "cross entropy: logits {} targets {} vocab {}", logits.size(), n, vocab);
  double total = 0;
  for (std::size_t r = 0; r < n; ++r) {
    const auto tgt = targets[r];
    if (tgt < 0 || tgt >= vocab)
      return make_error(errc::invalid_argument, "target id {} at index {} outside vocabulary [0, {})", tgt, r, vocab);
    const float* l = logits.data() + r * sz(vocab);
    const float mx = *std::max_element(l, l + vocab);
    double s = 0;
    for (std::int64_t j = 0; j < vocab; ++j) s += std::exp(static_cast<double>(l[j] - mx));
    const double lse = mx + std::log(s);
    total += lse - l[tgt];
    if (!dlogits.empty()) {
      float* g = dlogits.data() + r * sz(vocab);
      for (std::int64_t j = 0; j < vocab; ++j) g[j] = scale * static_cast<float>(std::exp(l[j] - lse));
      g[tgt] -= scale;
    }
  }
  return total;
}

void adamw_update(std::span<float> param, std::span<const float> grad, std::span<float> m, std::span<float> v,
                  std::int64_t step, const adamw_params& p) {
  FLEXSP_EXPECTS(grad.size() == param.size() && m.size() == param.size() && v.size() == param.size() && step >= 1,
                 "adamw: param {} grad {} m {} v {} step {}", param.size(), grad.size(), m.size(), v.size(), step);
  const double bc1 = 1.0 - std::pow(static_cast<double>(p.beta1), static_cast<double>(step));
  const double bc2 = 1.0 - std::pow(static_cast<double>(p.beta2), static_cast<double>(step));
  const float step_size = static_cast<float>(p.lr / bc1);
  const float bc2_sqrt = static_cast<float>(std::sqrt(bc2));
  for_blocks(param.size(), kBlockFloats, [&](std::size_t first, std::size_t last) {
    for (std::size_t i = first; i < last; ++i) {
      m[i] = p.beta1 * m[i] + (1.0f - p.beta1) * grad[i];
      v[i] = p.beta2 * v[i] + (1.0f - p.beta2) * grad[i] * grad[i];
      param[i] -= p.lr * p.weight_decay * param[i];
      param[i] -= step_size * m[i] / (std::sqrt(v[i]) / bc2_sqrt + p.eps);
    }
  });
}

double l2_norm(std::span<const float> values) {
  double s = 0;
  for (float x : values) s += static_cast<double>(x) * x;
  return std::sqrt(s);
}

double clip_grad_norm(std::span<float> grads, double max_norm) {
  const double norm = l2_norm(grads);
  if (max_norm > 0 && norm > max_norm) {
    const float f = static_cast<float>(max_norm / (norm + 1e-6));
    for (float& g : grads) g *= f;
  }
  return norm;
}

namespace {
std::atomic<int> g_math_threads{0};  // 0: not set by add_cpu_devices yet

int threads_from_environment() noexcept {
  for (const char* name : {"FLEXSP_CPU_THREADS", "OPENBLAS_NUM_THREADS"})
    if (const char* fixed = std::getenv(name); fixed != nullptr && std::atoi(fixed) > 0) return std::atoi(fixed);
  return 0;
}

// OpenBLAS itself stays on one thread (see gemm); set once, before the first product.
const bool g_blas_single_threaded = [] {
  openblas_set_num_threads(1);
  return true;
}();
}  // namespace

int cpu_math_threads() noexcept {
  if (const int t = g_math_threads.load(std::memory_order_relaxed); t > 0) return t;
  if (const int fixed = threads_from_environment(); fixed > 0) return fixed;
  return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

std::string blas_core() {
  const char* name = openblas_get_corename();
  return name ? std::string{name} : std::string{"unknown"};
}

void restart_with_best_blas_kernels(char** argv) {
  if (std::getenv("OPENBLAS_CORETYPE") != nullptr || std::getenv("FLEXSP_BLAS_RESTARTED") != nullptr) return;
  const char* best = nullptr;
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
    best = "SkylakeX";
  else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    best = "Haswell";
  if (best == nullptr) return;
  // Only cores older than AVX2: a newer one (Cooperlake, Zen, ...) was chosen on purpose.
  static constexpr const char* kOld[] = {"Prescott", "Core2", "Penryn", "Dunnington", "Nehalem", "Atom", "Katmai",
                                         "Coppermine", "Northwood", "Banias", "Sandybridge", "Barcelona", "Bobcat",
                                         "Bulldozer", "Piledriver", "Steamroller", "Excavator"};
  const auto current = blas_core();
  bool old = false;
  for (const char* o : kOld) old = old || current == o;
  if (!old || argv == nullptr || argv[0] == nullptr) return;
  ::setenv("OPENBLAS_CORETYPE", best, 1);
  ::setenv("FLEXSP_BLAS_RESTARTED", "1", 1);
  // No message here: output stays machine-readable (`flexsp info` names the kernels in use).
  ::setenv("FLEXSP_BLAS_MISDETECTED", current.c_str(), 1);
  ::execv("/proc/self/exe", argv);
  // exec failed: go on with the kernels we have.
  ::unsetenv("OPENBLAS_CORETYPE");
}

namespace {
std::mutex g_devices_mutex;
int g_cpu_devices = 0;
std::atomic<std::uint64_t> g_cpu_device_memory{0};
}  // namespace

void set_cpu_device_memory(std::uint64_t bytes) noexcept { g_cpu_device_memory.store(bytes); }
std::uint64_t cpu_device_memory() noexcept { return g_cpu_device_memory.load(); }

int cpu_devices() noexcept {
  std::lock_guard lock{g_devices_mutex};
  return g_cpu_devices;
}

int add_cpu_devices(int devices) noexcept {
  std::lock_guard lock{g_devices_mutex};
  g_cpu_devices = std::max(0, g_cpu_devices + devices);
  const int total = g_cpu_devices;
  int threads = threads_from_environment();
  if (threads == 0) {
    const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    threads = std::max(1, cores / std::max(1, total));
  }
  (void)g_blas_single_threaded;
  g_math_threads.store(threads, std::memory_order_relaxed);
  return threads;
}

std::uint16_t to_bf16(float v) noexcept {
  std::uint32_t bits;
  std::memcpy(&bits, &v, 4);
  if ((bits & 0x7f800000u) == 0x7f800000u && (bits & 0x007fffffu) != 0)
    return static_cast<std::uint16_t>((bits >> 16) | 0x40u);  // a NaN stays a NaN
  bits += 0x7fffu + ((bits >> 16) & 1u);                        // round to nearest even
  return static_cast<std::uint16_t>(bits >> 16);
}

float from_bf16(std::uint16_t v) noexcept {
  const std::uint32_t bits = static_cast<std::uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

void copy_blocks(std::span<const row_block> blocks, const float* src, float* dst) noexcept {
  for (const auto& b : blocks)
    for (std::int64_t i = 0; i < b.rows; ++i)
      std::copy_n(src + b.src_offset + i * b.src_pitch, b.row_len, dst + b.dst_offset + i * b.dst_pitch);
}

std::uint64_t fingerprint(std::span<const float> data, std::uint64_t first_position) noexcept {
  std::uint64_t sum = 0;
  for (std::size_t i = 0; i < data.size(); ++i) {
    std::uint32_t bits;
    std::memcpy(&bits, &data[i], sizeof bits);
    sum += detail::fingerprint_term(bits, first_position + i);
  }
  return sum;
}

}  // namespace flexsp::kernels
