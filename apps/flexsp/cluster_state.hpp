#pragma once
// Per-user cluster state of the `flexsp` command: the directory `flexsp start` records clusters
// and processes in, and how later commands find a cluster's address and secret without flags.
#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "flexsp/core/error.hpp"

namespace flexsp::actors {
class job_client;
}

namespace flexsp::app {

/// FLEXSP_STATE_DIR, else $XDG_RUNTIME_DIR/flexsp, else /tmp/flexsp-$UID; created (mode 0700)
/// with its procs/ and logs/ folders.
expected<std::filesystem::path> state_dir();

/// A whole file; errc::not_found naming it when it cannot be read.
expected<std::string> read_file(const std::filesystem::path& p);

/// Writes `content` to a temporary file and renames it over `p`.
expected<void> write_file_atomic(const std::filesystem::path& p, const std::string& content, mode_t mode);

/// The record `flexsp start --head` leaves for later commands on this machine (address,
/// secret_file), when there is one.
std::optional<nlohmann::json> current_cluster();

/// The secret: --secret-file, FLEXSP_CLUSTER_SECRET, FLEXSP_SECRET_FILE, then the current
/// cluster's file when it is the cluster being addressed. errc::invalid_argument when none.
expected<std::vector<std::uint8_t>> resolve_secret(const std::string& secret_file, const std::string& address);

/// The head address: the flag, FLEXSP_ADDRESS, then the current cluster's.
expected<std::string> resolve_address(const std::string& address);

/// A job API client of the cluster at `address` (resolved as above) with its secret.
expected<std::shared_ptr<actors::job_client>> connect_job_client(const std::string& address,
                                                                 const std::string& secret_file);

}  // namespace flexsp::app
