#pragma once
// One device's copy of a job's training state (parameters, gradients, AdamW moments) on the
// backend the device runs: host memory and the CPU kernels, or GPU memory and the CUDA kernels.
// The device trainer drives a step through this interface only.
//
// Both backends keep the state in the same flat layout, so checksums, checkpoints and state
// broadcasts mean the same thing on either. A job runs on one backend: fp32 results of the two
// differ in rounding, and the commit protocol requires bitwise-equal replicas.

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "flexsp/actors/training_messages.hpp"
#include "flexsp/core/error.hpp"
#include "flexsp/kernels/collectives.hpp"
#include "flexsp/kernels/gpu.hpp"
#include "flexsp/kernels/model.hpp"
#include "flexsp/kernels/ulysses.hpp"

namespace flexsp::actors {

class replica {
public:
  virtual ~replica() = default;

  /// "cpu" or "cuda"
  virtual std::string_view backend() const noexcept = 0;
  virtual std::uint64_t parameters() const noexcept = 0;
  virtual std::int64_t optimizer_steps() const noexcept = 0;
  /// kernels::fingerprint of parameters, first and second moments as one sequence (computed
  /// where the state lives; the same value for the same bits on either backend).
  virtual expected<std::uint64_t> checksum() = 0;

  virtual expected<void> zero_grads() = 0;
  /// One micro-batch on this rank of the SP group (kernels::gpt_model::forward_backward):
  /// accumulates gradients and returns the sum of this rank's token losses. Returns once the
  /// device finished the work, so the caller's wall time is the compute time.
  virtual expected<double> forward_backward(kernels::communicator& group, const kernels::ulysses_layout& layout,
                                            const kernels::local_inputs& inputs, float loss_scale) = 0;
  /// Sums gradients over `world` (data parallelism).
  virtual expected<void> all_reduce_gradients(kernels::communicator& world) = 0;
  /// Replaces this replica's state (parameters, moments, optimizer step) by rank `root`'s.
  virtual expected<void> broadcast(kernels::communicator& world, int root) = 0;
  /// Gradient clipping, then one AdamW update at learning rate `lr`.
  virtual expected<void> optimizer_step(float lr) = 0;

  virtual expected<void> save(const std::string& path) = 0;
  virtual expected<void> load(const std::string& path) = 0;
};

/// A replica in host memory.
expected<std::unique_ptr<replica>> make_cpu_replica(const model_shape& shape, std::uint64_t seed,
                                                    const optimizer_settings& opt);

/// A replica on `device` (kept alive by the replica). Parameters are initialised on the host
/// with the same seed as a CPU replica, then uploaded. errc::overloaded when the GPU is full.
expected<std::unique_ptr<replica>> make_gpu_replica(std::shared_ptr<kernels::gpu::device> device,
                                                    const model_shape& shape, std::uint64_t seed,
                                                    const optimizer_settings& opt);

}  // namespace flexsp::actors
