#include "flexsp/actors/device_trainer.hpp"

#include <atomic>
#include <chrono>
#include <cstring>
#include <optional>

#include "flexsp/actors/client.hpp"
#include "flexsp/actors/kv_rendezvous.hpp"
#include "flexsp/core/log.hpp"
#include "flexsp/kernels/gloo_communicator.hpp"
#include "flexsp/kernels/model.hpp"

namespace flexsp::actors {

using Clock = std::chrono::steady_clock;

std::uint64_t fnv1a(std::span<const float> data, std::uint64_t seed) noexcept {
  std::uint64_t h = seed;
  const auto* p = reinterpret_cast<const unsigned char*>(data.data());
  for (std::size_t i = 0; i < data.size_bytes(); ++i) {
    h ^= p[i];
    h *= 1099511628211ull;
  }
  return h;
}

namespace {

double ms_since(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

/// A full replica: parameters, gradients and AdamW moments. The only state a step touches.
class replica_state {
public:
  static expected<std::unique_ptr<replica_state>> create(const model_shape& shape, std::uint64_t seed,
                                                         const optimizer_settings& opt) {
    kernels::gpt_config cfg{.layers = shape.layers, .d_model = shape.d_model, .heads = shape.heads,
                            .vocab = shape.vocab, .max_positions = shape.max_seq};
    FLEXSP_TRY_ASSIGN(auto model, kernels::gpt_model::create(cfg, seed));
    auto out = std::unique_ptr<replica_state>{new replica_state{std::move(model), opt}};
    return out;
  }

  kernels::gpt_model& model() { return model_; }
  kernels::adamw_optimizer& optimizer() { return optimizer_; }
  double max_grad_norm() const { return max_grad_norm_; }

  std::uint64_t checksum() const {
    auto h = fnv1a(model_.params());
    h = fnv1a(optimizer_.first_moments(), h);
    return fnv1a(optimizer_.second_moments(), h);
  }

  /// Copies the state of `root` to every member of `world`.
  expected<void> broadcast(kernels::communicator& world, int root) {
    FLEXSP_TRY(world.broadcast(model_.params(), root));
    FLEXSP_TRY(world.broadcast(optimizer_.first_moments(), root));
    FLEXSP_TRY(world.broadcast(optimizer_.second_moments(), root));
    std::vector<float> steps{static_cast<float>(optimizer_.steps())};
    FLEXSP_TRY(world.broadcast(steps, root));
    optimizer_.set_steps(static_cast<std::int64_t>(steps[0]));
    return {};
  }

private:
  replica_state(kernels::gpt_model m, const optimizer_settings& opt)
      : model_{std::move(m)},
        optimizer_{model_, kernels::adamw_params{.lr = opt.lr, .beta1 = opt.beta1, .beta2 = opt.beta2, .eps = opt.eps,
                                                 .weight_decay = opt.weight_decay}},
        max_grad_norm_{opt.max_grad_norm} {}
  kernels::gpt_model model_;
  kernels::adamw_optimizer optimizer_;
  double max_grad_norm_;
};

}  // namespace

struct device_trainer::job {
  join_job setup;
  std::atomic<std::uint64_t> min_attempt{0};
  std::atomic<std::uint64_t> current_attempt{0};
  std::unique_ptr<replica_state> state;
  std::unique_ptr<kv_rendezvous_store> store;
  kernels::gloo_options gloo;
  // One cache per communicator epoch. A retired cache is aborted and destroyed on a thread of its
  // own: aborting waits for the cache's lock, which a rendezvous in progress may hold for a while.
  std::mutex cache_mutex;
  std::shared_ptr<kernels::communicator_cache> cache;
  std::uint64_t cache_epoch = ~std::uint64_t{0};
  // An address, not a remote_ref: a job may outlive its actor host (an abort thread holds it),
  // and a remote_ref would keep the host alive past its event loop.
  remote_address scheduler;
  std::weak_ptr<actor_host> host;
  bool ready = false;
  std::uint64_t ready_step = 0;
  std::uint64_t ready_attempt = 0;

  bool aborted(std::uint64_t attempt) const { return attempt < min_attempt.load(); }

  static void retire(std::shared_ptr<kernels::communicator_cache> c) {
    if (c) std::thread{[c = std::move(c)]() mutable {
      c->abort_all();
      c.reset();
    }}.detach();
  }
  /// The cache of `epoch`, replacing (and retiring) an older one.
  std::shared_ptr<kernels::communicator_cache> cache_for(std::uint64_t epoch) {
    std::lock_guard lock{cache_mutex};
    if (!cache || cache_epoch != epoch) {
      retire(std::move(cache));
      cache = std::make_shared<kernels::communicator_cache>(*store, static_cast<int>(setup.device), gloo);
      cache_epoch = epoch;
    }
    return cache;
  }
  void abort_communicators() {
    std::shared_ptr<kernels::communicator_cache> old;
    {
      std::lock_guard lock{cache_mutex};
      old = std::move(cache);
    }
    retire(std::move(old));
  }

