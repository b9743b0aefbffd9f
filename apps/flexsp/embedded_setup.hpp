#pragma once
// What `flexsp train` and `flexsp profile` share: an embedded cluster made from --devices and
// --nodes, and the job spec JSON of a --config file.
#include <memory>
#include <string>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "flexsp/actors/embedded.hpp"
#include "flexsp/core/error.hpp"

namespace flexsp::app {

using actors::embedded_options;

struct embedded_run {
  std::unique_ptr<actors::embedded_cluster> cluster;
  int devices = 0;
  std::string kinds;  ///< "cpu", "cuda" or "cpu+cuda"
};

/// Parses `devices` (cpu:N, cuda:all, cuda:0,1, auto; CUDA only when the backend is usable here),
/// splits them evenly over `nodes` embedded nodes and starts the cluster with `detector`'s
/// heartbeat interval and failure timeout. errc::invalid_argument with a message naming
/// --devices or --nodes for bad flags; other errors when the cluster fails.
expected<embedded_run> start_embedded(const std::string& devices, int nodes,
                                      actors::failure_detector_config detector = embedded_options{}.detector);

/// The JSON object in the --config file `path`, or an empty object when `path` is empty.
/// errc::invalid_argument with a message naming the file when it is unreadable or not an object.
expected<nlohmann::json> read_spec_json(const std::string& path);

/// True when the user set no log level (--log-level, FLEXSP_LOG): commands that print their own
/// progress then quiet the service logs. `cmd` is the subcommand.
bool default_log_levels(const CLI::App& cmd);

/// Exit status for a failed command: 2 for a usage error, 1 otherwise.
inline int exit_status(const error& e) { return e.kind() == errc::invalid_argument ? 2 : 1; }

}  // namespace flexsp::app
