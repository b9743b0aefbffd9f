#include "replica.hpp"

#include "flexsp/actors/job_spec.hpp"

namespace flexsp::actors {

namespace {

kernels::adamw_params hyper_of(const optimizer_settings& opt) {
  return kernels::adamw_params{.lr = opt.lr, .beta1 = opt.beta1, .beta2 = opt.beta2, .eps = opt.eps,
                               .weight_decay = opt.weight_decay};
}

}  // namespace

replica::replica(kernels::model m, const optimizer_settings& opt)
    : model_{std::move(m)}, hyper_{hyper_of(opt)}, max_grad_norm_{opt.max_grad_norm} {}

expected<std::unique_ptr<replica>> replica::create(std::shared_ptr<kernels::device> device, const model_shape& shape,
                                                   std::uint64_t seed, const optimizer_settings& opt) {
  if (!device) return make_error(errc::invalid_argument, "no device to place the replica on");
  if (device->host_memory())
    if (const auto why = cuda_only_reason(shape); !why.empty())
      return make_error(errc::invalid_argument, "{}; this one is a CPU device", why);
  FLEXSP_TRY_ASSIGN(auto m, kernels::model::create(std::move(device), kernel_config(shape), seed));
  if (shape.attention == attention_precision::bf16) m.set_attention_type(kernels::dtype::bf16);
  if (shape.matmul == matmul_precision::tf32) m.set_gemm_math(kernels::gemm_math::tf32);
  return std::unique_ptr<replica>{new replica{std::move(m), opt}};
}

expected<double> replica::forward_backward(kernels::communicator& group, const kernels::ulysses_layout& layout,
                                           const kernels::local_inputs& inputs, float loss_scale) {
  FLEXSP_TRY_ASSIGN(auto r, model_.forward_backward(group, layout, inputs, loss_scale));
  return r.loss_sum;
}

expected<void> replica::optimizer_step(float lr) {
  hyper_.lr = lr;
  FLEXSP_TRY(model_.optimizer_step(hyper_, max_grad_norm_));
  return model_.dev().synchronize();
}

}  // namespace flexsp::actors
