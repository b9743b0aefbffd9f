#pragma once
// How a client on this machine finds a cluster without being told: `flexsp start --head` records
// the head's address and secret file in a per-user state directory, and the CLI, the C++ job
// client and the Python package all resolve an address and a secret the same way from it.
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "flexsp/core/error.hpp"

namespace flexsp::actors {

/// FLEXSP_STATE_DIR, else $XDG_RUNTIME_DIR/flexsp, else /tmp/flexsp-$UID; created (mode 0700)
/// with its procs/ and logs/ folders.
expected<std::filesystem::path> local_state_dir();

/// What `flexsp start --head` recorded in current_cluster.json.
struct local_cluster {
  std::string address;      ///< "host:port" of the head
  std::string secret_file;  ///< where its secret is
};

/// The cluster started last on this machine, when there is a record of one.
std::optional<local_cluster> recorded_local_cluster();

/// The secret: `secret_file`, FLEXSP_CLUSTER_SECRET, FLEXSP_SECRET_FILE, then the recorded
/// cluster's file when it is the cluster being addressed (an empty `address` means any).
/// errc::invalid_argument saying where it looked when there is none.
expected<std::vector<std::uint8_t>> resolve_cluster_secret(const std::string& secret_file, const std::string& address);

/// The head address: `address` when given (checked to be HOST:PORT), FLEXSP_ADDRESS, then the
/// recorded cluster's.
expected<std::string> resolve_head_address(const std::string& address);

}  // namespace flexsp::actors
