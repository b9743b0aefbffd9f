#include "flexsp/core/log.hpp"

#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

namespace flexsp::log {
namespace {

struct level_state {
  std::mutex mutex;
  spdlog::level::level_enum default_level = spdlog::level::info;
  std::map<std::string, spdlog::level::level_enum, std::less<>> per_logger;
  spdlog::sink_ptr sink = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
};

// The spdlog registry is process-wide anyway; this holds only the level table and the shared
// sink, so every component's logger follows one configuration.
level_state& state() {
  static level_state s;
  return s;
}

spdlog::level::level_enum level_for(const level_state& s, std::string_view name) {
  auto it = s.per_logger.find(name);
  return it == s.per_logger.end() ? s.default_level : it->second;
}

expected<spdlog::level::level_enum> parse_level(std::string_view text) {
  static constexpr std::string_view names[] = {"trace", "debug", "info", "warn", "error", "critical", "off"};
  for (int i = 0; i < 7; ++i)
    if (text == names[i]) return static_cast<spdlog::level::level_enum>(i);
  if (text == "warning") return spdlog::level::warn;
  return make_error(errc::invalid_argument, "unknown log level '{}' (expected trace, debug, info, warn, error, critical or off)",
                    text);
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

}  // namespace

std::shared_ptr<spdlog::logger> get(std::string_view component) {
  auto& s = state();
  std::lock_guard lock{s.mutex};
  const std::string name{component};
  if (auto existing = spdlog::get(name)) return existing;
  auto logger = std::make_shared<spdlog::logger>(name, s.sink);
  logger->set_level(level_for(s, name));
  logger->set_pattern("[%Y-%m-%d %H:%M:%S.%e] [%n] [%^%l%$] %v");
  logger->flush_on(spdlog::level::warn);
  spdlog::register_logger(logger);
  return logger;
}

expected<void> configure(std::string_view spec) {
  std::optional<spdlog::level::level_enum> default_level;
  std::vector<std::pair<std::string, spdlog::level::level_enum>> overrides;
  while (!spec.empty()) {
    const auto comma = spec.find(',');
    const auto token = trim(spec.substr(0, comma));
    spec = comma == std::string_view::npos ? std::string_view{} : spec.substr(comma + 1);
    if (token.empty()) continue;
    const auto eq = token.find('=');
    if (eq == std::string_view::npos) {
      FLEXSP_TRY_ASSIGN(default_level, parse_level(token));
    } else {
      const auto name = trim(token.substr(0, eq));
      if (name.empty()) return make_error(errc::invalid_argument, "log spec '{}' has an empty logger name", token);
      FLEXSP_TRY_ASSIGN(auto level, parse_level(trim(token.substr(eq + 1))));
      overrides.emplace_back(std::string{name}, level);
    }
  }
  auto& s = state();
  std::lock_guard lock{s.mutex};
  if (default_level) s.default_level = *default_level;
  for (auto& [name, level] : overrides) s.per_logger[name] = level;
  spdlog::apply_all([&s](const std::shared_ptr<spdlog::logger>& l) { l->set_level(level_for(s, l->name())); });
  return {};
}

expected<void> configure_from_env() {
  const char* spec = std::getenv("FLEXSP_LOG");
  if (spec == nullptr) return {};
  auto result = configure(spec);
  if (!result) return unexpected{std::move(result).error().with_context("FLEXSP_LOG")};
  return {};
}

}  // namespace flexsp::log