  template <class M>
  void reply(const M& m) const {
    if (auto h = host.lock()) (void)h->ref(scheduler).tell(m);
  }
};

device_trainer::device_trainer(device_context context) : context_{std::move(context)} {
  worker_ = std::thread{[this]() { run_worker(); }};
}

device_trainer::~device_trainer() {
  {
    std::lock_guard lock{mutex_};
    stopping_ = true;
    for (auto& [_, j] : jobs_) {
      j->min_attempt = ~std::uint64_t{0};
      j->abort_communicators();
    }
  }
  wake_.notify_all();
  if (worker_.joinable()) worker_.join();
}

void device_trainer::post(std::function<void()> work) {
  {
    std::lock_guard lock{mutex_};
    if (stopping_) return;
    queue_.push_back(std::move(work));
  }
  wake_.notify_one();
}

void device_trainer::run_worker() {
  for (;;) {
    std::function<void()> work;
    {
      std::unique_lock lock{mutex_};
      wake_.wait(lock, [this]() { return stopping_ || !queue_.empty(); });
      if (stopping_) return;
      work = std::move(queue_.front());
      queue_.pop_front();
    }
    work();
  }
}

std::uint64_t device_trainer::committed_steps() const { return committed_; }

std::shared_ptr<device_trainer::job> device_trainer::find(const std::string& id) {
  std::lock_guard lock{mutex_};
  auto it = jobs_.find(id);
  return it == jobs_.end() ? nullptr : it->second;
}

expected<cluster_client*> device_trainer::client() {
  if (client_ && client_->connected()) return client_.get();
  FLEXSP_TRY_ASSIGN(client_, cluster_client::connect(context_.head, context_.transport));
  return client_.get();
}

void device_trainer::handle(join_job m) {
  post([this, m = std::move(m)]() {
    auto host = context_.host.lock();
    if (!host) return;
    device_state reply{m.device, 0, 0, 0, m.job_id, m.tag, {}};
    auto scheduler = host->ref({m.scheduler_host, m.scheduler_actor});
    auto made = [&]() -> expected<std::shared_ptr<job>> {
      FLEXSP_TRY_ASSIGN(auto* c, client());
      auto j = std::make_shared<job>();
      j->setup = m;
      j->scheduler = scheduler.address();
      j->host = context_.host;
      FLEXSP_TRY_ASSIGN(j->state, replica_state::create(m.model, m.seed, m.optimizer));
      if (!m.resume_from.empty())
        FLEXSP_TRY(kernels::load_checkpoint(m.resume_from, j->state->model(), j->state->optimizer()));
      job* raw = j.get();
      j->store = std::make_unique<kv_rendezvous_store>(*c, "job/" + m.job_id,
                                                       [raw]() { return raw->aborted(raw->current_attempt.load()); });
      j->gloo = kernels::gloo_options{.hostname = m.collective_host,
                                      .timeout = std::chrono::milliseconds{m.collective_timeout_ms}};
      return j;
    }();
    if (!made) {
      reply.error = made.error().to_string();
      log::get("device")->warn("{}: cannot join job {}: {}", context_.device_name, m.job_id, reply.error);
    } else {
      auto& st = *(*made)->state;
      reply.checksum = st.checksum();
      reply.optimizer_steps = static_cast<std::uint64_t>(st.optimizer().steps());
      reply.parameters = st.model().params().size();
      std::lock_guard lock{mutex_};
      if (auto old = jobs_.find(m.job_id); old != jobs_.end()) old->second->abort_communicators();
      jobs_[m.job_id] = *made;
      log::get("device")->debug("{}: joined job {} as device {}", context_.device_name, m.job_id, m.device);
    }
    (void)scheduler.tell(reply);
  });
}

void device_trainer::handle(step_plan m) {
  post([this, m = std::move(m)]() {
    auto j = find(m.job_id);
    if (!j || j->aborted(m.attempt)) return;
    j->current_attempt = m.attempt;
    j->ready = false;
    const auto me = j->setup.device;
    auto fail = [&](const error& e) {
      if (!j->aborted(m.attempt))
        log::get("device")->warn("{}: step {} attempt {} failed: {}", context_.device_name, m.step, m.attempt,
                                 e.to_string());
      j->reply(step_failed{m.job_id, m.step, m.attempt, me, e.to_string()});
    };
    auto run = [&]() -> expected<grad_ready> {
      auto cache = j->cache_for(m.comm_epoch);
      grad_ready out{m.job_id, m.step, m.attempt, me, 0, 0, 0, 0, {}};
      auto& st = *j->state;
      const std::vector<int> world{m.world.begin(), m.world.end()};
      std::shared_ptr<kernels::communicator> world_comm;
      const auto t_sync = Clock::now();
      if (!m.calibrate && world.size() > 1) {
        FLEXSP_TRY_ASSIGN(world_comm, cache->get(world, m.comm_epoch));
        if (m.sync_source >= 0) {
          const int root = kernels::communicator_cache::rank_in(world, static_cast<int>(m.sync_source));
          if (root < 0) return make_error(errc::invalid_argument, "sync source {} is not in the world", m.sync_source);
          FLEXSP_TRY(st.broadcast(*world_comm, root));
        }
      }
      out.comm_ms += ms_since(t_sync);
      out.checksum = st.checksum();
      st.model().zero_grads();
      double loss_sum = 0;
      const float scale = m.global_tokens > 0 ? 1.0f / static_cast<float>(m.global_tokens) : 1.0f;
      for (std::uint32_t i = 0; i < m.micro_batches.size(); ++i) {
        const auto& mb = m.micro_batches[i];
        if (mb.group.empty()) continue;
        if (j->aborted(m.attempt)) return make_error(errc::cancelled, "attempt {} aborted", m.attempt);
        const auto t0 = Clock::now();
        const std::vector<int> group{mb.group.begin(), mb.group.end()};
        FLEXSP_TRY_ASSIGN(auto comm, cache->get(group, m.comm_epoch));
        std::vector<std::int64_t> lengths{mb.lengths.begin(), mb.lengths.end()};
        std::vector<std::vector<std::int32_t>> seqs;
        std::size_t pos = 0;
        std::uint64_t tokens = 0;
        for (auto l : mb.lengths) {
          if (pos + l + 1 > mb.tokens.size())
            return make_error(errc::invalid_argument, "micro-batch {} carries too few token ids", i);
          seqs.emplace_back(mb.tokens.begin() + static_cast<std::ptrdiff_t>(pos),
                            mb.tokens.begin() + static_cast<std::ptrdiff_t>(pos + l + 1));
          pos += l + 1;
          tokens += l;
        }
        FLEXSP_TRY_ASSIGN(auto layout, kernels::ulysses_layout::make(std::move(lengths), comm->size(), comm->rank(),
                                                                     st.model().config().heads));
        FLEXSP_TRY_ASSIGN(auto inputs, kernels::shard_inputs(layout, seqs));
        FLEXSP_TRY_ASSIGN(auto res, st.model().forward_backward(*comm, layout, inputs, scale));
        loss_sum += res.loss_sum;
        const double ms = ms_since(t0);
        out.compute_ms += ms;
        out.groups.push_back({i, static_cast<std::uint32_t>(group.size()), tokens, ms});
      }
      if (!m.calibrate) {
        const auto t1 = Clock::now();
        if (world_comm) {
          FLEXSP_TRY(kernels::all_reduce_gradients(*world_comm, st.model()));
          std::vector<float> loss{static_cast<float>(loss_sum)};
          FLEXSP_TRY(world_comm->all_reduce_sum(loss));
          loss_sum = loss[0];
        }
        out.comm_ms += ms_since(t1);
        j->ready = true;
        j->ready_step = m.step;
        j->ready_attempt = m.attempt;
      }
      out.loss_sum = loss_sum;
      return out;
    };
    auto r = run();
    if (!r) {
      fail(r.error());
      return;
    }
    j->reply(*r);
  });
}

void device_trainer::handle(commit_step m) {
  post([this, m = std::move(m)]() {
    auto j = find(m.job_id);
    if (!j) return;
    if (!j->ready || j->ready_step != m.step || j->ready_attempt != m.attempt) {
      log::get("device")->error("{}: commit of step {} attempt {} without its gradients (ready: step {} attempt {})",
                                context_.device_name, m.step, m.attempt, j->ready_step, j->ready_attempt);
      j->reply(step_failed{m.job_id, m.step, m.attempt, j->setup.device, "commit without gradients"});
      return;
    }
    j->ready = false;
    auto& st = *j->state;
    st.optimizer().hyper_parameters().lr = m.lr;
    st.optimizer().step(st.model(), st.max_grad_norm());
    ++committed_;
  });
}

void device_trainer::handle(abort_attempts m) {
  auto j = find(m.job_id);
  if (!j) return;
  auto prev = j->min_attempt.load();
  while (prev < m.attempt && !j->min_attempt.compare_exchange_weak(prev, m.attempt)) {
  }
  if (j->current_attempt.load() < m.attempt) j->abort_communicators();
}

void device_trainer::handle(save_state m) {
  post([this, m = std::move(m)]() {
    auto j = find(m.job_id);
    if (!j) return;
    auto& st = *j->state;
    device_state reply{j->setup.device, st.checksum(), static_cast<std::uint64_t>(st.optimizer().steps()),
                       st.model().params().size(), m.job_id, m.tag, {}};
    if (auto r = kernels::save_checkpoint(m.path, st.model(), st.optimizer()); !r) reply.error = r.error().to_string();
    j->reply(reply);
  });
}

void device_trainer::handle(query_state m) {
  post([this, m = std::move(m)]() {
    auto j = find(m.job_id);
    if (!j) return;
    auto& st = *j->state;
    j->reply(device_state{j->setup.device, st.checksum(),
                                         static_cast<std::uint64_t>(st.optimizer().steps()),
                                         st.model().params().size(), m.job_id, m.tag, {}});
  });
}

void device_trainer::handle(leave_job m) {
  if (auto j = find(m.job_id)) {
    j->min_attempt = ~std::uint64_t{0};
    j->abort_communicators();
  }
  post([this, id = std::move(m.job_id)]() {
    std::lock_guard lock{mutex_};
    jobs_.erase(id);
  });
}

}  // namespace flexsp::actors
