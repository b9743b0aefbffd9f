#pragma once
/// \file
/// NCCL collectives behind the `communicator` interface (collectives.hpp), and the per-device
/// cache of SP-group communicators for GPU devices.
///
/// Buffers: the spans passed to collectives may point to device memory (cudaMalloc or managed;
/// used in place, no copies) or to host memory (staged through device buffers owned by the
/// communicator), so CPU-side code such as ulysses_layout works unchanged on an NCCL group.
/// Calls are blocking: they return when the collective finished on this rank.
///
/// Creation: rank 0 creates an ncclUniqueId and publishes it in the rendezvous store under
/// "<group_key>/nccl-id"; the others read it; all call ncclCommInitRankConfig with
/// blocking = 0 and poll it until it finished or `timeout` passed (then errc::timeout and the
/// half-made communicator is aborted). Keys must be unique per group incarnation (include the
/// membership epoch).
///
/// Failure: every collective polls ncclCommGetAsyncError while it waits; after `timeout`, on an
/// asynchronous NCCL error (a peer died: errc::disconnected) or after `abort()` (errc::cancelled,
/// callable from any thread) the communicator is aborted with ncclCommAbort, which unblocks the
/// GPU work, and is poisoned.
///
/// NCCL is loaded at run time (libnccl.so.2) and must be version 2.18.0 or newer; without it,
/// or in a build without CUDA, the factory returns errc::unimplemented saying why.

#include <chrono>
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

/// Oldest NCCL the backend runs with (NCCL_VERSION_CODE of 2.18.0).
inline constexpr int kNcclRequiredVersion = 21800;

/// The NCCL library on this machine.
struct nccl_status {
  bool available = false;  ///< compiled in, loadable and new enough
  int version = 0;         ///< NCCL_VERSION_CODE of the loaded library (e.g. 22809), 0 when none
  std::string library;     ///< the file that was loaded
  std::string reason;      ///< why it is unavailable, when it is
};
nccl_status query_nccl();

struct nccl_options {
  /// Deadline for rendezvous, communicator creation and every collective.
  std::chrono::milliseconds timeout{60'000};
};

/// Joins the NCCL group `group_key` as `rank` of `size` (size >= 1) on CUDA device
/// `cuda_device`. errc::unimplemented (not compiled in / NCCL missing or too old),
/// errc::invalid_argument (rank, size, device), errc::timeout (peers did not come).
expected<std::unique_ptr<communicator>> make_nccl_communicator(rendezvous_store& store, std::string group_key, int rank,
                                                               int size, int cuda_device, const nccl_options& options);

/// NCCL communicators of one device, created on first use and cached by (membership epoch,
/// device set); a group of one is a local communicator. Ranks follow ascending global device
/// id. Thread-safe.
class nccl_communicator_cache final : public group_cache {
public:
  /// `my_device` is this device's global id in the cluster; `cuda_device` its local GPU index.
  nccl_communicator_cache(rendezvous_store& store, int my_device, int cuda_device, nccl_options options);

  /// The communicator of the group `devices` (global ids, any order, no duplicates) in `epoch`.
  /// errc::invalid_argument when my_device is not a member or ids repeat.
  expected<std::shared_ptr<communicator>> get(std::span<const int> devices, std::uint64_t epoch) override;
  void abort_all() override;
  void evict_before(std::uint64_t epoch) override;
  std::size_t size() const override;

private:
  rendezvous_store& store_;
  int my_device_;
  int cuda_device_;
  nccl_options options_;
  communicator_table table_;
};

}  // namespace flexsp::kernels
