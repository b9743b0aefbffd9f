#pragma once
/// \file
/// The model, written once against the device interface (device.hpp): a decoder of the GPT-2 or
/// the LLaMA family (model_family) with its parameters,
/// gradients and AdamW moments in one device's memory, trained with Ulysses sequence
/// parallelism inside an SP group and data parallelism across groups. The same code runs on
/// the host device (host memory, the CPU kernels: the reference) and on a CUDA device.
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
///   model.optimizer_step(hyper, max_grad_norm);    // on Commit
/// ```
/// Parameters, gradients and optimizer moments are single flat fp32 buffers (in the order of
/// `parameters()`), so that gradient all-reduce, broadcast to a joining replica and checkpoints
/// move one contiguous block, and a state checksum means the same on every device.
///
/// In a group of one the head layout change around attention is a device copy. In larger
/// groups each all-to-all follows ulysses_layout's exchange plan: the device packs the send
/// buffer and unpacks the receive buffer (device::copy_blocks); host memory and NCCL groups
/// exchange the buffers in place, other communicators (Gloo from a GPU) through host copies.
///
/// Precision: fp32 everywhere by default. On CUDA devices attention may keep Q, K, V, the output
/// and their gradients in bf16 (fp32 arithmetic inside) and GEMMs may use tf32 tensor cores;
/// the host device refuses both (errc::unimplemented).
///
/// Checkpoint format (little-endian, version 2; version 1, the same without the fields marked
/// v2, is read as gpt2):
/// ```
///   offset  size      field
///   0       8         magic "FLEXSPCK"
///   8       4         u32 format version (2)
///   12      4         u32 layers
///   16      4         u32 d_model
///   20      4         u32 heads
///   24      4         u32 vocab
///   28      4         u32 max_positions
///   32      4         u32 family (0 gpt2, 1 llama)          v2
///   36      4         u32 kv_heads                           v2
///   40      4         u32 ffn                                v2
///   44      4         f32 rope_theta                         v2
///   48      4         f32 norm_eps                           v2
///   52      4         u32 0 (reserved)                       v2
///   H-16    8         u64 optimizer step count               (H = 72; 48 in v1)
///   H-8     8         u64 n = number of parameters
///   H       4n        f32 parameters  (order of model::parameters())
///   H+4n    4n        f32 AdamW first moments
///   H+8n    4n        f32 AdamW second moments
///   H+12n   8         u64 FNV-1a 64 checksum of every byte before it
/// ```
/// Files are written to "<path>.tmp" and renamed, so a reader sees the old or the new file.

#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "flexsp/core/error.hpp"
#include "flexsp/kernels/collectives.hpp"
#include "flexsp/kernels/device.hpp"
#include "flexsp/kernels/ops.hpp"
#include "flexsp/kernels/sharding.hpp"
#include "flexsp/kernels/tensor.hpp"
#include "flexsp/kernels/ulysses.hpp"

namespace flexsp::kernels {

/// The decoder families:
/// - gpt2: learned position table, pre-LayerNorm blocks with biases, GELU MLP of 4 d_model,
///   output projection tied to the token embedding.
/// - llama: no position table (rotary embeddings of Q and K, positions restarting at 0 in every
///   packed sequence), RMSNorm, grouped-query attention (`kv_heads`), SwiGLU MLP of `ffn`, an
///   untied output head, no biases.
enum class model_family : std::uint8_t { gpt2, llama };
std::string_view to_string(model_family f) noexcept;

/// Model shape.
struct model_config {
  model_family family = model_family::gpt2;
  std::int64_t layers = 4;
  std::int64_t d_model = 256;
  std::int64_t heads = 8;
  std::int64_t vocab = 256;
  std::int64_t max_positions = 4096;  ///< longest sequence (gpt2: the position table's size)
  std::int64_t kv_heads = 0;          ///< llama: K/V heads, dividing heads (0: heads)
  std::int64_t ffn = 0;               ///< llama: SwiGLU width (0: 8/3 d_model rounded up to 32)
  float rope_theta = 10000.0f;        ///< llama: rotary base
  float norm_eps = 1e-5f;             ///< llama: RMSNorm epsilon

