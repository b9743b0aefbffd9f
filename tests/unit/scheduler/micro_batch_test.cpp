#include <algorithm>
#include <cmath>
#include <limits>
#include <random>

#include <gtest/gtest.h>

#include "flexsp/scheduler/micro_batch.hpp"
#include "flexsp/scheduler/milp.hpp"

namespace flexsp::scheduler {
namespace {

// A small model where memory and communication both matter on 4 devices: a device holds 983
// tokens, degree-2 groups 1966 and degree-4 groups 3932.
profile tiny_profile() {
  profile p;
  p.name = "tiny";
  p.alpha1 = 1e-4;
  p.alpha2 = 0.1;
  p.beta1 = 5;
  p.act_per_token_mb = 1.0;
  p.hidden = 64;
  p.layers = 2;
  p.params_b = 0.01;
  p.bandwidth_gbps = {{2, 0.05}, {4, 0.02}};
  p.mem_limit_gb = 1;
  p.devices_per_node = 4;
  return p;
}

// The optimum over every layout of 4 devices and every assignment of sequences to its groups.
double exhaustive_optimum(const cost_model& m, const std::vector<std::int64_t>& lengths) {
  const std::vector<std::vector<int>> layouts{{4}, {2, 2}, {2, 1, 1}, {1, 1, 1, 1}};
  double best = std::numeric_limits<double>::infinity();
  const std::size_t n = lengths.size();
  for (const auto& layout : layouts) {
    const std::size_t g = layout.size();
    std::size_t combos = 1;
    for (std::size_t i = 0; i < n; ++i) combos *= g;
    for (std::size_t code = 0; code < combos; ++code) {
      std::vector<double> load(g, 0);
      std::vector<std::int64_t> tokens(g, 0);
      std::vector<char> used(g, 0);
      std::size_t c = code;
      for (std::size_t i = 0; i < n; ++i) {
        const std::size_t k = c % g;
        c /= g;
        load[k] += m.seq_cost_ms(layout[k], lengths[i]);
        tokens[k] += lengths[i];
        used[k] = 1;
      }
      bool ok = true;
      double worst = 0;
      for (std::size_t k = 0; k < g; ++k) {
        if (tokens[k] > m.token_capacity(layout[k])) ok = false;
        if (used[k]) worst = std::max(worst, load[k]);
      }
      if (ok) best = std::min(best, m.prof().beta1 + worst);
    }
  }
  return best;
}

std::vector<std::int64_t> random_batch(std::mt19937& rng) {
  const int n = 1 + static_cast<int>(rng() % 6);
  std::vector<std::int64_t> v(static_cast<std::size_t>(n));
  for (auto& x : v) x = 50 + static_cast<std::int64_t>(rng() % 2400);
  return v;
}

TEST(MicroBatchMilp, FindsTheExhaustiveOptimumOnSmallCases) {
  const cost_model m{tiny_profile(), 4};
  std::mt19937 rng{21};
  int solved = 0;
  for (int trial = 0; trial < 25; ++trial) {
    const auto lengths = random_batch(rng);
    const double opt = exhaustive_optimum(m, lengths);
    if (!std::isfinite(opt)) continue;
    milp_options mo;
    mo.buckets = static_cast<int>(lengths.size());  // one bucket per length: no rounding
    mo.time_limit_ms = 5000;
    auto r = solve_milp(m, lengths, mo);
    ASSERT_TRUE(r) << r.error().message();
    ASSERT_EQ(r->status, "optimal") << "trial " << trial;
    EXPECT_NEAR(r->objective_ms, opt, 1e-6 * opt) << "trial " << trial;
    EXPECT_NEAR(r->solution.makespan_ms, opt, 1e-6 * opt) << "trial " << trial;
    ++solved;
  }
  EXPECT_GE(solved, 10);
}

TEST(MicroBatchMilp, WarmStartedSolveIsNoWorseThanItsStart) {
  const cost_model m{tiny_profile(), 4};
  const layout_search ls{m, cluster{4, 4}};
  std::mt19937 rng{31};
  for (int trial = 0; trial < 10; ++trial) {
    const auto lengths = random_batch(rng);
    const auto start = ls.solve(lengths, mb_options{});
    if (!start.feasible) continue;
    milp_options mo;
    mo.buckets = static_cast<int>(lengths.size());
    mo.warm_start = &start;
    mo.time_limit_ms = 2000;
    auto r = solve_milp(m, lengths, mo);
    ASSERT_TRUE(r) << r.error().message();
    ASSERT_TRUE(r->solution.feasible) << r->status;
    EXPECT_LE(r->objective_ms, start.makespan_ms * (1 + 1e-9)) << "trial " << trial;
    EXPECT_LE(r->bound_ms, r->objective_ms + 1e-9);
    EXPECT_GE(r->gap, 0.0);
    EXPECT_GT(r->columns, 0);
  }
}

TEST(MicroBatchMilp, CoarseBucketsStillGiveAPlanThatFitsMemory) {
  const cost_model m{tiny_profile(), 4};
  const std::vector<std::int64_t> lengths{600, 350, 330, 150, 140, 50, 45, 30};
  milp_options mo;
  mo.buckets = 3;
  auto r = solve_milp(m, lengths, mo);
  ASSERT_TRUE(r) << r.error().message();
  ASSERT_TRUE(r->solution.feasible) << r->status;
  EXPECT_GT(r->token_error, 0.0);
  for (const auto& g : r->solution.groups) EXPECT_LE(g.tokens, m.token_capacity(g.degree));
}

TEST(MicroBatchMilp, RejectsASequenceThatFitsNoDegree) {
  const cost_model m{tiny_profile(), 4};
  const std::vector<std::int64_t> lengths{100, 10000};
  auto r = solve_milp(m, lengths, milp_options{});
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("sequence 1"), std::string::npos) << r.error().message();
}

TEST(LayoutSearch, NeverBeatsTheOptimumAndItsBoundNeverExceedsIt) {
  const cost_model m{tiny_profile(), 4};
  const layout_search ls{m, cluster{4, 4}};
  std::mt19937 rng{5};
  int optimal = 0, total = 0;
  for (int trial = 0; trial < 200; ++trial) {
    const auto lengths = random_batch(rng);
    const double opt = exhaustive_optimum(m, lengths);
    const auto sol = ls.solve(lengths, mb_options{});
    if (!std::isfinite(opt)) {
      EXPECT_FALSE(sol.feasible) << "trial " << trial;
      continue;
    }
    ASSERT_TRUE(sol.feasible) << "trial " << trial;
    EXPECT_GE(sol.makespan_ms, opt * (1 - 1e-9)) << "trial " << trial;
    EXPECT_LE(sol.bound_ms, opt * (1 + 1e-9)) << "trial " << trial;
    ++total;
    if (sol.makespan_ms <= opt * (1 + 1e-9)) ++optimal;
  }
  // greedy assignment plus local search is exact on most small cases
  EXPECT_GE(optimal, total * 9 / 10) << optimal << " of " << total;
}

TEST(LayoutSearch, EnumeratesEveryPowerOfTwoLayoutOf64Devices) {
  const cost_model m{*builtin_profile("gpt-7b"), 64};
  EXPECT_EQ(layout_search(m, cluster{64, 8}).layout_count(), 1828u);
  const cost_model m63{*builtin_profile("gpt-7b"), 63};
  EXPECT_EQ(layout_search(m63, cluster{63, 8}).layout_count(), 1626u);
}

TEST(LayoutSearch, SolutionsKeepEverySequenceOnceAndWithinMemory) {
  const cost_model m{*builtin_profile("gpt-7b"), 64};
  const layout_search ls{m, cluster{64, 8}};
  std::mt19937 rng{9};
  std::vector<std::int64_t> lengths;
  for (int i = 0; i < 100; ++i) lengths.push_back(128 * (1 + static_cast<std::int64_t>(rng() % 20)));
  lengths.push_back(200000);
  const auto sol = ls.solve(lengths, mb_options{});
  ASSERT_TRUE(sol.feasible);
  std::vector<int> seen(lengths.size(), 0);
  int devices = 0;
  for (const auto& g : sol.groups) {
    devices += g.degree;
    EXPECT_LE(g.tokens, m.token_capacity(g.degree));
    for (int i : g.members) ++seen[static_cast<std::size_t>(i)];
  }
  EXPECT_LE(devices, 64);
  for (int c : seen) EXPECT_EQ(c, 1);
  EXPECT_LE(sol.bound_ms, sol.makespan_ms);
}

TEST(Placement, SmallGroupsStayInsideOneNodeOnOddClusters) {
  for (int n : {63, 60, 56, 12}) {
    const cluster c{n, 8};
    std::vector<int> degrees;
    int left = n;
    for (int d : {32, 16, 8, 4, 2, 1})
      while (left >= d && (d < 8 || static_cast<int>(degrees.size()) < 3)) {
        degrees.push_back(d);
        left -= d;
      }
    const auto devs = place_groups(degrees, c);
    ASSERT_EQ(devs.size(), degrees.size()) << n;
    std::vector<int> used(static_cast<std::size_t>(n), 0);
    for (std::size_t g = 0; g < devs.size(); ++g) {
      ASSERT_EQ(static_cast<int>(devs[g].size()), degrees[g]);
      for (int d : devs[g]) {
        ASSERT_GE(d, 0);
        ASSERT_LT(d, n);
        EXPECT_EQ(used[static_cast<std::size_t>(d)]++, 0) << "device " << d << " twice";
        if (degrees[g] <= 8) {
          EXPECT_EQ(d / 8, devs[g].front() / 8) << "group of " << degrees[g] << " spans nodes";
        }
      }
    }
  }
}

TEST(Placement, ReportsALayoutThatCannotBeAligned) {
  // two groups of 3 cannot sit inside a node of 4 and one of 2
  const std::vector<int> degrees{3, 3};
  EXPECT_TRUE(place_groups(degrees, cluster{6, 4}).empty());
  EXPECT_FALSE(place_groups(degrees, cluster{6, 3}).empty());
}

}  // namespace
}  // namespace flexsp::scheduler
