#include <algorithm>
#include <numeric>

#include <gtest/gtest.h>

#include "flexsp/scheduler/dataset.hpp"
#include "flexsp/scheduler/synthetic.hpp"

namespace flexsp::scheduler {
namespace {

double quantile(std::vector<std::int64_t> v, double q) {
  std::sort(v.begin(), v.end());
  return static_cast<double>(v[static_cast<std::size_t>(q * static_cast<double>(v.size() - 1))]);
}

TEST(Synthetic, TheSameSeedGivesTheSameLengths) {
  auto a = synthetic_lengths(1000, 42);
  auto b = synthetic_lengths(1000, 42);
  auto c = synthetic_lengths(1000, 43);
  ASSERT_TRUE(a && b && c);
  EXPECT_EQ(*a, *b);
  EXPECT_NE(*a, *c);
  EXPECT_EQ(a->size(), 1000u);
  EXPECT_GE(*std::min_element(a->begin(), a->end()), 1);
}

TEST(Synthetic, WikipediaQuantilesMatchThePublishedStatistics) {
  auto v = synthetic_lengths(1'000'000, 1);
  ASSERT_TRUE(v);
  EXPECT_NEAR(quantile(*v, 0.5), 347, 347 * 0.03);
  EXPECT_NEAR(quantile(*v, 0.9), 2112, 2112 * 0.03);
  EXPECT_NEAR(quantile(*v, 0.99), 10921, 10921 * 0.05);
  EXPECT_NEAR(quantile(*v, 0.999), 37367, 37367 * 0.10);
  const double mean = static_cast<double>(std::accumulate(v->begin(), v->end(), std::int64_t{0})) / 1e6;
  EXPECT_NEAR(mean, 1013.6, 1013.6 * 0.10);
  EXPECT_GT(*std::max_element(v->begin(), v->end()), 200'000);
  EXPECT_LE(*std::max_element(v->begin(), v->end()), 1'823'777);
}

TEST(Synthetic, WikipediaQuantilesMatchTheRealSampleWhenItIsAvailable) {
  auto real = read_lengths_file(std::string{FLEXSP_SHARED_DATA_DIR} + "/wikipedia_lengths.txt.gz");
  if (!real) GTEST_SKIP() << "dataset not available: " << real.error().message();
  ASSERT_EQ(real->size(), 1'000'000u);
  auto synth = synthetic_lengths(real->size(), 5);
  ASSERT_TRUE(synth);
  for (double q : {0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99})
    EXPECT_NEAR(quantile(*synth, q) / quantile(*real, q), 1.0, 0.06) << "quantile " << q;
}

TEST(Synthetic, UnknownDistributionIsAnError) {
  auto v = synthetic_lengths(10, 1, "zipf");
  ASSERT_FALSE(v);
  EXPECT_EQ(v.error().kind(), errc::invalid_argument);
  EXPECT_NE(v.error().message().find("zipf"), std::string::npos);
}

TEST(Dataset, PaperBatchesPadToTwiceTheDevicesAndDropTooLongSequences) {
  const std::vector<std::int64_t> lengths{1, 128, 129, 1000, 400000, 383999, 5, 6, 7};
  const auto batches = paper_batches(lengths, 128, 384000, 3, 0, 10);
  ASSERT_EQ(batches.size(), 2u);
  EXPECT_EQ(batches[0], (std::vector<std::int64_t>{128, 128, 256}));
  EXPECT_EQ(batches[1], (std::vector<std::int64_t>{1024, 384000, 128}));
  const auto later = paper_batches(lengths, 128, 384000, 3, 1, 10);
  ASSERT_EQ(later.size(), 1u);
  EXPECT_EQ(later[0], batches[1]);
}

TEST(Dataset, ReadsPlainFilesAndNamesTheBadLine) {
  const std::string path = std::string{FLEXSP_BINARY_DIR} + "/scheduler_dataset_test.txt";
  {
    FILE* f = std::fopen(path.c_str(), "w");
    ASSERT_NE(f, nullptr);
    std::fputs("# lengths\n12\n\n34\n", f);
    std::fclose(f);
  }
  auto ok = read_lengths_file(path);
  ASSERT_TRUE(ok) << ok.error().message();
  EXPECT_EQ(*ok, (std::vector<std::int64_t>{12, 34}));
  {
    FILE* f = std::fopen(path.c_str(), "w");
    std::fputs("12\nabc\n", f);
    std::fclose(f);
  }
  auto bad = read_lengths_file(path);
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message().find(":2"), std::string::npos) << bad.error().message();
  auto missing = read_lengths_file(path + ".does-not-exist");
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().kind(), errc::not_found);
}

}  // namespace
}  // namespace flexsp::scheduler
