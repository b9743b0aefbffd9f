#pragma once
/// \file
/// Calibrating the cost model from measured step timings: a least-squares fit of alpha1, alpha2,
/// beta1 and the all-to-all bandwidth of every degree seen, so the runtime can replace published
/// constants with its own devices' figures.

#include <algorithm>
#include <cstdint>
#include <map>
#include <vector>

#include "flexsp/core/error.hpp"
#include "flexsp/scheduler/plan.hpp"
#include "flexsp/scheduler/profile.hpp"

namespace flexsp::scheduler {

/// One measurement: a group of `degree` devices ran `lengths` in `time_ms`.
struct fit_sample {
  std::vector<std::int64_t> lengths;
  int degree{1};
  double time_ms{0};
};

/// The fitted constants and how well they explain the samples.
struct fit_result {
  double alpha1{0};
  double alpha2{0};
  double beta1{0};
  std::map<int, double> bandwidth_gbps;  ///< one entry per degree > 1 present in the samples
  double rms_error_ms{0};                ///< root mean square residual
  double max_relative_error{0};          ///< largest |predicted - measured| / measured
  int held{0};                           ///< refit_profile: constants held (see there)
};

/// Fits the model T = beta1 + sum (alpha1 s^2 + alpha2 s)/d + [d>1] sum V(s)/(d bw[d]), where V
/// comes from `base.hidden` and `base.layers`. Fails with errc::invalid_argument when the samples
/// cannot determine every constant (too few, or lengths that do not vary).
expected<fit_result> fit_profile(const std::vector<fit_sample>& samples, const profile& base);

/// The online refit: the same model fitted to timings measured in training, which rarely vary
/// enough to separate every constant (groups of similar total length make alpha1, alpha2 and
/// beta1 nearly collinear). Directions the samples do not determine stay near `current`'s
/// constants (a small ridge term toward them), and a constant the samples would pull negative is
/// held (alpha1, alpha2, beta1 at 0; a bandwidth at its current value) while the others are
/// fitted again. Fails only on invalid samples or too few of them.
expected<fit_result> refit_profile(const std::vector<fit_sample>& samples, const profile& current);

/// `base` with the fitted constants written in (other fields unchanged).
profile apply_fit(profile base, const fit_result& fit);

/// Timing probes that separate alpha1, alpha2, beta1 and the bandwidths: for every power-of-two
/// degree d <= devices, three micro-batches of devices/d groups (one long sequence, one
/// shorter, four short), lengths scaled to `max_seq`. `lengths` indexes the plan's sequences.
struct calibration_probe {
  plan probe;
  std::vector<std::int64_t> lengths;
};
calibration_probe make_calibration_probe(int devices, std::int64_t max_seq);

/// The samples of a probe run: per group, its degree, lengths and the slowest member's time.
/// `measured(device, micro_batch)` gives a device's forward/backward ms in a micro-batch.
template <class Measured>
std::vector<fit_sample> probe_samples(const calibration_probe& c, Measured&& measured) {
  std::vector<fit_sample> out;
  for (std::size_t m = 0; m < c.probe.micro_batches.size(); ++m)
    for (const auto& g : c.probe.micro_batches[m].groups) {
      fit_sample s;
      s.degree = g.degree;
      for (int d : g.devices) s.time_ms = std::max(s.time_ms, static_cast<double>(measured(d, m)));
      for (int q : g.sequences) s.lengths.push_back(c.lengths[static_cast<std::size_t>(q)]);
      out.push_back(std::move(s));
    }
  return out;
}

}  // namespace flexsp::scheduler
