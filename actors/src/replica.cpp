#include "replica.hpp"

#include <vector>

#include "flexsp/kernels/ops.hpp"
#include "flexsp/kernels/gpu_model.hpp"

namespace flexsp::actors {

namespace {

kernels::gpt_config config_of(const model_shape& shape) {
  return kernels::gpt_config{.layers = shape.layers, .d_model = shape.d_model, .heads = shape.heads,
                             .vocab = shape.vocab, .max_positions = shape.max_seq};
}

kernels::adamw_params hyper_of(const optimizer_settings& opt) {
  return kernels::adamw_params{.lr = opt.lr, .beta1 = opt.beta1, .beta2 = opt.beta2, .eps = opt.eps,
                               .weight_decay = opt.weight_decay};
}

/// Broadcasts the optimizer step count (a float carries it exactly up to 2^24 steps).
expected<std::int64_t> broadcast_steps(kernels::communicator& world, int root, std::int64_t steps) {
  std::vector<float> v{static_cast<float>(steps)};
  FLEXSP_TRY(world.broadcast(v, root));
  return static_cast<std::int64_t>(v[0]);
}

class cpu_replica final : public replica {
public:
  cpu_replica(kernels::gpt_model m, const optimizer_settings& opt)
      : model_{std::move(m)}, optimizer_{model_, hyper_of(opt)}, max_grad_norm_{opt.max_grad_norm} {}

  std::string_view backend() const noexcept override { return "cpu"; }
  std::uint64_t parameters() const noexcept override { return model_.params().size(); }
  std::int64_t optimizer_steps() const noexcept override { return optimizer_.steps(); }
  expected<std::uint64_t> checksum() override {
    const std::uint64_t n = model_.params().size();
    return kernels::fingerprint(model_.params(), 0) + kernels::fingerprint(optimizer_.first_moments(), n) +
           kernels::fingerprint(optimizer_.second_moments(), 2 * n);
  }
  expected<void> zero_grads() override {
    model_.zero_grads();
    return {};
  }
  expected<double> forward_backward(kernels::communicator& group, const kernels::ulysses_layout& layout,
                                    const kernels::local_inputs& inputs, float loss_scale) override {
    FLEXSP_TRY_ASSIGN(auto r, model_.forward_backward(group, layout, inputs, loss_scale));
    return r.loss_sum;
  }
  expected<void> all_reduce_gradients(kernels::communicator& world) override {
    return kernels::all_reduce_gradients(world, model_);
  }
  expected<void> broadcast(kernels::communicator& world, int root) override {
    FLEXSP_TRY(world.broadcast(model_.params(), root));
    FLEXSP_TRY(world.broadcast(optimizer_.first_moments(), root));
    FLEXSP_TRY(world.broadcast(optimizer_.second_moments(), root));
    FLEXSP_TRY_ASSIGN(auto steps, broadcast_steps(world, root, optimizer_.steps()));
    optimizer_.set_steps(steps);
    return {};
  }
  expected<void> optimizer_step(float lr) override {
    optimizer_.hyper_parameters().lr = lr;
    optimizer_.step(model_, max_grad_norm_);
    return {};
  }
  expected<void> save(const std::string& path) override { return kernels::save_checkpoint(path, model_, optimizer_); }
  expected<void> load(const std::string& path) override { return kernels::load_checkpoint(path, model_, optimizer_); }

private:
  kernels::gpt_model model_;
  kernels::adamw_optimizer optimizer_;
  double max_grad_norm_;
};

/// The state lives on the GPU; `host_` and `host_opt_` are staging copies in the same layout,
/// refreshed for checkpoints and for collectives that need host buffers. Checksums are
/// computed on the GPU.
class gpu_replica final : public replica {
public:
  gpu_replica(std::shared_ptr<kernels::gpu::device> dev, kernels::gpt_model host, kernels::gpu::gpt_replica r,
              const optimizer_settings& opt)
      : dev_{std::move(dev)}, host_{std::move(host)}, host_opt_{host_, hyper_of(opt)}, gpu_{std::move(r)},
        hyper_{hyper_of(opt)}, max_grad_norm_{opt.max_grad_norm}, staging_(host_.params().size()) {}

