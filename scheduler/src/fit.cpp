#include "flexsp/scheduler/fit.hpp"

#include <algorithm>
#include <cmath>

namespace flexsp::scheduler {

expected<fit_result> fit_profile(const std::vector<fit_sample>& samples, const profile& base) {
  std::vector<int> comm_degrees;
  for (const auto& s : samples) {
    if (s.degree < 1) return make_error(errc::invalid_argument, "fit sample has degree {}", s.degree);
    if (s.lengths.empty()) return make_error(errc::invalid_argument, "fit sample has no sequences");
    if (!(s.time_ms > 0) || !std::isfinite(s.time_ms))
      return make_error(errc::invalid_argument, "fit sample has time {} ms", s.time_ms);
    if (s.degree > 1 && std::find(comm_degrees.begin(), comm_degrees.end(), s.degree) == comm_degrees.end())
      comm_degrees.push_back(s.degree);
  }
  std::sort(comm_degrees.begin(), comm_degrees.end());
  const std::size_t p = 3 + comm_degrees.size();  // alpha1, alpha2, beta1, 1/bw per degree
  if (samples.size() < p)
    return make_error(errc::invalid_argument, "{} samples cannot determine {} constants", samples.size(), p);
  const double volume_per_token = 4.0 * 2.0 * base.layers * static_cast<double>(base.hidden) * 2.0 / (1024.0 * 1024.0);
  std::vector<std::vector<double>> rows;
  std::vector<double> y;
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
      const auto j = static_cast<std::size_t>(std::find(comm_degrees.begin(), comm_degrees.end(), s.degree) - comm_degrees.begin());
      r[3 + j] = volume_per_token * lin / s.degree;
    }
    rows.push_back(std::move(r));
    y.push_back(s.time_ms);
  }
  // Scale columns to unit norm, then solve the normal equations by Gaussian elimination with
  // partial pivoting; the scaling keeps s^2 and 1 columns on comparable footing.
  std::vector<double> scale(p, 0.0);
  for (const auto& r : rows)
    for (std::size_t j = 0; j < p; ++j) scale[j] += r[j] * r[j];
  for (std::size_t j = 0; j < p; ++j) {
    if (scale[j] <= 0) return make_error(errc::invalid_argument, "the samples do not determine constant {}", j);
    scale[j] = std::sqrt(scale[j]);
  }
  std::vector<std::vector<double>> a(p, std::vector<double>(p + 1, 0.0));
  for (std::size_t i = 0; i < rows.size(); ++i)
    for (std::size_t j = 0; j < p; ++j) {
      const double rj = rows[i][j] / scale[j];
      for (std::size_t k = 0; k < p; ++k) a[j][k] += rj * rows[i][k] / scale[k];
      a[j][p] += rj * y[i];
    }
  for (std::size_t c = 0; c < p; ++c) {
    std::size_t piv = c;
    for (std::size_t r = c + 1; r < p; ++r)
      if (std::abs(a[r][c]) > std::abs(a[piv][c])) piv = r;
    if (std::abs(a[piv][c]) < 1e-12)
      return make_error(errc::invalid_argument, "the samples cannot separate the constants (vary lengths and degrees)");
    std::swap(a[c], a[piv]);
    for (std::size_t r = 0; r < p; ++r) {
      if (r == c) continue;
      const double f = a[r][c] / a[c][c];
      for (std::size_t k = c; k <= p; ++k) a[r][k] -= f * a[c][k];
    }
  }
  std::vector<double> x(p);
  for (std::size_t j = 0; j < p; ++j) x[j] = a[j][p] / a[j][j] / scale[j];
  fit_result out;
  out.alpha1 = x[0];
  out.alpha2 = x[1];
  out.beta1 = x[2];
  for (std::size_t j = 0; j < comm_degrees.size(); ++j) {
    if (!(x[3 + j] > 0))
      return make_error(errc::invalid_argument, "fitted all-to-all time of degree {} is not positive", comm_degrees[j]);
    out.bandwidth_gbps[comm_degrees[j]] = 1.0 / x[3 + j];
  }
  double sq = 0;
  for (std::size_t i = 0; i < rows.size(); ++i) {
    double pred = 0;
    for (std::size_t j = 0; j < p; ++j) pred += rows[i][j] * x[j];
    sq += (pred - y[i]) * (pred - y[i]);
    out.max_relative_error = std::max(out.max_relative_error, std::abs(pred - y[i]) / y[i]);
  }
  out.rms_error_ms = std::sqrt(sq / static_cast<double>(rows.size()));
  return out;
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
