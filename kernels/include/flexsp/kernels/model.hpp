#pragma once
/// \file
/// A GPT-2-style decoder (pre-LayerNorm blocks, GELU MLP, tied input/output embedding) on the
/// CPU device, trained with Ulysses sequence parallelism inside an SP group and data
/// parallelism across groups.
///
/// One training step on a device (what the device actor runs):
/// ```
///   model.zero_grads();
///   for (auto& mb : my_micro_batches) {          // each: an SP group and its sequences
///     auto layout = ulysses_layout::make(mb.lengths, group->size(), group->rank(), cfg.heads);
///     auto in = shard_inputs(*layout, mb.sequences);
///     model.forward_backward(*group, *layout, *in, 1.0f / global_batch_tokens);
///   }
///   all_reduce_gradients(world, model);            // every live device; then GradReady
///   optimizer.step(model, max_grad_norm);          // on Commit
/// ```
/// Parameters, gradients and optimizer moments are single flat fp32 buffers, so that gradient
/// all-reduce, broadcast to a joining replica and checkpoints move one contiguous block.
///
/// Checkpoint format (little-endian, version 1):
/// ```
///   offset  size      field
///   0       8         magic "FLEXSPCK"
///   8       4         u32 format version (1)
///   12      4         u32 layers
///   16      4         u32 d_model
///   20      4         u32 heads
///   24      4         u32 vocab
///   28      4         u32 max_positions
///   32      8         u64 optimizer step count
///   40      8         u64 n = number of parameters
///   48      4n        f32 parameters  (order of gpt_model::parameters())
///   48+4n   4n        f32 AdamW first moments
///   48+8n   4n        f32 AdamW second moments
///   48+12n  8         u64 FNV-1a 64 checksum of every byte before it
/// ```
/// Files are written to "<path>.tmp" and renamed, so a reader sees the old or the new file.

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include "flexsp/core/error.hpp"
#include "flexsp/kernels/collectives.hpp"
#include "flexsp/kernels/ops.hpp"
#include "flexsp/kernels/tensor.hpp"
#include "flexsp/kernels/ulysses.hpp"

namespace flexsp::kernels {

/// Model shape.
struct gpt_config {
  std::int64_t layers = 4;
  std::int64_t d_model = 256;
  std::int64_t heads = 8;
  std::int64_t vocab = 256;
  std::int64_t max_positions = 4096;

  /// errc::invalid_argument naming the field (all positive, d_model divisible by heads).
  expected<void> validate() const;
  std::int64_t head_dim() const noexcept { return d_model / heads; }
  /// Number of parameters.
  std::int64_t parameter_count() const noexcept;
};

/// One named parameter tensor inside the flat buffer.
struct parameter_info {
  std::string name;       ///< e.g. "h0.attn.w_qkv"
  std::int64_t offset;    ///< first element in the flat buffer
  shape_t shape;
  bool decay;             ///< AdamW weight decay applies (matrices and embeddings)
};

/// What one micro-batch produced on this rank.
struct micro_batch_result {
  double loss_sum = 0;            ///< sum of token losses over this rank's tokens (unscaled)
  std::int64_t tokens = 0;        ///< this rank's tokens
  tensor logits;                  ///< [tokens, vocab] when requested, else empty
};

class gpt_model {
public:
  /// Builds a model with GPT-2 initialisation from `seed` (normal(0, 0.02) weights, output
  /// projections scaled by 1/sqrt(2*layers), unit LayerNorm gains, zero biases); the same seed
  /// gives bit-identical parameters. Fails with errc::invalid_argument for a bad config.
  static expected<gpt_model> create(const gpt_config& config, std::uint64_t seed);

  const gpt_config& config() const noexcept { return config_; }
  const std::vector<parameter_info>& parameters() const noexcept { return table_; }
  /// The parameter named `name`, or errc::not_found.
  expected<parameter_info> find(std::string_view name) const;

  std::span<float> params() noexcept { return params_; }
  std::span<const float> params() const noexcept { return params_; }
  std::span<float> grads() noexcept { return grads_; }
  std::span<const float> grads() const noexcept { return grads_; }
  void zero_grads() noexcept;

  /// Forward (and, when `backward`, backward) of one micro-batch on this rank of the SP group
  /// `group` (size == layout.degree(); a local communicator for a group of one). Gradients of
  /// `loss_scale * sum of the group's token losses` are *added* to grads(), this rank's part
  /// only: summing grads over the group's ranks (the gradient all-reduce does) gives the
  /// group's gradient. Collective: every rank of the group calls it with the same layout
  /// lengths. Errors: invalid token/target/position ids (errc::invalid_argument), sequences
  /// longer than max_positions, and any communicator error.
  expected<micro_batch_result> forward_backward(communicator& group, const ulysses_layout& layout,
                                                const local_inputs& inputs, float loss_scale, bool backward = true,
                                                bool keep_logits = false);

private:
  gpt_model() = default;
  struct layer_params;
  layer_params layer(std::int64_t l, std::span<float> buf) const;

  gpt_config config_;
  std::vector<parameter_info> table_;
  std::vector<float> params_;
  std::vector<float> grads_;
};

/// Forward and backward of the sequences one SP group runs in a micro-batch, on this member
/// of `group`: builds the Ulysses layout from the group's size and this rank, takes this
/// rank's shares and calls forward_backward. Every member passes the same full sequences
/// (length + 1 ids each, see shard_inputs). loss_scale is 1 / (tokens of the global batch).
expected<micro_batch_result> run_micro_batch(gpt_model& model, communicator& group,
                                             std::span<const std::vector<std::int32_t>> sequences, float loss_scale);

/// Sums gradients over every device of `world` (all SP groups are data-parallel replicas).
expected<void> all_reduce_gradients(communicator& world, gpt_model& model);

/// AdamW state over a model's flat parameter buffer.
class adamw_optimizer {
public:
  adamw_optimizer(const gpt_model& model, adamw_params params);

  /// Clips the gradient norm to `max_grad_norm` (<= 0: no clipping), then applies one AdamW
  /// update (weight decay only where parameter_info::decay). Returns the pre-clip norm.
  double step(gpt_model& model, double max_grad_norm);

  std::int64_t steps() const noexcept { return step_; }
  adamw_params& hyper_parameters() noexcept { return params_; }
  std::span<float> first_moments() noexcept { return m_; }
  std::span<float> second_moments() noexcept { return v_; }
  std::span<const float> first_moments() const noexcept { return m_; }
  std::span<const float> second_moments() const noexcept { return v_; }
  void set_steps(std::int64_t s) noexcept { step_ = s; }

private:
  adamw_params params_;
  std::vector<float> m_;
  std::vector<float> v_;
  std::int64_t step_ = 0;
};

/// Copies parameters, AdamW moments and step count from rank `root` of `group` to every other
/// member (a device joining a running job). Collective.
expected<void> broadcast_training_state(communicator& group, int root, gpt_model& model, adamw_optimizer& optimizer);

/// Writes parameters and optimizer state (format above). errc::io on a write failure.
expected<void> save_checkpoint(const std::filesystem::path& path, const gpt_model& model,
                               const adamw_optimizer& optimizer);

/// Restores a checkpoint into `model` and `optimizer`. errc::not_found for a missing file;
/// errc::invalid_argument for a bad magic/version, a config that differs from the model's, a
/// truncated file or a checksum mismatch (the message says which).
expected<void> load_checkpoint(const std::filesystem::path& path, gpt_model& model, adamw_optimizer& optimizer);

}  // namespace flexsp::kernels
