#include "flexsp/core/config.hpp"

#include <map>
#include <string>

#include <gtest/gtest.h>

namespace flexsp {
namespace {

using namespace std::chrono_literals;

TEST(Parse, IntegersRejectTrailingGarbageAndOverflow) {
  EXPECT_EQ(*parse_int("-42"), -42);
  EXPECT_EQ(*parse_uint("4096"), 4096u);
  EXPECT_FALSE(parse_int("12x"));
  EXPECT_FALSE(parse_int(""));
  EXPECT_FALSE(parse_uint("-1"));
  auto big = parse_int("99999999999999999999999");
  ASSERT_FALSE(big);
  EXPECT_NE(big.error().message().find("out of range"), std::string::npos);
}

TEST(Parse, DoublesAndBooleans) {
  EXPECT_DOUBLE_EQ(*parse_double("1.5e3"), 1500.0);
  EXPECT_FALSE(parse_double("1.5.3"));
  EXPECT_FALSE(parse_double("nan"));
  EXPECT_TRUE(*parse_bool("Yes"));
  EXPECT_FALSE(*parse_bool("off"));
  EXPECT_FALSE(parse_bool("maybe"));
}

TEST(Parse, DurationsTakeMillisecondsByDefaultAndUnits) {
  EXPECT_EQ(*parse_duration_ms("250"), 250ms);
  EXPECT_EQ(*parse_duration_ms("250ms"), 250ms);
  EXPECT_EQ(*parse_duration_ms("3s"), 3000ms);
  EXPECT_EQ(*parse_duration_ms("1.5s"), 1500ms);
  EXPECT_EQ(*parse_duration_ms("2m"), 120000ms);
  EXPECT_FALSE(parse_duration_ms("3h"));
  EXPECT_FALSE(parse_duration_ms("-1s"));
  EXPECT_FALSE(parse_duration_ms("s"));
}

struct heartbeat_config {
  std::chrono::milliseconds interval{500};
  std::int64_t retries{3};
};

TEST(EnvOverrides, ApplyOnlyTheVariablesThatAreSet) {
  heartbeat_config cfg;
  std::map<std::string, std::string> env{{"HB_INTERVAL", "2s"}};
  const env_override table[] = {
      {"HB_INTERVAL", "interval", [&cfg](std::string_view v) -> expected<void> {
         FLEXSP_TRY_ASSIGN(cfg.interval, parse_duration_ms(v));
         return {};
       }},
      {"HB_RETRIES", "retries", [&cfg](std::string_view v) -> expected<void> {
         FLEXSP_TRY_ASSIGN(cfg.retries, parse_int(v));
         return {};
       }},
  };
  auto lookup = [&env](const char* name) -> const char* {
    auto it = env.find(name);
    return it == env.end() ? nullptr : it->second.c_str();
  };
  ASSERT_TRUE(apply_env_overrides(table, lookup));
  EXPECT_EQ(cfg.interval, 2000ms);
  EXPECT_EQ(cfg.retries, 3);

  env["HB_RETRIES"] = "three";
  auto r = apply_env_overrides(table, lookup);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().kind(), errc::invalid_argument);
  EXPECT_NE(r.error().message().find("HB_RETRIES"), std::string::npos) << r.error().message();
}

}  // namespace
}  // namespace flexsp
