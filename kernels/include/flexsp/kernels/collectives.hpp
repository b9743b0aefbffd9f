#pragma once
/// \file
/// The collective-communication interface everything above the kernels uses (Ulysses
/// all-to-alls, gradient all-reduce, parameter broadcast), with four implementations:
/// a size-1 `local` communicator (no transport; the single-device path), an in-process one
/// for ranks that are threads of one process (process_communicator.hpp), a Gloo one over TCP
/// (gloo_communicator.hpp) and an NCCL one for GPUs (nccl_collectives.hpp). Collective calls are blocking and must be issued by every
/// member of the group in the same order, from one thread at a time (only `abort()` may be
/// called concurrently, from any thread).
///
/// Failure modes (all calls): errc::timeout when a peer did not take part within the
/// communicator's timeout; errc::disconnected when a peer's connection closed (it died);
/// errc::cancelled after `abort()`; errc::invalid_argument for inconsistent sizes. After any
/// failure the communicator is unusable ("poisoned") and must be replaced.

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <utility>
#include <vector>

#include "flexsp/core/error.hpp"

namespace flexsp::kernels {

/// A group of ranks that run collectives together.
class communicator {
public:
  virtual ~communicator() = default;

  /// This process's rank in the group, in [0, size()).
  virtual int rank() const noexcept = 0;
  /// Number of ranks in the group.
  virtual int size() const noexcept = 0;

  /// All-to-all with per-peer counts (in floats). `send` holds the blocks for ranks 0..size-1
  /// back to back, `send_counts[r]` floats for rank r; `recv` receives the blocks from ranks
  /// 0..size-1 back to back, `recv_counts[r]` floats from rank r. Zero counts are allowed.
  /// recv_counts on this rank must equal the peers' send_counts for this rank.
  [[nodiscard]] virtual expected<void> all_to_all_v(std::span<const float> send,
                                                    std::span<const std::int64_t> send_counts,
                                                    std::span<float> recv,
                                                    std::span<const std::int64_t> recv_counts) = 0;

  /// In-place element-wise sum over all ranks.
  [[nodiscard]] virtual expected<void> all_reduce_sum(std::span<float> data) = 0;

  /// Concatenates every rank's `send` (same size on all ranks) into `recv` in rank order;
  /// recv.size() == size() * send.size().
  [[nodiscard]] virtual expected<void> all_gather(std::span<const float> send, std::span<float> recv) = 0;

  /// The sum over all ranks of chunk `rank()` of `send`: send.size() == size() * recv.size()
  /// (the same on all ranks), and rank r receives sum_p send_p[r * n, (r + 1) * n). Every rank
  /// gets the same bits it would from all_reduce_sum on the whole buffer (the sharded gradient
  /// reduction of ZeRO-style sharding).
  [[nodiscard]] virtual expected<void> reduce_scatter_sum(std::span<const float> send, std::span<float> recv) = 0;

  /// Copies `data` of rank `root` into `data` of every rank (same size on all ranks).
  [[nodiscard]] virtual expected<void> broadcast(std::span<float> data, int root) = 0;

  /// Returns once every rank has entered the barrier.
  [[nodiscard]] virtual expected<void> barrier() = 0;

  /// Makes collectives fail with errc::cancelled, including one blocked in another thread,
  /// and tells peers the group is gone (their pending collectives fail with
  /// errc::disconnected). Thread-safe and idempotent.
  virtual void abort() noexcept = 0;

  /// True after abort() or after a failed collective.
  virtual bool poisoned() const noexcept = 0;

  /// True when all_reduce_sum and broadcast take GPU device buffers in place (NCCL, and the
  /// group of one, where both are no-ops). Otherwise every buffer must be host memory.
  virtual bool reduces_device_buffers() const noexcept { return false; }
  /// True when all_to_all_v takes GPU device buffers in place (NCCL).
  virtual bool exchanges_device_buffers() const noexcept { return false; }
  /// How the ranks exchange data: "local" (a group of one), "memory" (threads of one
  /// process), "gloo" (TCP) or "nccl".
  virtual const char* transport() const noexcept = 0;
};

/// The group of one: collectives are local copies. Never fails except on size mismatch.
std::unique_ptr<communicator> make_local_communicator();

/// Floats an all_to_all_v call sends and receives in all.
struct exchange_totals {
  std::int64_t send = 0;
  std::int64_t recv = 0;
};

/// The argument checks every all_to_all_v implementation makes for a group of `size`: one count
/// per rank each way, none negative, buffers that hold the totals. errc::invalid_argument
/// saying what is wrong.
expected<exchange_totals> check_all_to_all_v(int size, std::span<const float> send,
                                             std::span<const std::int64_t> send_counts, std::span<const float> recv,
                                             std::span<const std::int64_t> recv_counts);

/// The key of a second communicator for the same devices in `epoch` (group_cache::get): for
/// collectives another thread runs while the first communicator is in use (a sharded model's
/// parameter gathers alongside its SP group's exchanges).
constexpr std::uint64_t second_channel(std::uint64_t epoch) noexcept { return epoch | (std::uint64_t{1} << 63); }

/// The communicators of one device for the groups a job forms, created on first use and cached
/// by (membership epoch, device set): the interface of the Gloo and NCCL caches, so a device
/// actor holds either. Ranks follow ascending global device id. Thread-safe.
class group_cache {
public:
  virtual ~group_cache() = default;
  /// The communicator of the group `devices` (global ids, any order, no duplicates, must hold
  /// this device) in `epoch`. errc::invalid_argument when this device is not a member.
  [[nodiscard]] virtual expected<std::shared_ptr<communicator>> get(std::span<const int> devices,
                                                                    std::uint64_t epoch) = 0;
  /// Aborts and forgets every cached communicator (on membership change / peer loss).
  virtual void abort_all() = 0;
  /// Forgets communicators of epochs older than `epoch` (aborting them).
  virtual void evict_before(std::uint64_t epoch) = 0;
  /// Number of cached groups.
  virtual std::size_t size() const = 0;
};

/// The communicators of one device keyed by (epoch, ascending device set): the bookkeeping the
/// Gloo and NCCL group caches share. Thread-safe; `lock()` lets a cache create a missing
/// communicator under the same lock, so creation is serialised per cache.
class communicator_table {
public:
  using key = std::pair<std::uint64_t, std::vector<int>>;

  /// Held while looking up and inserting.
  std::unique_lock<std::mutex> lock() const { return std::unique_lock{mutex_}; }
  /// The cached communicator of `k`, or null. Call with lock() held.
  std::shared_ptr<communicator> find(const key& k) const;
  /// Caches `comm` under `k` (replacing any). Call with lock() held.
  void insert(key k, std::shared_ptr<communicator> comm);

  /// Aborts and forgets every cached communicator.
  void abort_all();
  /// Aborts and forgets communicators of epochs older than `epoch`.
  void evict_before(std::uint64_t epoch);
  /// Number of cached communicators.
  std::size_t size() const;

private:
  mutable std::mutex mutex_;
  std::map<key, std::shared_ptr<communicator>> groups_;
};

}  // namespace flexsp::kernels
