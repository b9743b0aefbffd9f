#pragma once
// One device's copy of a job's training state: a kernels::model (parameters, gradients, AdamW
// moments) on the device the device actor runs, host or CUDA, with the job's optimizer
// settings. The device trainer drives a step through this class only.
//
// The state has the same flat layout on every device, so checksums, checkpoints and state
// broadcasts mean the same thing everywhere. A job runs on one kind of device: fp32 results of
// the host and a GPU differ in rounding, and the commit protocol requires bitwise-equal replicas.

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "flexsp/actors/training_messages.hpp"
#include "flexsp/core/error.hpp"
#include "flexsp/kernels/collectives.hpp"
#include "flexsp/kernels/device.hpp"
#include "flexsp/kernels/model.hpp"
#include "flexsp/kernels/ulysses.hpp"

namespace flexsp::actors {

class replica {
public:
  /// A replica of the model `shape` describes, initialised from `seed`, on `device` (kept alive
  /// by the replica). errc::invalid_argument for a precision `device` cannot run,
  /// errc::overloaded when its memory is full.
  static expected<std::unique_ptr<replica>> create(std::shared_ptr<kernels::device> device, const model_shape& shape,
                                                   std::uint64_t seed, const optimizer_settings& opt);

  /// "cpu" or "cuda"
  std::string_view backend() const noexcept { return model_.dev().host_memory() ? "cpu" : "cuda"; }
  std::uint64_t parameters() const noexcept { return static_cast<std::uint64_t>(model_.size()); }
  std::int64_t optimizer_steps() const noexcept { return model_.steps(); }
  /// Bytes the device may use (device::memory_stats::capacity; 0: unknown).
  std::uint64_t memory_capacity() const noexcept { return model_.dev().memory().capacity; }
  /// The device's allocations at their highest since reset_peak_memory() (model states and the
  /// step buffers, which stay allocated for later steps).
  std::uint64_t peak_memory() const noexcept { return model_.dev().peak_memory(); }
  void reset_peak_memory() noexcept { model_.dev().reset_peak_memory(); }
  /// kernels::fingerprint of parameters, first and second moments as one sequence.
  expected<std::uint64_t> checksum() const { return model_.fingerprint(); }

  expected<void> zero_grads() { return model_.zero_grads(); }
  /// One micro-batch on this rank of the SP group: accumulates gradients and returns the sum of
  /// this rank's token losses, once the device finished the work (the caller times it).
  expected<double> forward_backward(kernels::communicator& group, const kernels::ulysses_layout& layout,
                                    const kernels::local_inputs& inputs, float loss_scale);
  /// Sums gradients over `world` (data parallelism).
  expected<void> all_reduce_gradients(kernels::communicator& world) { return kernels::all_reduce_gradients(world, model_); }
  /// Replaces this replica's state (parameters, moments, optimizer step) by rank `root`'s.
  expected<void> broadcast(kernels::communicator& world, int root) {
    return kernels::broadcast_training_state(world, root, model_);
  }
  /// Gradient clipping, then one AdamW update at learning rate `lr`.
  expected<void> optimizer_step(float lr);

  expected<void> save(const std::string& path) const { return kernels::save_checkpoint(path, model_); }
  expected<void> load(const std::string& path) { return kernels::load_checkpoint(path, model_); }

private:
  replica(kernels::model m, const optimizer_settings& opt);
  kernels::model model_;
  kernels::adamw_params hyper_;
  double max_grad_norm_;
};

}  // namespace flexsp::actors
