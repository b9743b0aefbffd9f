#include <algorithm>
#include <cmath>
#include <random>
#include <thread>

#include <gtest/gtest.h>

#include "flexsp/scheduler/dataset.hpp"
#include "flexsp/scheduler/planner.hpp"
#include "flexsp/scheduler/synthetic.hpp"

namespace flexsp::scheduler {
namespace {

profile gpt7b() { return *builtin_profile("gpt-7b"); }

planner_options quick(std::string strategy = "flexsp") {
  planner_options o;
  o.strategy = std::move(strategy);
  o.time_limit_ms = 150;
  return o;
}

// Long-tail batches as the paper cuts them, from the built-in generator.
std::vector<std::vector<std::int64_t>> long_tail_batches(int n_devices, std::size_t batch, std::size_t count,
                                                         std::int64_t limit, std::uint64_t seed) {
  auto lengths = synthetic_lengths(batch * count * 2, seed);
  return paper_batches(*lengths, 2 * n_devices, limit, batch, 0, count);
}

void expect_sound(const plan& p, const planner& pl, const std::vector<std::int64_t>& lengths) {
  validate_options vo;
  vo.require_node_alignment = p.strategy == "flexsp";
  auto v = validate_plan(p, pl.model(), lengths, vo);
  EXPECT_TRUE(v) << p.strategy << ": " << v.error().message();
  EXPECT_GE(p.predicted_ms, p.lower_bound_ms * (1 - 1e-9)) << p.strategy;
  EXPECT_LE(p.solver_bound_ms, p.predicted_ms * (1 + 1e-9)) << p.strategy;
  EXPECT_FALSE(p.status.empty());
}

TEST(Planner, EveryPlanPassesTheValidatorOnFullAndOddClusters) {
  for (int n : {64, 63, 60, 56}) {
    auto pl = planner::create(gpt7b(), cluster{n, 8}, quick());
    ASSERT_TRUE(pl) << pl.error().message();
    // at 63 devices the largest power-of-two group is 32: keep sequences it can hold
    for (const auto& batch : long_tail_batches(n, 256, 2, 150000, static_cast<std::uint64_t>(n))) {
      for (const char* s : {"flexsp", "batchada", "static:32"}) {
        auto p = pl->make_plan(batch, s);
        ASSERT_TRUE(p) << n << " " << s << ": " << p.error().message();
        EXPECT_EQ(p->devices, n);
        expect_sound(*p, *pl, batch);
      }
    }
  }
}

TEST(Planner, HandlesExtremeLengths) {
  auto pl = planner::create(gpt7b(), cluster{64, 8}, quick());
  ASSERT_TRUE(pl);
  std::vector<std::vector<std::int64_t>> cases{
      {1},
      {384000},
      std::vector<std::int64_t>(512, 1),
      std::vector<std::int64_t>(300, 6000),
  };
  std::vector<std::int64_t> mixed(200, 1);
  mixed.push_back(384000);
  mixed.push_back(200000);
  cases.push_back(mixed);
  for (const auto& batch : cases) {
    auto p = pl->make_plan(batch);
    ASSERT_TRUE(p) << p.error().message();
    expect_sound(*p, *pl, batch);
  }
}

TEST(Planner, RandomBatchesOfAnyShapeGiveValidPlans) {
  std::mt19937 rng{17};
  auto pl = planner::create(gpt7b(), cluster{60, 8}, quick());
  ASSERT_TRUE(pl);
  for (int trial = 0; trial < 6; ++trial) {
    std::vector<std::int64_t> batch(1 + rng() % 300);
    for (auto& x : batch) x = 1 + static_cast<std::int64_t>(rng() % (trial % 2 ? 2000 : 150000));
    auto p = pl->make_plan(batch);
    ASSERT_TRUE(p) << p.error().message();
    expect_sound(*p, *pl, batch);
  }
}

TEST(Planner, ASequenceThatFitsNowhereGivesAClearError) {
  auto pl = planner::create(gpt7b(), cluster{64, 8}, quick());
  ASSERT_TRUE(pl);
  const std::vector<std::int64_t> batch{1000, 2000, 500000};
  auto p = pl->make_plan(batch);
  ASSERT_FALSE(p);
  EXPECT_EQ(p.error().kind(), errc::invalid_argument);
  EXPECT_NE(p.error().message().find("sequence 2"), std::string::npos) << p.error().message();
  EXPECT_NE(p.error().message().find("cannot fit"), std::string::npos) << p.error().message();

  const std::vector<std::int64_t> zero{5, 0};
  auto z = pl->make_plan(zero);
  ASSERT_FALSE(z);
  EXPECT_NE(z.error().message().find("sequence 1"), std::string::npos) << z.error().message();
  EXPECT_FALSE(pl->make_plan(std::vector<std::int64_t>{}));
}

TEST(Planner, OddClustersSuggestAnyDegreeForSequencesOnlyAllDevicesHold) {
  auto pl = planner::create(gpt7b(), cluster{63, 8}, quick());
  ASSERT_TRUE(pl);
  const std::vector<std::int64_t> batch{300000, 100};
  auto p = pl->make_plan(batch);
  ASSERT_FALSE(p);
  EXPECT_NE(p.error().message().find("any degree"), std::string::npos) << p.error().message();

  auto opts = quick();
  opts.any_degree = true;
  auto any = planner::create(gpt7b(), cluster{63, 8}, opts);
  ASSERT_TRUE(any);
  auto q = any->make_plan(batch);
  ASSERT_TRUE(q) << q.error().message();
  expect_sound(*q, *any, batch);
  int widest = 0;
  for (const auto& mb : q->micro_batches)
    for (const auto& g : mb.groups) widest = std::max(widest, g.degree);
  EXPECT_GT(widest, 32);
}

TEST(Planner, StaticBaselineUsesOneDegreeAndRejectsWhatItCannotHold) {
  auto pl = planner::create(gpt7b(), cluster{64, 8}, quick());
  ASSERT_TRUE(pl);
  const auto batch = long_tail_batches(64, 512, 1, 40000, 3).front();
  auto p = pl->make_plan(batch, "static:8");
  ASSERT_TRUE(p) << p.error().message();
  expect_sound(*p, *pl, batch);
  EXPECT_EQ(p->uniform_degree, 8);
  for (const auto& mb : p->micro_batches) {
    EXPECT_LE(mb.groups.size(), 8u);
    for (const auto& g : mb.groups) EXPECT_EQ(g.degree, 8);
  }
  const std::vector<std::int64_t> too_long{100000};
  auto bad = pl->make_plan(too_long, "static:8");
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message().find("static:8"), std::string::npos) << bad.error().message();
}

TEST(Planner, BatchadaPicksTheFastestFeasibleStaticDegree) {
  auto pl = planner::create(gpt7b(), cluster{64, 8}, quick());
  ASSERT_TRUE(pl);
  const auto batch = long_tail_batches(64, 512, 1, 384000, 8).front();
  auto ada = pl->make_plan(batch, "batchada");
  ASSERT_TRUE(ada) << ada.error().message();
  double best = 1e300;
  for (int d = 1; d <= 64; d *= 2)
    if (auto p = pl->make_plan(batch, "static:" + std::to_string(d))) best = std::min(best, p->predicted_ms);
  EXPECT_DOUBLE_EQ(ada->predicted_ms, best);
}

TEST(Planner, FlexspBeatsTheBestSingleDegreeOnLongTailBatches) {
  auto pl = planner::create(gpt7b(), cluster{64, 8}, quick());
  ASSERT_TRUE(pl);
  for (const auto& batch : long_tail_batches(64, 512, 3, 384000, 12)) {
    auto flex = pl->make_plan(batch);
    auto ada = pl->make_plan(batch, "batchada");
    ASSERT_TRUE(flex && ada);
    EXPECT_LT(flex->predicted_ms, ada->predicted_ms);
    EXPECT_GT(flex->bucket_token_error, 0.0);
  }
}

TEST(Planner, FlexspNeverLosesToTheBestSingleDegreeWhenMemoryForcesManyMicroBatches) {
  // 16 devices and a heavy tail: a contiguous split of sorted lengths alone loses to packing here
  auto pl = planner::create(gpt7b(), cluster{16, 8}, quick());
  ASSERT_TRUE(pl);
  std::mt19937 rng{3};
  std::uniform_real_distribution<double> u{0.0, 1.0};
  for (int trial = 0; trial < 6; ++trial) {
    std::vector<std::int64_t> batch(128);
    for (auto& x : batch) x = (50 + static_cast<std::int64_t>(8000 * std::pow(u(rng), 4)) + 31) / 32 * 32;
    auto flex = pl->make_plan(batch);
    auto ada = pl->make_plan(batch, "batchada");
    ASSERT_TRUE(flex && ada);
    expect_sound(*flex, *pl, batch);
    EXPECT_LE(flex->predicted_ms, ada->predicted_ms * (1 + 1e-9)) << "trial " << trial;
  }
}

TEST(Planner, PlannersInSeveralThreadsGiveValidPlansWhileSharingTheMilpStage) {
  // each planner is single-threaded; CBC solves from all threads are serialised inside the library
  auto opts = quick();
  opts.use_milp = true;
  opts.milp_min_gap = 0;
  opts.time_limit_ms = 60;
  const auto batches = long_tail_batches(16, 48, 3, 90000, 77);
  auto reference = planner::create(gpt7b(), cluster{16, 8}, opts);
  ASSERT_TRUE(reference);
  std::vector<double> expected;
  for (const auto& b : batches) {
    auto p = reference->make_plan(b, "static:8");
    ASSERT_TRUE(p);
    expected.push_back(p->predicted_ms);
  }
  std::vector<int> bad(4, 0), milp(4, 0);
  std::vector<std::thread> threads;
  for (std::size_t t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      auto pl = planner::create(gpt7b(), cluster{16, 8}, opts);
      for (int rep = 0; rep < 2; ++rep)
        for (std::size_t b = 0; b < batches.size(); ++b) {
          auto flex = pl->make_plan(batches[b]);
          auto st = pl->make_plan(batches[b], "static:8");
          if (!flex || !st || st->predicted_ms != expected[b] || !validate_plan(*flex, pl->model(), batches[b]))
            ++bad[t];
          else
            milp[t] += flex->milp_solves;
        }
    });
  for (auto& th : threads) th.join();
  for (std::size_t t = 0; t < 4; ++t) {
    EXPECT_EQ(bad[t], 0) << "thread " << t;
    EXPECT_GT(milp[t], 0) << "thread " << t << " never reached the MILP stage";
  }
}

