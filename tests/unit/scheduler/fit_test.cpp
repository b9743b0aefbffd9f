#include <random>

#include <gtest/gtest.h>

#include "flexsp/scheduler/cost_model.hpp"
#include "flexsp/scheduler/fit.hpp"

namespace flexsp::scheduler {
namespace {

std::vector<fit_sample> samples_from(const profile& truth, double noise, std::uint32_t seed) {
  const cost_model m{truth, 64};
  std::mt19937 rng{seed};
  std::normal_distribution<double> err{0.0, noise};
  std::vector<fit_sample> out;
  for (int i = 0; i < 200; ++i) {
    fit_sample s;
    s.degree = 1 << (i % 6);  // 1 .. 32
    const int n = 1 + static_cast<int>(rng() % 6);
    for (int k = 0; k < n; ++k) s.lengths.push_back(128 + static_cast<std::int64_t>(rng() % 6000) * s.degree);
    s.time_ms = m.group_time_ms(s.degree, s.lengths) * (1 + err(rng));
    out.push_back(std::move(s));
  }
  return out;
}

TEST(ProfileFit, RecoversKnownConstantsFromExactTimings) {
  const auto truth = *builtin_profile("gpt-7b");
  auto fit = fit_profile(samples_from(truth, 0.0, 3), truth);
  ASSERT_TRUE(fit) << fit.error().message();
  EXPECT_NEAR(fit->alpha1 / truth.alpha1, 1.0, 1e-6);
  EXPECT_NEAR(fit->alpha2 / truth.alpha2, 1.0, 1e-6);
  EXPECT_NEAR(fit->beta1 / truth.beta1, 1.0, 1e-6);
  for (int d : {2, 4, 8, 16, 32}) EXPECT_NEAR(fit->bandwidth_gbps.at(d) / truth.bandwidth_gbps.at(d), 1.0, 1e-6) << d;
  EXPECT_LT(fit->max_relative_error, 1e-9);
}

TEST(ProfileFit, StaysCloseUnderMeasurementNoise) {
  const auto truth = *builtin_profile("gpt-13b");
  auto fit = fit_profile(samples_from(truth, 0.01, 5), truth);
  ASSERT_TRUE(fit) << fit.error().message();
  EXPECT_NEAR(fit->alpha1 / truth.alpha1, 1.0, 0.05);
  EXPECT_NEAR(fit->alpha2 / truth.alpha2, 1.0, 0.05);
  const auto fitted = apply_fit(truth, *fit);
  const cost_model a{truth, 64}, b{fitted, 64};
  const std::int64_t probe[] = {32768, 4096};
  EXPECT_NEAR(b.group_time_ms(8, probe) / a.group_time_ms(8, probe), 1.0, 0.02);
}

TEST(ProfileFit, TooFewOrDegenerateSamplesAreRejected) {
  const auto base = *builtin_profile("gpt-7b");
  std::vector<fit_sample> few{{{1000}, 1, 800.0}};
  auto r = fit_profile(few, base);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().kind(), errc::invalid_argument);
  std::vector<fit_sample> same(10, fit_sample{{1000}, 1, 800.0});
  EXPECT_FALSE(fit_profile(same, base));
}

}  // namespace
}  // namespace flexsp::scheduler
