#pragma once
/// \file
/// Sharded model states (ZeRO-3 inside a shard group; HSDP is ZeRO-3 groups that replicate each
/// other). The flat parameter buffer (model.hpp) is cut into *units*: the parameters before the
/// first layer, each layer, and the parameters after the last layer. A shard group of `count`
/// devices splits every unit into `count` equal chunks (the last padded with zeros); device
/// `index` keeps chunk `index` of every unit, back to back, for parameters, gradients and both
/// AdamW moments: its *local* buffers, 1/count of the model's states.
///
/// During a micro-batch a sharded model all-gathers a unit before using it (the outer units for
/// the whole micro-batch, layers one at a time, the next layer gathered on a second thread while
/// this one computes) and reduce-scatters each unit's gradients once its backward is done, adding
/// its own chunk to its local gradients. Every device of a shard group must run the same sequence
/// of collectives: a device with no work in a micro-batch round runs model::idle_micro_batch.
///
/// Layout with count == 1 (no sharding): one chunk per unit, the unit itself; local buffers are
/// the full flat buffers. Every kernels::model has a layout.

#include <cstdint>
#include <future>
#include <span>
#include <vector>

#include "flexsp/core/error.hpp"
#include "flexsp/kernels/collectives.hpp"
#include "flexsp/kernels/device.hpp"

namespace flexsp::kernels {

struct model_config;

/// A range [begin, end) of the full flat parameter buffer.
struct flat_range {
  std::int64_t begin = 0;
  std::int64_t end = 0;
  std::int64_t size() const noexcept { return end > begin ? end - begin : 0; }
  friend bool operator==(const flat_range&, const flat_range&) = default;
};

/// The units of a model: [before the layers, layer 0, ..., layer L-1, after the layers].
std::vector<flat_range> shard_units(const model_config& config);

/// How shard `index` of `count` cuts a model's units.
class shard_layout {
public:
  shard_layout() = default;
  /// FLEXSP_EXPECTS count >= 1, 0 <= index < count, contiguous units starting at 0.
  shard_layout(std::vector<flat_range> units, int count, int index);
  static shard_layout of(const model_config& config, int count = 1, int index = 0);

  int count() const noexcept { return count_; }
  int index() const noexcept { return index_; }
  bool sharded() const noexcept { return count_ > 1; }
  std::size_t units() const noexcept { return units_.size(); }
  const flat_range& unit(std::size_t u) const { return units_[u]; }
  /// Floats every shard keeps of unit u (ceil(unit size / count)).
  std::int64_t chunk(std::size_t u) const { return chunk_[u]; }
  /// Where unit u's chunk starts in the local buffers.
  std::int64_t local_offset(std::size_t u) const { return local_offset_[u]; }
  /// Floats of each local buffer (sum of the chunks, padding included).
  std::int64_t local_size() const noexcept { return local_size_; }
  /// Floats of the full flat buffer (the model's parameter count).
  std::int64_t full_size() const noexcept { return units_.empty() ? 0 : units_.back().end; }
  /// The part of the full buffer that shard `shard` keeps of unit u (clipped at the unit's end;
  /// empty for a shard past it). Local position of full element e of it:
  /// local_offset(u) + e - (unit(u).begin + shard * chunk(u)).
  flat_range range(std::size_t u, int shard) const;
  /// The same layout for shard `index` of the same count.
  shard_layout with_index(int index) const { return shard_layout{units_, count_, index}; }

  friend bool operator==(const shard_layout& a, const shard_layout& b) {
    return a.count_ == b.count_ && a.index_ == b.index_ && a.units_ == b.units_;
  }

private:
  std::vector<flat_range> units_;
  std::vector<std::int64_t> chunk_, local_offset_;
  std::int64_t local_size_ = 0;
  int count_ = 1;
  int index_ = 0;
};

/// One state checksum from the fingerprints of a shard group's shards, in shard order (a group of
/// one: the fingerprint itself).
std::uint64_t combine_fingerprints(std::span<const std::uint64_t> shards) noexcept;

/// The collectives of one sharded micro-batch on one device: unit all-gathers (one at a time,
/// optionally on a second thread so the next layer arrives while this one computes) and gradient
/// reduce-scatters, over the shard group. Device buffers go to the collective in place when the
/// device is host memory or the group takes device buffers (NCCL), else through host copies; the
/// second thread is used on host memory only. Waits for an outstanding gather when destroyed.
class unit_stream {
public:
  unit_stream(device& dev, communicator& group, const shard_layout& layout, bool prefetch);
  ~unit_stream();
  unit_stream(const unit_stream&) = delete;
  unit_stream& operator=(const unit_stream&) = delete;

  /// Starts gathering unit u: the shards' chunks (this one's at `local`) into `full`
  /// (count * chunk(u) floats). At most one gather is outstanding; call wait() first.
  void start_gather(std::size_t u, const float* local, float* full);
  /// Waits for the outstanding gather (none: returns at once) and returns its result.
  expected<void> wait();
  /// Sum over the group of unit u's gradients `full` (count * chunk(u) floats, padding zero);
  /// adds this shard's chunk to `local` (its local gradients). `scratch`: chunk(u) floats.
  expected<void> reduce_scatter_add(std::size_t u, const float* full, float* local, float* scratch);
  /// Seconds spent waiting for gathers and in reduce-scatters (exposed communication).
  double exposed_seconds() const noexcept { return exposed_; }

private:
  expected<void> gather_now(std::size_t u, const float* local, float* full);

  device& dev_;
  communicator& group_;
  const shard_layout& layout_;
  bool prefetch_;
  bool in_place_;
  std::future<expected<void>> pending_;
  std::vector<float> host_send_, host_recv_;
  double exposed_ = 0;
};

}  // namespace flexsp::kernels
