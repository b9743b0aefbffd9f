#pragma once
/// \file
/// The reference GPT (model.hpp) on one GPU: a replica whose parameters, gradients and AdamW
/// moments live in device memory in the same flat layout as gpt_model, trained with the GPU
/// kernels of gpu.hpp, with Ulysses sequence parallelism inside an SP group exactly as
/// gpt_model::forward_backward. Gradients are flat device buffers, so a data-parallel
/// all-reduce over an NCCL communicator works on `grads()` in place.
///
/// In a group of one the head layout change around attention is a device copy. In larger
/// groups each all-to-all follows ulysses_layout's exchange plan: the GPU packs the send buffer
/// and unpacks the receive buffer (device::copy_blocks); an NCCL group exchanges the device
/// buffers in place, any other communicator (Gloo) the packed buffers through host memory.
///
/// Numerics match gpt_model::forward_backward and adamw_optimizer::step up to fp32 rounding
/// (summation order differs), which tests/gpu checks; with bf16 attention, up to bf16 rounding
/// of Q, K, V, the attention output and their gradients; with tf32 GEMMs, up to tf32 rounding
/// of the GEMM inputs.

#include <cstdint>
#include <memory>
#include <span>

#include "flexsp/kernels/collectives.hpp"
#include "flexsp/kernels/gpu.hpp"
#include "flexsp/kernels/model.hpp"
#include "flexsp/kernels/ulysses.hpp"

namespace flexsp::kernels::gpu {

class gpt_replica {
public:
  /// Copies `model`'s configuration, parameter table and parameters to `dev` (which must
  /// outlive the replica); gradients and moments start at zero. errc::overloaded when the
  /// device is out of memory.
  static expected<gpt_replica> create(device& dev, const gpt_model& model);

  gpt_replica(gpt_replica&&) noexcept;
  gpt_replica& operator=(gpt_replica&&) noexcept;
  ~gpt_replica();

  const gpt_config& config() const noexcept;
  /// Element type of attention's Q, K, V and output (and their gradients): f32 (the default,
  /// matching gpt_model up to rounding) or bf16 (mixed precision: cast around the attention
  /// kernels, fp32 arithmetic inside; every other op, the parameters and the optimizer stay
  /// fp32).
  dtype attention_type() const noexcept;
  void set_attention_type(dtype type) noexcept;
  /// Arithmetic of every GEMM (linear layers and the tied output projection): fp32 (the
  /// default) or tf32 (tensor cores on fp32 data).
  gemm_math gemm_arithmetic() const noexcept;
  void set_gemm_math(gemm_math math) noexcept;
  /// Device pointers to the flat buffers ([parameter_count] floats each).
  float* params() const noexcept;
  float* grads() const noexcept;

  expected<void> zero_grads();
  /// Forward and backward of one micro-batch on this rank of the SP group `group` (size ==
  /// layout.degree(); collective over the group), as gpt_model::forward_backward: adds this
  /// rank's part of the gradient of loss_scale * (sum of the group's token losses) to grads()
  /// and returns the sum of this rank's token losses (unscaled). Same errors.
  expected<double> forward_backward(communicator& group, const ulysses_layout& layout, const local_inputs& inputs,
                                    float loss_scale);
  /// The same for a group of one: whole sequences `lengths` on this device.
  expected<double> forward_backward(const local_inputs& inputs, std::span<const std::int64_t> lengths,
                                    float loss_scale);
  /// Clips the gradient norm to max_grad_norm (<= 0: no clipping), then one AdamW update
  /// (no weight decay where parameter_info::decay is false). Returns the pre-clip norm.
  expected<double> optimizer_step(const adamw_params& hyper, double max_grad_norm);

  /// AdamW moments ([parameter_count] floats each, device) and the optimizer step count: with
  /// params() the whole training state, e.g. for an NCCL broadcast to a joining replica.
  float* first_moments() const noexcept;
  float* second_moments() const noexcept;
  std::int64_t steps() const noexcept;
  void set_steps(std::int64_t steps) noexcept;

  /// kernels::fingerprint of parameters, first and second moments as one sequence, computed on
  /// the GPU: equal to the same fingerprint of a host replica holding the same bits.
  expected<std::uint64_t> fingerprint() const;
  /// Copies parameters / gradients / moments to the host ([parameter_count] floats each);
  /// errc::invalid_argument for another size.
  expected<void> download_params(std::span<float> out) const;
  expected<void> download_grads(std::span<float> out) const;
  expected<void> download_moments(std::span<float> first, std::span<float> second) const;
  /// Replaces the gradients from the host (after an all-reduce over host buffers).
  expected<void> upload_grads(std::span<const float> in);
  /// Replaces parameters and moments from the host (a checkpoint or a host replica's state).
  expected<void> upload_state(std::span<const float> params, std::span<const float> first,
                              std::span<const float> second, std::int64_t steps);

private:
  struct state;
  explicit gpt_replica(std::unique_ptr<state> s);
  std::unique_ptr<state> s_;
};

}  // namespace flexsp::kernels::gpu