  std::string_view backend() const noexcept override { return "cuda"; }
  std::uint64_t parameters() const noexcept override { return host_.params().size(); }
  std::int64_t optimizer_steps() const noexcept override { return gpu_.steps(); }
  expected<std::uint64_t> checksum() override { return gpu_.fingerprint(); }
  expected<void> zero_grads() override { return gpu_.zero_grads(); }
  expected<double> forward_backward(kernels::communicator& group, const kernels::ulysses_layout& layout,
                                    const kernels::local_inputs& inputs, float loss_scale) override {
    FLEXSP_TRY_ASSIGN(const double loss, gpu_.forward_backward(group, layout, inputs, loss_scale));
    FLEXSP_TRY(dev_->synchronize());
    return loss;
  }
  expected<void> all_reduce_gradients(kernels::communicator& world) override {
    if (world.reduces_device_buffers()) {
      FLEXSP_TRY(world.all_reduce_sum(std::span<float>{gpu_.grads(), staging_.size()}));
      return dev_->synchronize();
    }
    FLEXSP_TRY(gpu_.download_grads(staging_));
    FLEXSP_TRY(world.all_reduce_sum(staging_));
    return gpu_.upload_grads(staging_);
  }
  expected<void> broadcast(kernels::communicator& world, int root) override {
    FLEXSP_TRY_ASSIGN(auto steps, broadcast_steps(world, root, gpu_.steps()));
    const std::size_t n = staging_.size();
    if (world.reduces_device_buffers()) {
      FLEXSP_TRY(world.broadcast(std::span<float>{gpu_.params(), n}, root));
      FLEXSP_TRY(world.broadcast(std::span<float>{gpu_.first_moments(), n}, root));
      FLEXSP_TRY(world.broadcast(std::span<float>{gpu_.second_moments(), n}, root));
      FLEXSP_TRY(dev_->synchronize());
      gpu_.set_steps(steps);
      return {};
    }
    FLEXSP_TRY(download());
    FLEXSP_TRY(world.broadcast(host_.params(), root));
    FLEXSP_TRY(world.broadcast(host_opt_.first_moments(), root));
    FLEXSP_TRY(world.broadcast(host_opt_.second_moments(), root));
    return gpu_.upload_state(host_.params(), host_opt_.first_moments(), host_opt_.second_moments(), steps);
  }
  expected<void> optimizer_step(float lr) override {
    hyper_.lr = lr;
    FLEXSP_TRY(gpu_.optimizer_step(hyper_, max_grad_norm_));
    return dev_->synchronize();
  }
  expected<void> save(const std::string& path) override {
    FLEXSP_TRY(download());
    return kernels::save_checkpoint(path, host_, host_opt_);
  }
  expected<void> load(const std::string& path) override {
    FLEXSP_TRY(kernels::load_checkpoint(path, host_, host_opt_));
    return gpu_.upload_state(host_.params(), host_opt_.first_moments(), host_opt_.second_moments(),
                             host_opt_.steps());
  }

private:
  /// Copies parameters, moments and the step count of the GPU state to the host staging copies.
  expected<void> download() {
    FLEXSP_TRY(gpu_.download_params(host_.params()));
    FLEXSP_TRY(gpu_.download_moments(host_opt_.first_moments(), host_opt_.second_moments()));
    host_opt_.set_steps(gpu_.steps());
    return {};
  }

  std::shared_ptr<kernels::gpu::device> dev_;
  kernels::gpt_model host_;
  kernels::adamw_optimizer host_opt_;
  kernels::gpu::gpt_replica gpu_;  // after dev_: destroyed (frees device memory) before the device
  kernels::adamw_params hyper_;
  double max_grad_norm_;
  std::vector<float> staging_;  // gradients on their way through a host all-reduce
};

}  // namespace

expected<std::unique_ptr<replica>> make_cpu_replica(const model_shape& shape, std::uint64_t seed,
                                                    const optimizer_settings& opt) {
  if (const auto why = cuda_only_reason(shape); !why.empty())
    return make_error(errc::invalid_argument, "{}; this one is a CPU device", why);
  FLEXSP_TRY_ASSIGN(auto model, kernels::gpt_model::create(config_of(shape), seed));
  return std::unique_ptr<replica>{std::make_unique<cpu_replica>(std::move(model), opt)};
}

expected<std::unique_ptr<replica>> make_gpu_replica(std::shared_ptr<kernels::gpu::device> device,
                                                    const model_shape& shape, std::uint64_t seed,
                                                    const optimizer_settings& opt) {
  if (!device) return make_error(errc::invalid_argument, "no GPU device to place the replica on");
  FLEXSP_TRY_ASSIGN(auto model, kernels::gpt_model::create(config_of(shape), seed));
  FLEXSP_TRY_ASSIGN(auto on_gpu, kernels::gpu::gpt_replica::create(*device, model));
  if (shape.attention == attention_precision::bf16) on_gpu.set_attention_type(kernels::gpu::dtype::bf16);
  if (shape.matmul == matmul_precision::tf32) on_gpu.set_gemm_math(kernels::gpu::gemm_math::tf32);
  return std::unique_ptr<replica>{
      std::make_unique<gpu_replica>(std::move(device), std::move(model), std::move(on_gpu), opt)};
}

}  // namespace flexsp::actors