  /// errc::invalid_argument naming the field (all positive, d_model divisible by heads, heads
  /// by kv_heads, an even head dimension for rotary embeddings).
  expected<void> validate() const;
  std::int64_t head_dim() const noexcept { return d_model / heads; }
  /// K/V heads (heads for gpt2).
  std::int64_t kv() const noexcept { return family == model_family::llama && kv_heads > 0 ? kv_heads : heads; }
  /// Width of the MLP's hidden layer.
  std::int64_t ffn_dim() const noexcept;
  /// Number of parameters.
  std::int64_t parameter_count() const noexcept;
  friend bool operator==(const model_config&, const model_config&) = default;
};

/// One named parameter tensor inside the flat buffer.
struct parameter_info {
  std::string name;       ///< e.g. "h0.attn.w_qkv"
  std::int64_t offset;    ///< first element in the flat buffer
  shape_t shape;
  bool decay;             ///< AdamW weight decay applies (matrices and embeddings)
};

/// The parameter table of a model of `config`: names, offsets in the flat buffer, shapes, decay
/// (what model::parameters() returns, without building a model).
std::vector<parameter_info> parameter_table(const model_config& config);

/// What one micro-batch produced on this rank.
struct micro_batch_result {
  double loss_sum = 0;            ///< sum of token losses over this rank's tokens (unscaled)
  std::int64_t tokens = 0;        ///< this rank's tokens
  tensor logits;                  ///< [tokens, vocab] (host) when requested, else empty
};

/// How a forward pass runs.
/// Device memory of a model and one micro-batch, bytes.
struct memory_footprint {
  std::uint64_t states = 0;       ///< parameters, gradients, both AdamW moments (fp32)
  std::uint64_t activations = 0;  ///< what forward keeps for backward, backward's buffers, exchanges, workspaces
  std::uint64_t total() const noexcept { return states + activations; }
};

/// Bytes of device memory per token of a micro-batch of long sequences at SP degree
/// `degree` (each rank holds 1/degree of the tokens and heads), from the same accounting as
/// model::footprint on the host device, and the fixed bytes (model states with `state_shards`
/// devices sharing them, and per-step buffers that do not grow with tokens). For the planner's
/// memory constraint: a rank of a group holding T tokens needs fixed + per_token * T / degree.
struct memory_profile {
  double per_token = 0;  ///< bytes per token of the group (divide by the degree per rank)
  double fixed = 0;      ///< bytes
};
memory_profile estimate_memory(const model_config& config, int degree, int state_shards = 1);

struct forward_options {
  bool backward = true;       ///< also accumulate gradients
  bool keep_logits = false;   ///< copy this rank's logits to micro_batch_result::logits
  /// A sharded model's shard group (size == shards().count(), rank == shards().index()); its
  /// collectives must not share a communicator with `group` (they run on a second thread).
  communicator* shard_group = nullptr;
  bool prefetch = true;       ///< sharded: gather the next layer while computing this one
};

/// Which shard of its shard group a model keeps (sharding.hpp); count 1: the whole model.
struct shard_spec {
  int count = 1;
  int index = 0;
};

class model {
public:
  /// Builds a model on `dev` with GPT-2 initialisation from `seed` (normal(0, 0.02) weights,
  /// output projections scaled by 1/sqrt(2*layers), unit LayerNorm gains, zero biases; drawn on
  /// the host, so the same seed gives bit-identical parameters on every device); gradients and
  /// moments start at zero. errc::invalid_argument for a bad config, errc::overloaded when the
  /// device is out of memory.
  static expected<model> create(std::shared_ptr<device> dev, const model_config& config, std::uint64_t seed);
  /// Shard `shards.index` of `shards.count` of the same model: bit-identical to the matching
  /// chunks of the unsharded one (zero padding). No optimizer state yet when `zero`: every
  /// buffer zero (a model about to receive its state by transfer or from a checkpoint).
  static expected<model> create(std::shared_ptr<device> dev, const model_config& config, std::uint64_t seed,
                                shard_spec shards, bool zero = false);
  /// The same on a new host device.
  static expected<model> create(const model_config& config, std::uint64_t seed);

