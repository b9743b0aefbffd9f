#include "replica.hpp"

#include <filesystem>

#include "flexsp/actors/job_spec.hpp"

namespace flexsp::actors {

namespace {

kernels::adamw_params hyper_of(const optimizer_settings& opt) {
  return kernels::adamw_params{.lr = opt.lr, .beta1 = opt.beta1, .beta2 = opt.beta2, .eps = opt.eps,
                               .weight_decay = opt.weight_decay};
}

}  // namespace

replica::replica(std::shared_ptr<kernels::device> device, const model_shape& shape, std::uint64_t seed,
                 const optimizer_settings& opt, bool sharded, std::string resume_from)
    : device_{std::move(device)},
      shape_{shape},
      config_{kernel_config(shape)},
      seed_{seed},
      sharded_{sharded},
      resume_from_{std::move(resume_from)},
      hyper_{hyper_of(opt)},
      max_grad_norm_{opt.max_grad_norm} {
  if (resume_from_.empty()) recipe_steps_ = 0;  // the seed's state: no optimizer step
}

expected<kernels::model> replica::make_model(int count, int index, bool empty) const {
  FLEXSP_TRY_ASSIGN(auto m, kernels::model::create(device_, config_, seed_, kernels::shard_spec{count, index},
                                                   empty || !resume_from_.empty()));
  if (shape_.attention == attention_precision::bf16) m.set_attention_type(kernels::dtype::bf16);
  if (shape_.matmul == matmul_precision::tf32) m.set_gemm_math(kernels::gemm_math::tf32);
  if (!empty && !resume_from_.empty()) FLEXSP_TRY(kernels::load_checkpoint(resume_from_, m));
  return m;
}

expected<std::unique_ptr<replica>> replica::create(std::shared_ptr<kernels::device> device, const model_shape& shape,
                                                   std::uint64_t seed, const optimizer_settings& opt, bool sharded,
                                                   const std::string& resume_from) {
  if (!device) return make_error(errc::invalid_argument, "no device to place the replica on");
  if (device->host_memory())
    if (const auto why = cuda_only_reason(shape); !why.empty())
      return make_error(errc::invalid_argument, "{}; this one is a CPU device", why);
  FLEXSP_TRY(kernel_config(shape).validate());
  std::unique_ptr<replica> r{new replica{std::move(device), shape, seed, opt, sharded, resume_from}};
  if (!sharded) {
    FLEXSP_TRY_ASSIGN(auto m, r->make_model(1, 0, false));
    r->model_.emplace(std::move(m));
  } else if (!resume_from.empty()) {
    FLEXSP_TRY_ASSIGN(const auto saved, kernels::read_checkpoint_config(resume_from));
    if (saved != r->config_)
      return make_error(errc::invalid_argument, "checkpoint {} holds another model than the job's", resume_from);
  }
  return r;
}

expected<std::uint64_t> replica::checksum() const {
  if (!model_) return std::uint64_t{0};
  return model_->fingerprint();
}

expected<void> replica::prepare(kernels::communicator* world, int count, int index, std::span<const int> sources) {
  if (!sharded_) return make_error(errc::invalid_argument, "a replica of an unsharded job keeps the whole model");
  auto is = [](const std::optional<kernels::model>& m, int n, int i) {
    return m && m->shards().count() == n && m->shards().index() == i;
  };
  // Holds shard `i` of `n`: the one held, the one a transfer of the uncommitted step replaced (an
  // attempt that failed after its transfer: the scheduler still counts on the old shard), or one
  // cut from the recipe when what is held is the recipe's state.
  auto hold = [&](int n, int i) -> expected<void> {
    if (is(model_, n, i)) return {};
    if (is(previous_, n, i)) {
      std::swap(model_, previous_);
      return {};
    }
    if (model_ && !pristine())
      return make_error(errc::failed, "holds shard {} of {} (trained), the plan wants shard {} of {} without a transfer",
                        model_->shards().index(), model_->shards().count(), i, n);
    model_.reset();
    previous_.reset();
    FLEXSP_TRY_ASSIGN(auto m, make_model(n, i, false));
    if (!recipe_steps_) recipe_steps_ = m.steps();
    model_.emplace(std::move(m));
    return {};
  };
  if (sources.empty()) return hold(count, index);
  if (world == nullptr) return make_error(errc::invalid_argument, "a shard transfer needs the world's communicator");
  const int old_count = static_cast<int>(sources.size());
  for (int r = 0; r < old_count; ++r)
    if (sources[static_cast<std::size_t>(r)] == world->rank()) FLEXSP_TRY(hold(old_count, r));
  // The old shard stays allocated until the step commits: the transfer reads it, and an attempt
  // that fails after the transfer may be re-run with it as a source again.
  FLEXSP_TRY_ASSIGN(auto fresh, make_model(count, index, true));
  FLEXSP_TRY(kernels::transfer_shards(*world, sources, model_ ? &*model_ : nullptr, fresh));
  previous_ = std::move(model_);
  model_.emplace(std::move(fresh));
  return {};
}

bool replica::pristine() const noexcept { return model_ && recipe_steps_ && model_->steps() == *recipe_steps_; }

expected<double> replica::forward_backward(kernels::communicator& group, const kernels::ulysses_layout& layout,
                                           const kernels::local_inputs& inputs, float loss_scale,
                                           kernels::communicator* shards) {
  kernels::forward_options options;
  options.shard_group = shards;
  FLEXSP_TRY_ASSIGN(auto r, model_->forward_backward(group, layout, inputs, loss_scale, options));
  return r.loss_sum;
}

expected<void> replica::settle_gradient_norm(kernels::communicator* shards) {
  FLEXSP_TRY_ASSIGN(norm_, model_->gradient_norm(shards));
  return {};
}

expected<void> replica::optimizer_step(float lr) {
  hyper_.lr = lr;
  if (!norm_) FLEXSP_TRY(settle_gradient_norm(nullptr));
  const double norm = *norm_;
  norm_.reset();
  FLEXSP_TRY(model_->optimizer_step(hyper_, max_grad_norm_, norm));
  previous_.reset();
  return model_->dev().synchronize();
}

expected<void> replica::save(const std::string& path) const {
  if (!model_) return make_error(errc::failed, "no state to save yet");
  if (!model_->shards().sharded()) return kernels::save_checkpoint(path, *model_);
  std::error_code ec;
  std::filesystem::create_directories(path, ec);
  if (ec) return make_error(errc::io, "cannot create checkpoint directory {}: {}", path, ec.message());
  return kernels::save_checkpoint(std::filesystem::path{path} /
                                      kernels::shard_file_name(model_->shards().count(), model_->shards().index()),
                                  *model_);
}

}  // namespace flexsp::actors
