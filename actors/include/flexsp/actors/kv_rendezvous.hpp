#pragma once
/// \file
/// The head's KV store as the rendezvous store of collective groups: communicators of a job
/// publish their addresses under `<prefix>/<key>` through a `cluster_client`.
///
/// Waits are cut into short slices so that a rendezvous with a member that died gives up as soon
/// as `cancelled()` turns true (the step was aborted) instead of waiting for the full timeout.

#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "flexsp/actors/client.hpp"
#include "flexsp/kernels/rendezvous_store.hpp"

namespace flexsp::actors {

class kv_rendezvous_store final : public kernels::rendezvous_store {
public:
  /// `client` must outlive the store. `cancelled` may be empty (never cancelled).
  kv_rendezvous_store(cluster_client& client, std::string prefix, std::function<bool()> cancelled = {})
      : client_{client}, prefix_{std::move(prefix)}, cancelled_{std::move(cancelled)} {}

  expected<void> set(std::string_view key, std::span<const char> value) override;
  /// errc::timeout after `timeout`; errc::cancelled once `cancelled()` holds; errc::disconnected
  /// when the head is gone.
  expected<std::vector<char>> get(std::string_view key, std::chrono::milliseconds timeout) override;
  expected<void> wait(std::span<const std::string> keys, std::chrono::milliseconds timeout) override;

private:
  std::string full_key(std::string_view key) const { return prefix_ + "/" + std::string{key}; }
  cluster_client& client_;
  std::string prefix_;
  std::function<bool()> cancelled_;
};

}  // namespace flexsp::actors
