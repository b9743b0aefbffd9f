#include "flexsp/core/config.hpp"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <string>

namespace flexsp {

expected<void> apply_env_overrides(std::span<const env_override> table, const env_lookup& lookup) {
  for (const auto& entry : table) {
    const std::string name{entry.name};
    const char* value = lookup ? lookup(name.c_str()) : std::getenv(name.c_str());
    if (value == nullptr) continue;
    auto applied = entry.apply(value);
    if (!applied) return unexpected{std::move(applied).error().with_context(fmt::format("environment variable {}", name))};
  }
  return {};
}

namespace {
template <class T>
expected<T> parse_integral(std::string_view text, std::string_view what) {
  T value{};
  const auto* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, value);
  if (text.empty() || ec == std::errc::invalid_argument || ptr != end)
    return make_error(errc::invalid_argument, "'{}' is not {}", text, what);
  if (ec == std::errc::result_out_of_range) return make_error(errc::invalid_argument, "'{}' is out of range", text);
  return value;
}

std::string lower(std::string_view text) {
  std::string out{text};
  std::transform(out.begin(), out.end(), out.begin(), [](unsigned char c) { return std::tolower(c); });
  return out;
}
}  // namespace

expected<std::int64_t> parse_int(std::string_view text) { return parse_integral<std::int64_t>(text, "an integer"); }

expected<std::uint64_t> parse_uint(std::string_view text) {
  return parse_integral<std::uint64_t>(text, "a non-negative integer");
}

expected<double> parse_double(std::string_view text) {
  const std::string copy{text};
  char* end = nullptr;
  const double value = std::strtod(copy.c_str(), &end);
  if (copy.empty() || end != copy.c_str() + copy.size() || std::isnan(value))
    return make_error(errc::invalid_argument, "'{}' is not a number", text);
  return value;
}

expected<bool> parse_bool(std::string_view text) {
  const auto v = lower(text);
  if (v == "1" || v == "true" || v == "yes" || v == "on") return true;
  if (v == "0" || v == "false" || v == "no" || v == "off") return false;
  return make_error(errc::invalid_argument, "'{}' is not a boolean (true/false/1/0/yes/no/on/off)", text);
}

expected<std::chrono::milliseconds> parse_duration_ms(std::string_view text) {
  std::size_t split = text.size();
  while (split > 0 && std::isalpha(static_cast<unsigned char>(text[split - 1]))) --split;
  const auto unit = text.substr(split);
  double scale = 1.0;
  if (unit.empty() || unit == "ms") scale = 1.0;
  else if (unit == "s") scale = 1000.0;
  else if (unit == "m") scale = 60'000.0;
  else return make_error(errc::invalid_argument, "duration '{}' has unknown unit '{}' (use ms, s or m)", text, unit);
  auto number = parse_double(text.substr(0, split));
  if (!number || *number < 0)
    return make_error(errc::invalid_argument, "'{}' is not a non-negative duration (e.g. 500ms, 3s)", text);
  return std::chrono::milliseconds{static_cast<std::int64_t>(std::llround(*number * scale))};
}

}  // namespace flexsp
