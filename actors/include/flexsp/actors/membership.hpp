#pragma once
/// \file
/// Cluster membership as the head keeps it: nodes, their devices, an epoch, and when each was
/// last heard from. Pure logic with the time passed in, so it is tested without sockets or
/// sleeps; the cluster actor drives it (and decides losses with failure_detector.hpp).
///
/// The epoch starts at 0 and rises by exactly one on every join and every loss. A node is lost
/// once (`lose` returns an event only for a node that was alive), so subscribers see
/// each loss exactly once. A lost node never comes back under the same id: a process that
/// returns joins again and gets a new id.

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "flexsp/actors/training.msg.hpp"
#include "flexsp/core/error.hpp"

namespace flexsp::actors {

/// One device a node offers: `cpu:3`, `cuda:0`.
struct device_id {
  device_kind kind = device_kind::cpu;  ///< the compute backend the device runs
  std::uint32_t index = 0;
  std::string description{};  ///< what the hardware is ("NVIDIA H200 (sm_90, 139.8 GiB)"); not part of identity
  std::string to_string() const { return std::string{actors::to_string(kind)} + ":" + std::to_string(index); }
  friend bool operator==(const device_id& a, const device_id& b) { return a.kind == b.kind && a.index == b.index; }
};

/// Parses a device spec: `cpu:N` (N devices cpu:0..N-1), `cuda:all` (`cuda_count` devices),
/// `cuda:0,1` (listed indices), several joined with `+` (`cpu:2+cuda:0`), or `auto`
/// (`cuda:all` when cuda_count > 0, else `cpu:1`).
/// errc::invalid_argument names the bad part; `cuda:all` with no GPU is an error.
expected<std::vector<device_id>> parse_devices(std::string_view spec, int cuda_count);

enum class node_state : std::uint8_t { alive, dead };
std::string_view to_string(node_state s) noexcept;

/// What the head knows of one node.
struct node_record {
  std::uint64_t id = 0;
  std::string address;  ///< host:port where the node accepts actor channels
  std::vector<device_id> devices;
  node_state state = node_state::alive;
  std::uint64_t joined_epoch = 0;
  std::uint64_t lost_epoch = 0;  ///< 0 while alive
  std::string lost_reason;
  std::uint32_t pid = 0;
  std::chrono::steady_clock::time_point last_seen{};
};

/// A change of membership.
struct membership_event {
  enum class kind_t : std::uint8_t { joined, lost };
  kind_t kind = kind_t::joined;
  std::uint64_t epoch = 0;  ///< the epoch this change created
  node_record node;
};

/// The membership table. Not thread-safe (owned by the head's loop).
class membership_table {
public:
  using time_point = std::chrono::steady_clock::time_point;

  /// Adds a new alive node; epoch + 1.
  membership_event join(std::string address, std::vector<device_id> devices, std::uint32_t pid, time_point now);
  /// Records a sign of life. False when the node is unknown or already lost.
  bool heartbeat(std::uint64_t id, time_point now);
  /// Marks an alive node lost; epoch + 1. nullopt when unknown or already lost.
  std::optional<membership_event> lose(std::uint64_t id, std::string reason);

  /// Starts from a saved state (a restarted head): `alive` nodes, seen at `now`, the epoch and
  /// the next node id. Only on an empty table; ids at or above `next_id` are refused.
  expected<void> restore(std::vector<node_record> alive, std::uint64_t epoch, std::uint64_t next_id, time_point now);

  const node_record* find(std::uint64_t id) const;
  std::uint64_t epoch() const noexcept { return epoch_; }
  std::uint64_t next_id() const noexcept { return next_id_; }
  std::size_t alive_count() const noexcept;
  /// All nodes ever seen, by id (lost ones are kept for `status`, up to `max_dead` of them).
  const std::map<std::uint64_t, node_record>& nodes() const noexcept { return nodes_; }

  /// Bound on remembered lost nodes (the oldest are forgotten first).
  std::size_t max_dead = 256;

private:
  void trim_dead();
  std::map<std::uint64_t, node_record> nodes_;
  std::uint64_t epoch_ = 0;
  std::uint64_t next_id_ = 1;
};

}  // namespace flexsp::actors
