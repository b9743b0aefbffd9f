#include <algorithm>
#include <limits>
#include <numeric>
#include <random>

#include <gtest/gtest.h>

#include "flexsp/scheduler/bucketing.hpp"

namespace flexsp::scheduler {
namespace {

std::int64_t brute_force_bucket_error(std::vector<std::int64_t> v, int buckets) {
  std::sort(v.begin(), v.end());
  std::vector<std::int64_t> distinct = v;
  distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
  const std::size_t m = distinct.size();
  std::int64_t best = std::numeric_limits<std::int64_t>::max();
  // every subset of distinct values that contains the largest one is a set of bounds
  for (std::uint32_t mask = 0; mask < (1u << (m - 1)); ++mask) {
    if (__builtin_popcount(mask) + 1 > buckets) continue;
    std::vector<std::int64_t> bounds;
    for (std::size_t i = 0; i + 1 < m; ++i)
      if (mask & (1u << i)) bounds.push_back(distinct[i]);
    bounds.push_back(distinct.back());
    std::int64_t err = 0;
    for (auto x : v) err += *std::lower_bound(bounds.begin(), bounds.end(), x) - x;
    best = std::min(best, err);
  }
  return best;
}

TEST(Bucketing, DpMatchesBruteForceOnSmallBatches) {
  std::mt19937 rng{7};
  for (int trial = 0; trial < 300; ++trial) {
    const int n = 1 + static_cast<int>(rng() % 10);
    std::vector<std::int64_t> v(static_cast<std::size_t>(n));
    for (auto& x : v) x = 1 + static_cast<std::int64_t>(rng() % 60);
    const int buckets = 1 + static_cast<int>(rng() % 4);
    const auto b = bucket_lengths(v, buckets);
    ASSERT_EQ(b.error_tokens, brute_force_bucket_error(v, buckets)) << "trial " << trial;
    ASSERT_LE(static_cast<int>(b.bounds.size()), buckets);
    // the reported error is what the bounds really give
    std::int64_t err = 0;
    for (auto x : v) err += b.bounds[static_cast<std::size_t>(b.bucket_of(x))] - x;
    ASSERT_EQ(err, b.error_tokens);
    ASSERT_EQ(std::accumulate(b.counts.begin(), b.counts.end(), 0), n);
  }
}

TEST(Bucketing, FewerDistinctLengthsThanBucketsGiveNoError) {
  const std::vector<std::int64_t> v{128, 256, 128, 4096, 256};
  const auto b = bucket_lengths(v, 16);
  EXPECT_EQ(b.error_tokens, 0);
  EXPECT_EQ(b.bounds, (std::vector<std::int64_t>{128, 256, 4096}));
  EXPECT_EQ(b.token_error(), 0.0);
}

TEST(Bucketing, OneBucketPadsEverythingToTheLongest) {
  const std::vector<std::int64_t> v{10, 20, 30};
  const auto b = bucket_lengths(v, 1);
  EXPECT_EQ(b.error_tokens, 20 + 10);
  EXPECT_NEAR(b.token_error(), 30.0 / 60.0, 1e-12);
}

std::int64_t brute_force_split(const std::vector<std::int64_t>& v, int parts) {
  const std::size_t n = v.size();
  std::int64_t best = std::numeric_limits<std::int64_t>::max();
  // choose parts-1 cut positions among 1..n-1
  std::vector<int> sel(n - 1, 0);
  std::fill(sel.begin(), sel.begin() + (parts - 1), 1);
  std::sort(sel.begin(), sel.end());
  do {
    std::int64_t worst = 0, run = 0;
    for (std::size_t i = 0; i < n; ++i) {
      run += v[i];
      if (i + 1 == n || sel[i]) {
        worst = std::max(worst, run);
        run = 0;
      }
    }
    best = std::min(best, worst);
  } while (std::next_permutation(sel.begin(), sel.end()));
  return best;
}

TEST(SequenceBlaster, ContiguousSplitMinimisesTheLargestMicroBatch) {
  std::mt19937 rng{11};
  for (int trial = 0; trial < 200; ++trial) {
    const int n = 2 + static_cast<int>(rng() % 9);
    std::vector<std::int64_t> v(static_cast<std::size_t>(n));
    for (auto& x : v) x = 1 + static_cast<std::int64_t>(rng() % 1000);
    std::sort(v.begin(), v.end());
    const int parts = 1 + static_cast<int>(rng() % std::min(n, 4));
    const auto starts = split_contiguous(v, parts);
    ASSERT_EQ(static_cast<int>(starts.size()), parts);
    ASSERT_EQ(starts.front(), 0u);
    std::int64_t worst = 0;
    for (std::size_t k = 0; k < starts.size(); ++k) {
      const auto e = k + 1 < starts.size() ? starts[k + 1] : v.size();
      ASSERT_LT(starts[k], e) << "empty run";
      worst = std::max(worst, std::accumulate(v.begin() + static_cast<std::ptrdiff_t>(starts[k]),
                                              v.begin() + static_cast<std::ptrdiff_t>(e), std::int64_t{0}));
    }
    ASSERT_EQ(worst, brute_force_split(v, parts)) << "trial " << trial;
  }
}

}  // namespace
}  // namespace flexsp::scheduler