TEST(Planner, RejectsUnknownStrategiesAndBadOptions) {
  auto o = quick("static:0");
  EXPECT_FALSE(planner::create(gpt7b(), cluster{64, 8}, o));
  o = quick("greedy");
  auto p = planner::create(gpt7b(), cluster{64, 8}, o);
  ASSERT_FALSE(p);
  EXPECT_NE(p.error().message().find("greedy"), std::string::npos);
  EXPECT_FALSE(planner::create(gpt7b(), cluster{0, 8}, quick()));
  auto pl = planner::create(gpt7b(), cluster{64, 8}, quick());
  ASSERT_TRUE(pl);
  EXPECT_FALSE(pl->make_plan(std::vector<std::int64_t>{100}, "static:128"));
}

TEST(Planner, LowerBoundCountsTheMicroBatchesMemoryForces) {
  const cost_model m{gpt7b(), 64};
  const auto degrees = allowed_degrees(64, false);
  // twice the cluster's token capacity in short sequences forces at least two micro-batches
  const auto cap = m.token_capacity(64);
  std::vector<std::int64_t> batch(static_cast<std::size_t>(2 * cap / 1000), 1000);
  const double lb = step_lower_bound_ms(m, batch, degrees);
  double work = 0;
  for (auto s : batch) work += m.seq_cost_ms(1, s);
  EXPECT_NEAR(lb, 2 * m.prof().beta1 + work / 64, 1e-6);
}