  model(model&&) noexcept;
  model& operator=(model&&) noexcept;
  ~model();

  const model_config& config() const noexcept;
  const std::vector<parameter_info>& parameters() const noexcept;
  /// The parameter named `name`, or errc::not_found.
  expected<parameter_info> find(std::string_view name) const;
  device& dev() const noexcept;
  std::shared_ptr<device> device_ptr() const noexcept;
  /// Floats in each (local) flat buffer: the parameter count unless sharded.
  std::int64_t size() const noexcept;
  /// How the states are split (count 1: not at all).
  const shard_layout& shards() const noexcept;

  /// Element type of attention's Q, K, V and output (and their gradients): f32 (the default)
  /// or bf16 (CUDA only; every other op, the parameters and the optimizer stay fp32).
  dtype attention_type() const noexcept;
  void set_attention_type(dtype type) noexcept;
  /// Arithmetic of every GEMM: fp32 (the default) or tf32 (CUDA only).
  gemm_math gemm_arithmetic() const noexcept;
  void set_gemm_math(gemm_math math) noexcept;

  /// Device pointers to the flat buffers ([size()] floats each).
  float* params() const noexcept;
  float* grads() const noexcept;
  float* first_moments() const noexcept;
  float* second_moments() const noexcept;
  /// The flat buffers as host spans: only on the host device (FLEXSP_EXPECTS otherwise).
  std::span<float> host_params() const;
  std::span<float> host_grads() const;
  std::span<float> host_first_moments() const;
  std::span<float> host_second_moments() const;

  /// Optimizer steps applied.
  std::int64_t steps() const noexcept;
  void set_steps(std::int64_t steps) noexcept;

  expected<void> zero_grads();
  /// Forward (and, unless options say otherwise, backward) of one micro-batch on this rank of
  /// the SP group `group` (size == layout.degree(); a local communicator for a group of one).
  /// Gradients of `loss_scale * sum of the group's token losses` are *added* to grads(), this
  /// rank's part only: summing grads over the group's ranks (the gradient all-reduce does)
  /// gives the group's gradient. Collective: every rank of the group calls it with the same
  /// layout lengths. Errors: invalid token/target/position ids (errc::invalid_argument),
  /// sequences longer than max_positions, what the device cannot do, communicator errors.
  expected<micro_batch_result> forward_backward(communicator& group, const ulysses_layout& layout,
                                                const local_inputs& inputs, float loss_scale,
                                                forward_options options = {});
  /// The same for a group of one: whole sequences `lengths` on this device.
  expected<micro_batch_result> forward_backward(const local_inputs& inputs, std::span<const std::int64_t> lengths,
                                                float loss_scale, forward_options options = {});

  /// The device memory (bytes handed out by device::allocate) this model holds after a
  /// micro-batch of `layout` on a model that had run none: the model states, and the
  /// activations and scratch the step keeps (their buffers are reused by later, smaller steps,
  /// so a step's peak is the largest micro-batch's). Mirrors forward_backward's allocations.
  expected<memory_footprint> footprint(const ulysses_layout& layout, forward_options options = {}) const;

  /// A micro-batch round in which this device has no sequences: a sharded model's share of the
  /// round's collectives on `shard_group` (the same sequence forward_backward runs), no compute.
  /// Nothing for an unsharded model.
  expected<void> idle_micro_batch(communicator* shard_group, bool prefetch = true);
  /// Seconds the last micro-batches spent waiting for parameter gathers and in gradient
  /// reduce-scatters since the last call (sharded models; 0 otherwise).
  double take_shard_comm_seconds() noexcept;

