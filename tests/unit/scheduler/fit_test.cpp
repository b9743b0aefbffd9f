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

// Training groups: 8 sequences of 900..1100 tokens each, so alpha1, alpha2 and beta1 are nearly
// collinear; timed as a loaded CPU times them, with a negative intercept the model cannot take.
std::vector<fit_sample> training_like_samples(std::uint32_t seed) {
  std::mt19937 rng{seed};
  std::normal_distribution<double> err{0.0, 0.03};
  std::vector<fit_sample> out;
  for (int i = 0; i < 120; ++i) {
    fit_sample s;
    double sq = 0, lin = 0;
    for (int k = 0; k < 8; ++k) {
      const auto l = 900 + static_cast<std::int64_t>(rng() % 200);
      s.lengths.push_back(l);
      sq += static_cast<double>(l * l);
      lin += static_cast<double>(l);
    }
    s.time_ms = (0.0002 * sq + 0.06 * lin - 300.0) * (1 + err(rng));
    out.push_back(std::move(s));
  }
  return out;
}

TEST(ProfileRefit, CollinearTrainingTimingsGiveValidConstantsThatPredictThem) {
  auto current = *builtin_profile("gpt-7b");
  current.alpha1 = 4e-4;
  current.alpha2 = 0.15;
  current.beta1 = 0;
  const auto samples = training_like_samples(11);
  auto plain = fit_profile(samples, current);
  ASSERT_TRUE(plain) << plain.error().message();
  ASSERT_LT(plain->beta1, 0) << "the scenario: an unconstrained fit wants a negative intercept";

  auto fit = refit_profile(samples, current);
  ASSERT_TRUE(fit) << fit.error().message();
  EXPECT_GE(fit->alpha1, 0);
  EXPECT_GE(fit->alpha2, 0);
  EXPECT_EQ(fit->beta1, 0) << "held at zero";
  EXPECT_GE(fit->held, 1);
  const auto p = apply_fit(current, *fit);
  ASSERT_TRUE(p.validate());
  const cost_model m{p, 64};
  double err = 0;
  for (const auto& s : samples) err += std::abs(m.group_time_ms(1, s.lengths) - s.time_ms) / s.time_ms;
  EXPECT_LT(err / static_cast<double>(samples.size()), 0.06) << "the refit profile predicts the groups it saw";
  const cost_model before{current, 64};
  double err_before = 0;
  for (const auto& s : samples) err_before += std::abs(before.group_time_ms(1, s.lengths) - s.time_ms) / s.time_ms;
  EXPECT_GT(err_before / static_cast<double>(samples.size()), 0.5) << "and the profile it started from did not";
}

TEST(ProfileRefit, WellSpreadTimingsMoveAWrongProfileToTheTruth) {
  const auto truth = *builtin_profile("gpt-7b");
  auto wrong = truth;
  wrong.alpha1 *= 2;
  wrong.alpha2 *= 0.5;
  wrong.beta1 *= 3;
  for (auto& [d, bw] : wrong.bandwidth_gbps) bw *= 2;
  auto fit = refit_profile(samples_from(truth, 0.0, 3), wrong);
  ASSERT_TRUE(fit) << fit.error().message();
  EXPECT_EQ(fit->held, 0);
  EXPECT_NEAR(fit->alpha1 / truth.alpha1, 1.0, 0.01);
  EXPECT_NEAR(fit->alpha2 / truth.alpha2, 1.0, 0.01);
  for (int d : {2, 4, 8, 16, 32}) EXPECT_NEAR(fit->bandwidth_gbps.at(d) / truth.bandwidth_gbps.at(d), 1.0, 0.02) << d;
}

TEST(ProfileRefit, ABandwidthTheTimingsWouldMakeNegativeKeepsItsCurrentValue) {
  auto current = *builtin_profile("gpt-7b");
  const cost_model m{current, 64};
  std::vector<fit_sample> samples;
  for (int i = 0; i < 40; ++i) {
    fit_sample s;
    s.degree = i % 2 ? 2 : 1;
    s.lengths = {1000 + 400 * (i % 7), 3000 + 200 * (i % 5)};
    // Degree-2 groups finish faster than half their compute: no all-to-all time is left for them.
    s.time_ms = m.group_time_ms(1, s.lengths) / (s.degree == 2 ? 2.5 : 1.0);
    samples.push_back(std::move(s));
  }
  ASSERT_FALSE(fit_profile(samples, current)) << "the unconstrained fit wants a negative all-to-all time";
  auto fit = refit_profile(samples, current);
  ASSERT_TRUE(fit) << fit.error().message();
  EXPECT_GE(fit->held, 1);
  EXPECT_DOUBLE_EQ(fit->bandwidth_gbps.at(2), current.bandwidth_gbps.at(2));
}

}  // namespace
}  // namespace flexsp::scheduler