TEST(Validator, CatchesEachKindOfBrokenPlan) {
  auto pl = planner::create(gpt7b(), cluster{16, 8}, quick());
  ASSERT_TRUE(pl);
  const std::vector<std::int64_t> batch{1000, 2000, 3000, 20000};
  auto good = pl->make_plan(batch);
  ASSERT_TRUE(good) << good.error().message();
  ASSERT_TRUE(validate_plan(*good, pl->model(), batch));

  auto twice = *good;
  twice.micro_batches[0].groups[0].sequences.push_back(twice.micro_batches[0].groups[0].sequences.front());
  evaluate_plan(twice, pl->model(), batch);
  EXPECT_FALSE(validate_plan(twice, pl->model(), batch));

  auto missing = *good;
  auto& g0 = missing.micro_batches[0].groups[0];
  if (g0.sequences.size() > 1) {
    g0.sequences.pop_back();
  } else {
    missing.micro_batches[0].groups.erase(missing.micro_batches[0].groups.begin());
  }
  evaluate_plan(missing, pl->model(), batch);
  EXPECT_FALSE(validate_plan(missing, pl->model(), batch));

  auto wrong_degree = *good;
  wrong_degree.micro_batches[0].groups[0].degree += 1;
  EXPECT_FALSE(validate_plan(wrong_degree, pl->model(), batch));

  auto shared = *good;
  shared.micro_batches[0].groups[0].devices[0] = 99;
  EXPECT_FALSE(validate_plan(shared, pl->model(), batch));

  auto stale = *good;
  stale.predicted_ms += 1;
  EXPECT_FALSE(validate_plan(stale, pl->model(), batch));

  // one group on one device holding everything exceeds memory
  plan over = *good;
  over.micro_batches.resize(1);
  over.micro_batches[0].groups = {sp_group{1, {0}, {0, 1, 2, 3}, 0, 0}};
  evaluate_plan(over, pl->model(), batch);
  auto v = validate_plan(over, pl->model(), batch);
  ASSERT_FALSE(v);
  EXPECT_NE(v.error().message().find("limit"), std::string::npos) << v.error().message();
}

TEST(PlanJson, CarriesTheFieldsTheCommandLinePromises) {
  auto pl = planner::create(gpt7b(), cluster{64, 8}, quick());
  ASSERT_TRUE(pl);
  const std::vector<std::int64_t> batch{1000, 2000, 64000};
  auto p = pl->make_plan(batch);
  ASSERT_TRUE(p);
  const auto j = plan_to_json(*p);
  for (const char* key : {"\"strategy\"", "\"devices\"", "\"profile\"", "\"predicted_ms\"", "\"lower_bound_ms\"",
                          "\"solve_ms\"", "\"status\"", "\"micro_batches\"", "\"groups\"", "\"degree\"", "\"sequences\"",
                          "\"memory_mb\""})
    EXPECT_NE(j.find(key), std::string::npos) << key;
  EXPECT_NE(plan_to_table(*p).find("predicted step"), std::string::npos);
}

}  // namespace
}  // namespace flexsp::scheduler
