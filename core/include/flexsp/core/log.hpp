#pragma once
/// \file
/// Named loggers, one per component, on top of spdlog.
///
/// Components log through `flexsp::log::get("core")`, `"net"`, `"scheduler"`, `"device"`,
/// `"kernels"`, `"actors"`, `"app"`. All loggers share one stderr sink. Levels come from one
/// spec string, set from the command line (`--log-level`) or the `FLEXSP_LOG` environment
/// variable: a default level and optional per-logger levels, e.g. `"info"`, `"warn,net=debug"`.
/// Level names are spdlog's: trace, debug, info, warn, error, critical, off.

#include <memory>
#include <string_view>

#include <spdlog/logger.h>

#include "flexsp/core/error.hpp"

namespace flexsp::log {

/// The logger of a component; created with the current levels on first use. Thread-safe.
std::shared_ptr<spdlog::logger> get(std::string_view component);

/// Applies a level spec ("info", "warn,net=debug") to existing and future loggers.
/// Fails with errc::invalid_argument naming the bad token; nothing changes then.
expected<void> configure(std::string_view spec);

/// Applies `FLEXSP_LOG` when it is set; no-op otherwise.
expected<void> configure_from_env();

}  // namespace flexsp::log
