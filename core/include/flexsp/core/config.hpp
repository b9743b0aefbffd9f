#pragma once
/// \file
/// The configuration pattern and its parsing helpers.
///
/// Each component takes a plain config struct with defaults in its member initialisers and a
/// `expected<void> validate() const` that names the bad field. `main()` fills the structs from
/// command-line flags; environment overrides are read in one table per program through
/// `apply_env_overrides`, so every variable a program honours is listed in one place
/// (and printed by `--help`).
///
/// ```
/// struct heartbeat_config {
///   std::chrono::milliseconds interval{500};
///   std::chrono::milliseconds timeout{3000};
///   expected<void> validate() const;
/// };
/// const env_override table[] = {
///   {"FLEXSP_HEARTBEAT_MS", "heartbeat interval (ms)",
///    [&](std::string_view v) { return assign_duration_ms(cfg.interval, v); }},
/// };
/// FLEXSP_TRY(apply_env_overrides(table));
/// ```

#include <chrono>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>

#include "flexsp/core/error.hpp"

namespace flexsp {

/// One environment variable a program honours, and how it changes the config.
struct env_override {
  std::string_view name;
  std::string_view help;
  std::function<expected<void>(std::string_view)> apply;
};

/// Looks a variable up; returns nullptr when unset. Replaceable in tests.
using env_lookup = std::function<const char*(const char*)>;

/// Applies every variable of `table` that is set. Fails on the first bad value, with the
/// variable's name in the message.
expected<void> apply_env_overrides(std::span<const env_override> table, const env_lookup& lookup = {});

/// Parses a whole string as a signed/unsigned integer or a double; no trailing garbage.
expected<std::int64_t> parse_int(std::string_view text);
expected<std::uint64_t> parse_uint(std::string_view text);
expected<double> parse_double(std::string_view text);
/// Parses true/false/1/0/yes/no/on/off (case-insensitive).
expected<bool> parse_bool(std::string_view text);
/// Parses "250", "250ms", "3s", "1.5s", "2m" into milliseconds (no unit = ms).
expected<std::chrono::milliseconds> parse_duration_ms(std::string_view text);

}  // namespace flexsp
