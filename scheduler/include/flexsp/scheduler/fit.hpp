#pragma once
/// \file
/// Calibrating the cost model from measured step timings: a least-squares fit of alpha1, alpha2,
/// beta1 and the all-to-all bandwidth of every degree seen, so the runtime can replace published
/// constants with its own devices' figures.

#include <cstdint>
#include <map>
#include <vector>

#include "flexsp/core/error.hpp"
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
};

/// Fits the model T = beta1 + sum (alpha1 s^2 + alpha2 s)/d + [d>1] sum V(s)/(d bw[d]), where V
/// comes from `base.hidden` and `base.layers`. Fails with errc::invalid_argument when the samples
/// cannot determine every constant (too few, or lengths that do not vary).
expected<fit_result> fit_profile(const std::vector<fit_sample>& samples, const profile& base);

/// `base` with the fitted constants written in (other fields unchanged).
profile apply_fit(profile base, const fit_result& fit);

}  // namespace flexsp::scheduler