  /// The norm of the whole model's gradient: local, or summed over `shard_group` when sharded.
  expected<double> gradient_norm(communicator* shard_group = nullptr);
  /// Clips the gradient norm to `max_grad_norm` (<= 0: no clipping), then applies one AdamW
  /// update (weight decay only where parameter_info::decay). Returns the pre-clip norm.
  expected<double> optimizer_step(const adamw_params& hyper, double max_grad_norm);
  /// The same with the gradient norm given (gradient_norm over the shard group).
  expected<double> optimizer_step(const adamw_params& hyper, double max_grad_norm, double norm);

  /// kernels::fingerprint of parameters, first and second moments as one sequence, computed
  /// where they live: the same value for the same bits on every device.
  expected<std::uint64_t> fingerprint() const;
  /// Copies to or from host memory ([size()] floats each); errc::invalid_argument for another size.
  expected<void> download_params(std::span<float> out) const;
  expected<void> download_grads(std::span<float> out) const;
  expected<void> download_moments(std::span<float> first, std::span<float> second) const;
  expected<void> upload_params(std::span<const float> in);
  expected<void> upload_grads(std::span<const float> in);
  /// Replaces parameters, moments and step count (a checkpoint or another replica's state).
  expected<void> upload_state(std::span<const float> params, std::span<const float> first,
                              std::span<const float> second, std::int64_t steps);

private:
  struct state;
  struct shard_pass;
  explicit model(std::unique_ptr<state> s);
  std::unique_ptr<state> s_;
};

/// Forward and backward of the sequences one SP group runs in a micro-batch, on this member
/// of `group`: builds the Ulysses layout from the group's size and this rank, takes this
/// rank's shares and calls forward_backward. Every member passes the same full sequences
/// (length + 1 ids each, see shard_inputs). loss_scale is 1 / (tokens of the global batch).
expected<micro_batch_result> run_micro_batch(model& m, communicator& group,
                                             std::span<const std::vector<std::int32_t>> sequences, float loss_scale);

/// Sums gradients over every device of `world` (all SP groups are data-parallel replicas):
/// in place for host memory and groups that take device buffers, else through a host copy.
expected<void> all_reduce_gradients(communicator& world, model& m);

/// Copies parameters, AdamW moments and step count from rank `root` of `group` to every other
/// member (a device joining a running job). Collective.
expected<void> broadcast_training_state(communicator& group, int root, model& m);

/// Moves the training state of an old layout into `target`, whatever its layout (elastic
/// resharding, a device joining, a replica re-synchronised): old shard r of `sources.size()` is
/// broadcast from world rank sources[r] (which passes its model as `held`; others pass theirs or
/// null), and every rank keeps what falls in its own shard. Collective over `world`. One old
/// shard at a time travels through host memory.
expected<void> transfer_shards(communicator& world, std::span<const int> sources, const model* held, model& target);

/// Writes parameters and optimizer state (format above; a sharded model writes its shard:
/// version 3, the version-2 header plus u32 shard count and index at 52 and 56, H = 80). errc::io
/// on a write failure.
expected<void> save_checkpoint(const std::filesystem::path& path, const model& m);
/// File name of shard `index` of `count` in a sharded checkpoint directory.
std::string shard_file_name(int count, int index);

/// The model configuration a checkpoint holds (its header; a version 1 file is gpt2). Same
/// errors as load_checkpoint for a file that is not a checkpoint.
expected<model_config> read_checkpoint_config(const std::filesystem::path& path);

/// Restores a checkpoint into `m`, whatever either's sharding: `path` is a checkpoint file, or a
/// directory of shard files (shard_file_name; all of one count must be there) whose shards are
/// cut to `m`'s layout. errc::not_found for a missing file; errc::invalid_argument
/// for a bad magic/version, a config that differs from the model's, a truncated file or a
/// checksum mismatch (the message says which).
expected<void> load_checkpoint(const std::filesystem::path& path, model& m);

}  // namespace flexsp::kernels
