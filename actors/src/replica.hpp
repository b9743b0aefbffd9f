#pragma once
// One device's copy of a job's training state: a kernels::model (parameters, gradients, AdamW
// moments) on the device the device actor runs, host or CUDA, with the job's optimizer
// settings. The device trainer drives a step through this class only.
//
// Unsharded, the state has the same flat layout on every device, so checksums, checkpoints and
// state broadcasts mean the same thing everywhere. Sharded (ZeRO-3 / HSDP), a replica keeps one
// shard (kernels/sharding.hpp) and learns which from each step's plan: it holds nothing until the
// first plan, then cuts its shard from its recipe (the seed, or the checkpoint it joined with),
// or receives it by transfer from the devices holding the old shards. A job runs on one kind of
// device: fp32 results of the host and a GPU differ in rounding, and the commit protocol requires
// bitwise-equal replicas.

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
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
  /// A replica of the model `shape` describes, initialised from `seed` (or loaded from
  /// `resume_from`, a checkpoint file or sharded directory), on `device` (kept alive by the
  /// replica). Sharded: nothing is allocated until prepare() (a checkpoint's header is checked
  /// now). errc::invalid_argument for a precision `device` cannot run or a checkpoint of another
  /// model, errc::overloaded when its memory is full.
  static expected<std::unique_ptr<replica>> create(std::shared_ptr<kernels::device> device, const model_shape& shape,
                                                   std::uint64_t seed, const optimizer_settings& opt, bool sharded,
                                                   const std::string& resume_from);

  /// "cpu" or "cuda"
  std::string_view backend() const noexcept { return device_->host_memory() ? "cpu" : "cuda"; }
  /// Parameters of the whole model.
  std::uint64_t parameters() const noexcept { return static_cast<std::uint64_t>(config_.parameter_count()); }
  std::int64_t optimizer_steps() const noexcept { return model_ ? model_->steps() : 0; }
  bool sharded() const noexcept { return sharded_; }
  /// The shard held: (count, index); (0, 0) before a sharded replica's first plan.
  std::pair<int, int> shard() const noexcept {
    return model_ ? std::pair{model_->shards().count(), model_->shards().index()} : std::pair{0, 0};
  }
  /// Bytes the device may use (device::memory_stats::capacity; 0: unknown).
  std::uint64_t memory_capacity() const noexcept { return device_->memory().capacity; }
  /// The device's allocations at their highest since reset_peak_memory() (model states and the
  /// step buffers, which stay allocated for later steps).
  std::uint64_t peak_memory() const noexcept { return device_->peak_memory(); }
  void reset_peak_memory() noexcept { device_->reset_peak_memory(); }
  /// Bytes of the model states held: parameters, gradients and both moments (of the shard).
  std::uint64_t state_bytes() const noexcept {
    return model_ ? 4 * sizeof(float) * static_cast<std::uint64_t>(model_->size()) : 0;
  }
  /// kernels::fingerprint of parameters, first and second moments (of the shard held; 0 when
  /// nothing is held yet).
  expected<std::uint64_t> checksum() const;

  /// Sharded: makes this replica hold shard `index` of `count`. With `sources` (world ranks of
  /// the old shards' holders, by old shard index), by transfer over `world` (collective);
  /// otherwise from the recipe when nothing (or only the recipe's state) is held, or as it is
  /// when the shard is the one held. A source of the transfer holding only its recipe cuts its
  /// old shard from it first. errc::failed for another trained shard without a transfer.
  expected<void> prepare(kernels::communicator* world, int count, int index, std::span<const int> sources);

  expected<void> zero_grads() { return model_->zero_grads(); }
  /// One micro-batch on this rank of the SP group: accumulates gradients and returns the sum of
  /// this rank's token losses, once the device finished the work (the caller times it).
  /// `shards`: the shard group of a sharded replica.
  expected<double> forward_backward(kernels::communicator& group, const kernels::ulysses_layout& layout,
                                    const kernels::local_inputs& inputs, float loss_scale,
                                    kernels::communicator* shards);
  /// A sharded replica's part of a micro-batch round it has no sequences in.
  expected<void> idle(kernels::communicator* shards) { return model_->idle_micro_batch(shards); }
  /// Seconds of parameter gathers waited for and gradient reduce-scatters since the last call.
  double take_shard_comm_seconds() { return model_ ? model_->take_shard_comm_seconds() : 0.0; }
  /// Sums gradients over `world` (data parallelism; sharded: the devices keeping this shard).
  expected<void> all_reduce_gradients(kernels::communicator& world) { return kernels::all_reduce_gradients(world, *model_); }
  /// The gradient norm the next optimizer_step clips with: local, or over the shard group.
  expected<void> settle_gradient_norm(kernels::communicator* shards);
  /// Replaces this replica's state (parameters, moments, optimizer step) by rank `root`'s.
  expected<void> broadcast(kernels::communicator& world, int root) {
    return kernels::broadcast_training_state(world, root, *model_);
  }
  /// Gradient clipping, then one AdamW update at learning rate `lr`.
  expected<void> optimizer_step(float lr);

  /// Writes the state to `path`; a sharded replica writes its shard file into the directory `path`.
  expected<void> save(const std::string& path) const;
  expected<void> load(const std::string& path) { return kernels::load_checkpoint(path, *model_); }

private:
  replica(std::shared_ptr<kernels::device> device, const model_shape& shape, std::uint64_t seed,
          const optimizer_settings& opt, bool sharded, std::string resume_from);
  expected<kernels::model> make_model(int count, int index, bool empty) const;

  std::shared_ptr<kernels::device> device_;
  model_shape shape_;
  kernels::model_config config_;
  std::uint64_t seed_;
  bool sharded_;
  std::string resume_from_;
  std::optional<kernels::model> model_;
  kernels::adamw_params hyper_;
  double max_grad_norm_;
  std::optional<double> norm_;
  /// The model's state is the recipe's: as many optimizer steps as the recipe holds (the seed 0,
  /// a checkpoint its own; unknown for a checkpoint never loaded here). Every commit adds one.
  bool pristine() const noexcept;
  std::optional<kernels::model> previous_;   // the shard a transfer replaced, until the step commits
  std::optional<std::int64_t> recipe_steps_;
};

}  // namespace flexsp::actors
