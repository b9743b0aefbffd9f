#pragma once
/// \file
/// Gloo collectives over TCP, and the per-device cache of SP-group communicators.
///
/// A communicator is created by rendezvous: every member calls `make_gloo_communicator` with
/// the same `group_key`, its rank and the group size; members publish their TCP addresses in the
/// store under that key and connect a full mesh. Collectives run on a worker thread owned by
/// the communicator, on staging buffers it owns, so that `abort()` (or a timeout) returns control
/// to the caller at once even while Gloo is still blocked; aborting also closes this member's
/// connections, which makes the peers' pending collectives fail with errc::disconnected instead
/// of waiting for their own timeouts. A peer that dies closes its sockets the same way.
///
/// How Gloo's TCP transport (libgloo 2022-05) behaves, measured on loopback, and what it means:
/// - A peer process that dies: its kernel resets the sockets; a waiting collective throws
///   "Connection closed by peer" within milliseconds -> errc::disconnected.
/// - A peer that hangs without closing (SIGSTOP, a livelock): nothing arrives; the collective
///   throws after the context timeout ("Timed out waiting ... for recv") -> errc::timeout.
/// - `Context::closeConnections()` on this side resets the peers' sockets (they fail at once)
///   but does *not* wake a collective blocked in this process: it still waits for the full
///   timeout. Hence collectives run on the worker thread and `abort()` releases the caller
///   itself, leaving the abandoned Gloo call to end with its timeout on staging memory.
/// Members must create shared groups in the same order (the plan's order): creation of a
/// group blocks in rendezvous until all members arrive or the timeout passes.

#include <chrono>
#include <functional>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "flexsp/kernels/collectives.hpp"
#include "flexsp/kernels/rendezvous_store.hpp"

namespace flexsp::kernels {

/// How a Gloo communicator connects and how long it waits.
struct gloo_options {
  /// Address of the local interface to listen on (TCP). Loopback by default.
  std::string hostname = "127.0.0.1";
  /// Deadline for rendezvous and for every collective (Gloo's context timeout).
  std::chrono::milliseconds timeout{30'000};
  /// communicator_cache: a group whose members all run in this process exchanges through
  /// memory (process_communicator.hpp) instead of TCP.
  bool in_process = true;
  /// Polled while a group is being set up; true gives up at once (errc::cancelled): the
  /// attempt the group was for was aborted.
  std::function<bool()> cancelled{};
};

/// Opaque shared TCP device (one listening socket and event loop); share one per process.
class gloo_device;

/// Creates the TCP device. errc::failed when Gloo cannot bind `options.hostname`.
expected<std::shared_ptr<gloo_device>> make_gloo_device(const gloo_options& options);

/// Joins the group `group_key` as `rank` of `size` (size >= 2). errc::timeout when the other
/// members did not show up within options.timeout; errc::invalid_argument for a bad rank/size.
/// The key must be unique per group incarnation (e.g. include the membership epoch).
expected<std::unique_ptr<communicator>> make_gloo_communicator(rendezvous_store& store, std::string group_key,
                                                               int rank, int size, const gloo_options& options,
                                                               std::shared_ptr<gloo_device> device = nullptr);

/// SP-group communicators of one device, created on first use and cached by (epoch, device
/// set). Many groups of different sizes coexist; a group of one is a local communicator, a group
/// whose members are all in this process an in-process one (unless options.in_process is off:
/// the members compare process tokens through the store), any other group a Gloo one.
/// Rendezvous keys live under "flexsp/group/<epoch>/<ascending device ids, comma-separated>/".
/// A group that failed is not rebuilt in the same epoch (its keys are spent). Thread-safe;
/// creation is serialised per cache.
class communicator_cache final : public group_cache {
public:
  communicator_cache(rendezvous_store& store, int my_device, gloo_options options);

  /// The communicator of the group made of `devices` (global device ids, any order, no
  /// duplicates, must contain my_device) in membership `epoch`. Ranks follow ascending device
  /// id. errc::invalid_argument when my_device is not a member.
  expected<std::shared_ptr<communicator>> get(std::span<const int> devices, std::uint64_t epoch) override;
  expected<std::shared_ptr<communicator>> get(std::span<const int> devices) { return get(devices, 0); }

  void abort_all() override;
  void evict_before(std::uint64_t epoch) override;
  std::size_t size() const override;

  /// This device's rank in the group `devices` (ascending id order), or -1.
  static int rank_in(std::span<const int> devices, int device);

private:
  rendezvous_store& store_;
  int my_device_;
  gloo_options options_;
  std::shared_ptr<gloo_device> device_;  // created on first use, under table_'s lock
  communicator_table table_;
};

}  // namespace flexsp::kernels
