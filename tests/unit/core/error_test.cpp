#include "flexsp/core/error.hpp"

#include <memory>
#include <set>
#include <string>

#include <gtest/gtest.h>

namespace flexsp {
namespace {

expected<int> half_of_even(int x) {
  if (x % 2 != 0) return make_error(errc::invalid_argument, "{} is odd", x);
  return x / 2;
}

expected<int> quarter(int x) {
  FLEXSP_TRY_ASSIGN(int h, half_of_even(x));
  FLEXSP_TRY_ASSIGN(int q, half_of_even(h));
  return q;
}

expected<void> require_even(int x) {
  FLEXSP_TRY(half_of_even(x));
  return {};
}

TEST(Expected, HoldsAValueOrAnError) {
  auto ok = half_of_even(8);
  ASSERT_TRUE(ok);
  EXPECT_EQ(*ok, 4);
  EXPECT_EQ(ok.value(), 4);

  auto bad = half_of_even(3);
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().kind(), errc::invalid_argument);
  EXPECT_EQ(bad.error().message(), "3 is odd");
  EXPECT_EQ(bad.value_or(-1), -1);
}

TEST(Expected, ValueOfAFailedResultThrowsWithTheError) {
  auto bad = half_of_even(5);
  try {
    (void)bad.value();
    FAIL() << "value() did not throw";
  } catch (const bad_expected_access& e) {
    EXPECT_EQ(e.error().kind(), errc::invalid_argument);
    EXPECT_STREQ(e.what(), "invalid_argument: 5 is odd");
  }
}

TEST(Expected, TryPropagatesTheFirstError) {
  EXPECT_EQ(*quarter(12), 3);
  auto r = quarter(6);  // 6 -> 3 -> odd
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().message(), "3 is odd");
  EXPECT_TRUE(require_even(2));
  EXPECT_FALSE(require_even(1));
}

TEST(Expected, HoldsMoveOnlyValues) {
  expected<std::unique_ptr<int>> p = std::make_unique<int>(7);
  ASSERT_TRUE(p);
  std::unique_ptr<int> taken = std::move(p).value();
  EXPECT_EQ(*taken, 7);
}

TEST(Error, ContextFramesAreAddedOutermostFirst) {
  error e{errc::not_found, "no such file"};
  e.with_context("reading profile a.json").with_context("flexsp plan");
  EXPECT_EQ(e.to_string(), "not_found: flexsp plan: reading profile a.json: no such file");
}

TEST(Error, EveryKindHasADistinctName) {
  const errc kinds[] = {errc::failed,     errc::invalid_argument, errc::not_found, errc::timeout, errc::overloaded,
                        errc::disconnected, errc::cancelled,    errc::protocol,  errc::io,      errc::unimplemented};
  std::set<std::string_view> names;
  for (auto k : kinds) names.insert(to_string(k));
  EXPECT_EQ(names.size(), std::size(kinds));
  EXPECT_EQ(to_string(errc::timeout), "timeout");
}

TEST(Error, FormatsThroughFmt) {
  EXPECT_EQ(fmt::format("{}", error{errc::timeout, "ask took too long"}), "timeout: ask took too long");
}

}  // namespace
}  // namespace flexsp
