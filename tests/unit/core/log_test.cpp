#include "flexsp/core/log.hpp"

#include <gtest/gtest.h>

namespace flexsp {
namespace {

TEST(Log, NamedLoggersAreSharedPerComponent) {
  auto a = log::get("core");
  auto b = log::get("core");
  EXPECT_EQ(a.get(), b.get());
  EXPECT_EQ(a->name(), "core");
  EXPECT_NE(log::get("net").get(), a.get());
}

TEST(Log, SpecSetsDefaultAndPerLoggerLevels) {
  auto net = log::get("net");
  auto sched = log::get("scheduler");
  ASSERT_TRUE(log::configure("warn, net=debug"));
  EXPECT_EQ(net->level(), spdlog::level::debug);
  EXPECT_EQ(sched->level(), spdlog::level::warn);
  // Loggers created later follow the same table.
  EXPECT_EQ(log::get("log_test_late")->level(), spdlog::level::warn);
  ASSERT_TRUE(log::configure("info"));
  EXPECT_EQ(sched->level(), spdlog::level::info);
  EXPECT_EQ(net->level(), spdlog::level::debug);  // per-logger entries persist
}

TEST(Log, BadSpecIsRejectedAndChangesNothing) {
  ASSERT_TRUE(log::configure("info"));
  auto r = log::configure("debug,net=loud");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().kind(), errc::invalid_argument);
  EXPECT_NE(r.error().message().find("loud"), std::string::npos);
  EXPECT_EQ(log::get("scheduler")->level(), spdlog::level::info);
  EXPECT_FALSE(log::configure("=debug"));
}

}  // namespace
}  // namespace flexsp
