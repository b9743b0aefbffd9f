#include "flexsp/scheduler/fit.hpp"

#include <algorithm>
#include <cmath>

namespace flexsp::scheduler {

namespace {

/// The least-squares problem of a fit: one row per sample over the columns alpha1 (sum s^2 / d),
/// alpha2 (sum s / d), beta1 (1) and, per degree > 1 seen, 1/bandwidth (all-to-all volume / d).
struct design {
  std::vector<int> comm_degrees;
  std::vector<std::vector<double>> rows;
  std::vector<double> y;
  std::size_t columns() const { return 3 + comm_degrees.size(); }
};

expected<design> make_design(const std::vector<fit_sample>& samples, const profile& base) {
  design d;
  for (const auto& s : samples) {
    if (s.degree < 1) return make_error(errc::invalid_argument, "fit sample has degree {}", s.degree);
    if (s.lengths.empty()) return make_error(errc::invalid_argument, "fit sample has no sequences");
    if (!(s.time_ms > 0) || !std::isfinite(s.time_ms))
      return make_error(errc::invalid_argument, "fit sample has time {} ms", s.time_ms);
    if (s.degree > 1 && std::find(d.comm_degrees.begin(), d.comm_degrees.end(), s.degree) == d.comm_degrees.end())
      d.comm_degrees.push_back(s.degree);
  }
  std::sort(d.comm_degrees.begin(), d.comm_degrees.end());
  const std::size_t p = d.columns();
  if (samples.size() < p)
    return make_error(errc::invalid_argument, "{} samples cannot determine {} constants", samples.size(), p);
  const double volume_per_token = 4.0 * 2.0 * base.layers * static_cast<double>(base.hidden) * 2.0 / (1024.0 * 1024.0);
  for (const auto& s : samples) {
    std::vector<double> r(p, 0.0);
    double sq = 0, lin = 0;
    for (auto l : s.lengths) {
      const double x = static_cast<double>(l);
      sq += x * x;
      lin += x;
    }
    r[0] = sq / s.degree;
    r[1] = lin / s.degree;
    r[2] = 1.0;
    if (s.degree > 1) {
      const auto j = static_cast<std::size_t>(std::find(d.comm_degrees.begin(), d.comm_degrees.end(), s.degree) -
                                              d.comm_degrees.begin());
      r[3 + j] = volume_per_token * lin / s.degree;
    }
    d.rows.push_back(std::move(r));
    d.y.push_back(s.time_ms);
  }
  return d;
}

/// Least squares over the columns in `free` (the others held at `held`'s values), plus
/// `lambda` * |z - z0|^2 on the free columns scaled to unit norm (z0: `prior` scaled), which
/// holds directions the samples do not determine at the prior. Normal equations, Gaussian
/// elimination with partial pivoting; the scaling keeps s^2 and 1 columns on comparable footing.
expected<std::vector<double>> solve(const design& d, const std::vector<bool>& free, const std::vector<double>& held,
                                    const std::vector<double>& prior, double lambda) {
  const std::size_t p = d.columns();
  std::vector<std::size_t> cols;
  for (std::size_t j = 0; j < p; ++j)
    if (free[j]) cols.push_back(j);
  const std::size_t q = cols.size();
  std::vector<double> x = held;
  if (q == 0) return x;
  std::vector<double> scale(q, 0.0);
  for (const auto& r : d.rows)
    for (std::size_t k = 0; k < q; ++k) scale[k] += r[cols[k]] * r[cols[k]];
  for (std::size_t k = 0; k < q; ++k) {
    if (scale[k] <= 0) return make_error(errc::invalid_argument, "the samples do not determine constant {}", cols[k]);
    scale[k] = std::sqrt(scale[k]);
  }
  std::vector<std::vector<double>> a(q, std::vector<double>(q + 1, 0.0));
  for (std::size_t i = 0; i < d.rows.size(); ++i) {
    double target = d.y[i];
    for (std::size_t j = 0; j < p; ++j)
      if (!free[j]) target -= d.rows[i][j] * held[j];
    for (std::size_t k = 0; k < q; ++k) {
      const double rk = d.rows[i][cols[k]] / scale[k];
      for (std::size_t m = 0; m < q; ++m) a[k][m] += rk * d.rows[i][cols[m]] / scale[m];
      a[k][q] += rk * target;
    }
  }
  for (std::size_t k = 0; k < q; ++k) {
    a[k][k] += lambda;
    a[k][q] += lambda * prior[cols[k]] * scale[k];
  }
  for (std::size_t c = 0; c < q; ++c) {
    std::size_t piv = c;
    for (std::size_t r = c + 1; r < q; ++r)
      if (std::abs(a[r][c]) > std::abs(a[piv][c])) piv = r;
    if (std::abs(a[piv][c]) < 1e-12)
      return make_error(errc::invalid_argument, "the samples cannot separate the constants (vary lengths and degrees)");
    std::swap(a[c], a[piv]);
    for (std::size_t r = 0; r < q; ++r) {
      if (r == c) continue;
      const double f = a[r][c] / a[c][c];
      for (std::size_t k = c; k <= q; ++k) a[r][k] -= f * a[c][k];
    }
  }
  for (std::size_t k = 0; k < q; ++k) x[cols[k]] = a[k][q] / a[k][k] / scale[k];
  return x;
}

fit_result result_of(const design& d, const std::vector<double>& x) {
  fit_result out;
  out.alpha1 = x[0];
  out.alpha2 = x[1];
  out.beta1 = x[2];
  for (std::size_t j = 0; j < d.comm_degrees.size(); ++j)
    if (x[3 + j] > 0) out.bandwidth_gbps[d.comm_degrees[j]] = 1.0 / x[3 + j];
  double sq = 0;
  for (std::size_t i = 0; i < d.rows.size(); ++i) {
    double pred = 0;
    for (std::size_t j = 0; j < d.columns(); ++j) pred += d.rows[i][j] * x[j];
    sq += (pred - d.y[i]) * (pred - d.y[i]);
    out.max_relative_error = std::max(out.max_relative_error, std::abs(pred - d.y[i]) / d.y[i]);
  }
  out.rms_error_ms = std::sqrt(sq / static_cast<double>(d.rows.size()));
  return out;
}

}  // namespace

expected<fit_result> fit_profile(const std::vector<fit_sample>& samples, const profile& base) {
  FLEXSP_TRY_ASSIGN(const design d, make_design(samples, base));
  const std::size_t p = d.columns();
  FLEXSP_TRY_ASSIGN(const auto x, solve(d, std::vector<bool>(p, true), std::vector<double>(p, 0.0),
                                        std::vector<double>(p, 0.0), 0.0));
  for (std::size_t j = 0; j < d.comm_degrees.size(); ++j)
    if (!(x[3 + j] > 0))
      return make_error(errc::invalid_argument, "fitted all-to-all time of degree {} is not positive", d.comm_degrees[j]);
  return result_of(d, x);
}

expected<fit_result> refit_profile(const std::vector<fit_sample>& samples, const profile& current) {
  FLEXSP_TRY_ASSIGN(const design d, make_design(samples, current));
  const std::size_t p = d.columns();
  // The prior: the current constants (1/bandwidth for the all-to-all columns).
  std::vector<double> prior(p, 0.0);
  prior[0] = current.alpha1;
  prior[1] = current.alpha2;
  prior[2] = current.beta1;
  for (std::size_t j = 0; j < d.comm_degrees.size(); ++j)
    if (auto bw = current.bandwidth_gbps.find(d.comm_degrees[j]); bw != current.bandwidth_gbps.end() && bw->second > 0)
      prior[3 + j] = 1.0 / bw->second;
  // A constant the samples pull below zero is held: alpha1, alpha2 and beta1 at 0, a bandwidth
  // at its current value; the others are fitted again without it, until every one is valid.
  static constexpr double kLambda = 1e-5;
  std::vector<bool> free(p, true);
  std::vector<double> held(p, 0.0);
  for (std::size_t round = 0; round <= p; ++round) {
    FLEXSP_TRY_ASSIGN(const auto x, solve(d, free, held, prior, kLambda));
    std::size_t worst = p;
    for (std::size_t j = 0; j < p; ++j) {
      const bool invalid = j < 3 ? x[j] < 0 : !(x[j] > 0);
      if (free[j] && invalid && (worst == p || x[j] < x[worst])) worst = j;
    }
    if (worst == p) {
      auto out = result_of(d, x);
      for (std::size_t j = 0; j < p; ++j) out.held += !free[j];
      return out;
    }
    free[worst] = false;
    held[worst] = worst < 3 ? 0.0 : prior[worst];
  }
  return make_error(errc::invalid_argument, "no valid constants explain the samples");
}

profile apply_fit(profile base, const fit_result& fit) {
  base.alpha1 = fit.alpha1;
  base.alpha2 = fit.alpha2;
  base.beta1 = fit.beta1;
  for (const auto& [d, bw] : fit.bandwidth_gbps) base.bandwidth_gbps[d] = bw;
  return base;
}

calibration_probe make_calibration_probe(int devices, std::int64_t max_seq) {
  calibration_probe c;
  auto len = [&](std::int64_t div) { return std::max<std::int64_t>(8, max_seq / div); };
  const std::vector<std::vector<std::int64_t>> sets{{len(2)}, {len(8)}, {len(16), len(16), len(16), len(16)}};
  c.probe.strategy = "calibration";
  c.probe.devices = devices;
  for (int d = 1; d <= devices; d *= 2) {
    for (const auto& set : sets) {
      micro_batch mb;
      for (int g = 0; g < devices / d; ++g) {
        sp_group grp;
        grp.degree = d;
        for (int k = 0; k < d; ++k) grp.devices.push_back(g * d + k);
        for (auto l : set) {
          grp.sequences.push_back(static_cast<int>(c.lengths.size()));
          c.lengths.push_back(l);
        }
        mb.groups.push_back(std::move(grp));
      }
      c.probe.micro_batches.push_back(std::move(mb));
    }
  }
  return c;
}

}  // namespace flexsp::scheduler
