#include "flexsp/actors/device_trainer.hpp"

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <future>
#include <optional>
#include <thread>

#include "flexsp/actors/client.hpp"
#include "flexsp/actors/kv_rendezvous.hpp"
#include "flexsp/actors/scheduler_actor.hpp"
#include "flexsp/core/log.hpp"
#include "flexsp/kernels/gloo_communicator.hpp"
#include "flexsp/kernels/gpu.hpp"
#include "flexsp/kernels/model.hpp"
#include "flexsp/kernels/nccl_collectives.hpp"
#include "replica.hpp"

namespace flexsp::actors {

using Clock = std::chrono::steady_clock;

namespace {

double ms_since(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

/// One piece of blocking work.
struct work_item {
  std::function<void()> run;
};

}  // namespace

/// Runs the work it is sent, one item at a time (spawned blocking).
class work_queue : public core::actor<work_queue> {
public:
  using interface = core::interface<work_item>;
  void handle(work_item w) { w.run(); }
};

namespace {

/// How long a device keeps trying to answer its scheduler while the scheduler's host cannot be
/// reached (its head process is restarting, or the connection is being set up again).
constexpr std::chrono::milliseconds kReplyPatience{5000};

/// Tells `to` the message, trying again while its host is unreachable, up to kReplyPatience. A
/// device's answers are few and each one matters (a lost join or gradient report costs its
/// scheduler a timeout); it has nothing else to do meanwhile. Runs on the device's worker.
template <class M>
expected<void> tell_patiently(const core::actor_ref<scheduler_actor>& to, const M& m) {
  const auto deadline = Clock::now() + kReplyPatience;
  for (;;) {
    auto r = to.try_tell(m);
    if (r || r.error().kind() != errc::disconnected || Clock::now() >= deadline) return r;
    std::this_thread::sleep_for(std::chrono::milliseconds{50});
  }
}

}  // namespace

struct device_trainer::job {
  join_job setup;
  std::atomic<std::uint64_t> min_attempt{0};
  std::atomic<std::uint64_t> current_attempt{0};
  std::atomic<std::uint64_t> latest_attempt{0};  // the highest attempt a plan arrived for (queued or running)
  std::unique_ptr<replica> state;
  std::unique_ptr<kv_rendezvous_store> store;
  /// Makes the communicator cache of a new epoch: Gloo over TCP, or NCCL on this device's GPU.
  std::function<std::shared_ptr<kernels::group_cache>()> make_cache;
  // One cache per communicator epoch. A retired cache is aborted and destroyed on a thread of its
  // own: aborting waits for the cache's lock, which a rendezvous in progress may hold for a while.
  std::mutex cache_mutex;
  std::shared_ptr<kernels::group_cache> cache;
  std::uint64_t cache_epoch = ~std::uint64_t{0};
  core::actor_ref<scheduler_actor> scheduler;  // a proxy; it does not keep the actor host alive
  core::actor_ref<work_queue> retirer;
  bool ready = false;
  std::uint64_t ready_step = 0;
  std::uint64_t ready_attempt = 0;

  bool aborted(std::uint64_t attempt) const { return attempt < min_attempt.load(); }

  void retire(std::shared_ptr<kernels::group_cache> c) {
    if (!c) return;
    auto item = work_item{[c]() mutable {
      c->abort_all();
      c.reset();
    }};
    if (retirer.valid() && retirer.try_tell(std::move(item))) return;
    c->abort_all();  // the retirer is gone (the device is stopping): tear down here
  }
  /// The cache of `epoch`, replacing (and retiring) an older one.
  std::shared_ptr<kernels::group_cache> cache_for(std::uint64_t epoch) {
    std::lock_guard lock{cache_mutex};
    if (!cache || cache_epoch != epoch) {
      retire(std::move(cache));
      cache = make_cache();
      cache_epoch = epoch;
    }
    return cache;
  }
  void abort_communicators() {
    std::shared_ptr<kernels::group_cache> old;
    {
      std::lock_guard lock{cache_mutex};
      old = std::move(cache);
    }
    retire(std::move(old));
  }

  template <class M>
  void reply(M m) const {
    if (auto r = tell_patiently(scheduler, m); !r)
      log::get("device")->warn("device {} cannot answer job {}: {}", setup.device, setup.job_id, r.error().message());
  }
};

namespace {

/// Raises `a` to `v` unless it already holds more.
void raise_to(std::atomic<std::uint64_t>& a, std::uint64_t v) {
  auto prev = a.load();
  while (prev < v && !a.compare_exchange_weak(prev, v)) {
  }
}

/// The DeviceState reply to request `tag`, after `action` on the replica; a failure of either
/// the action or the checksum is the reply's error.
template <class Action>
device_state state_of(device_trainer::job& j, std::uint64_t tag, Action&& action) {
  auto& st = *j.state;
  device_state reply{j.setup.device, 0, 0, st.parameters(), j.setup.job_id, tag, {}, st.memory_capacity()};
  const auto [count, index] = st.shard();
  reply.shard_count = static_cast<std::uint32_t>(count);
  reply.shard_index = static_cast<std::uint32_t>(index);
  expected<void> done = action(st);
  if (done) {
    if (auto sum = st.checksum())
      reply.checksum = *sum;
    else
      done = unexpected<error>{sum.error()};
  }
  reply.optimizer_steps = static_cast<std::uint64_t>(st.optimizer_steps());
  if (!done) reply.error = done.error().to_string();
  return reply;
}

}  // namespace

device_trainer::device_trainer(device_context context)
    : context_{std::move(context)}, name_{context_.device.to_string()} {
  FLEXSP_EXPECTS(context_.system != nullptr, "a device trainer needs an actor system");
  core::spawn_options o;
  o.blocking = true;
  o.name = "trainer:" + name_;
  worker_ = context_.system->spawn<work_queue>(o);
  o.name = "retirer:" + name_;
  retirer_ = context_.system->spawn<work_queue>(o);
}

device_trainer::~device_trainer() {
  {
    std::lock_guard lock{mutex_};
    for (auto& [_, j] : jobs_) {
      j->min_attempt = ~std::uint64_t{0};
      j->abort_communicators();
    }
  }
  // Queued work is dropped; the item running now returns once its collectives are aborted.
  std::vector<std::shared_ptr<std::promise<void>>> stopped;
  for (auto* a : {&worker_, &retirer_}) {
    auto done = std::make_shared<std::promise<void>>();
    context_.system->monitor(*a, [done](const core::down_msg&) { done->set_value(); });
    a->stop(core::stop_mode::discard);
    stopped.push_back(done);
  }
  for (auto& p : stopped) p->get_future().wait();
}

std::vector<std::string> device_trainer::jobs() const {
  std::lock_guard lock{mutex_};
  std::vector<std::string> out;
  for (const auto& [id, _] : jobs_) out.push_back(id);
  return out;
}

void device_trainer::post(std::function<void()> work) { worker_.tell(work_item{std::move(work)}); }

std::shared_ptr<device_trainer::job> device_trainer::find(const std::string& id) {
  std::lock_guard lock{mutex_};
  auto it = jobs_.find(id);
  return it == jobs_.end() ? nullptr : it->second;
}

expected<cluster_client*> device_trainer::client() {
  if (client_) return client_.get();  // its proxy reconnects by itself after a broken connection
  auto host = context_.host.lock();
  if (!host) return make_error(errc::cancelled, "{}: the node is stopping", name_);
  FLEXSP_TRY_ASSIGN(client_, cluster_client::attach(std::move(host), *context_.system, context_.head));
  return client_.get();
}

expected<std::shared_ptr<kernels::device>> device_trainer::compute_device() {
  if (device_) return device_;
  if (context_.device.kind != device_kind::cuda) {
    device_ = std::shared_ptr<kernels::device>{kernels::make_host_device()};
    return device_;
  }
  auto opened = kernels::gpu::open_device(static_cast<int>(context_.device.index));
  if (!opened) return make_error(opened.error().kind(), "{}: cannot open the GPU: {}", name_, opened.error().message());
  device_ = std::shared_ptr<kernels::device>{std::move(*opened)};
  log::get("device")->info("{}: compute backend cuda on {}", name_, device_->description());
  return device_;
}

void device_trainer::handle(join_job m) {
  // Joining a job this device is already in (its scheduler restarted, or dropped the device):
  // every attempt of the earlier membership is dead; a collective of one that is blocked now
  // returns at once instead of holding the queue until its timeout.
  if (auto old = find(m.job_id)) {
    old->min_attempt = ~std::uint64_t{0};
    old->abort_communicators();
  }
  post([this, m = std::move(m)]() {
    auto host = context_.host.lock();
    if (!host) return;
    device_state reply{m.device, 0, 0, 0, m.job_id, m.tag, {}, 0};
    auto scheduler = host->proxy<scheduler_actor>({m.scheduler_host, m.scheduler_actor});
    auto made = [&]() -> expected<std::shared_ptr<job>> {
      FLEXSP_TRY_ASSIGN(auto* c, client());
      auto j = std::make_shared<job>();
      j->setup = m;
      j->scheduler = scheduler;
      j->retirer = retirer_;
      const bool on_gpu = context_.device.kind == device_kind::cuda;

      job* raw = j.get();
      j->store = std::make_unique<kv_rendezvous_store>(*c, "job/" + m.job_id,
                                                       [raw]() { return raw->aborted(raw->current_attempt.load()); });
      const int me = static_cast<int>(m.device);
      const auto timeout = std::chrono::milliseconds{m.collective_timeout_ms};
      if (m.collectives == collective_library::nccl) {
        if (!on_gpu) return make_error(errc::invalid_argument, "{}: NCCL collectives need a CUDA device", name_);
        if (const auto nccl = kernels::query_nccl(); !nccl.available)
          return make_error(errc::unimplemented, "{}: NCCL collectives requested but unavailable: {}", name_, nccl.reason);
        const int cuda = static_cast<int>(context_.device.index);
        j->make_cache = [raw, me, cuda, timeout]() -> std::shared_ptr<kernels::group_cache> {
          return std::make_shared<kernels::nccl_communicator_cache>(*raw->store, me, cuda,
                                                                    kernels::nccl_options{.timeout = timeout});
        };
      } else {
        // Groups whose devices all live in this process exchange through memory, unless
        // FLEXSP_IN_PROCESS_COLLECTIVES=0 sends them over Gloo's TCP too.
        const char* in_process = std::getenv("FLEXSP_IN_PROCESS_COLLECTIVES");
        const kernels::gloo_options gloo{.hostname = m.collective_host,
                                         .timeout = timeout,
                                         .in_process = in_process == nullptr || std::string_view{in_process} != "0",
                                         .cancelled = [raw]() { return raw->aborted(raw->current_attempt.load()); }};
        j->make_cache = [raw, me, gloo]() -> std::shared_ptr<kernels::group_cache> {
          return std::make_shared<kernels::communicator_cache>(*raw->store, me, gloo);
        };
      }
      // Joining a job again (its node was lost and came back): keep the replica, which still
      // holds the last state this device committed; the join reply reports it, and the scheduler
      // either adopts it or overwrites it from a live replica.
      if (m.resume_from.empty()) {
        std::lock_guard lock{mutex_};
        if (auto old = jobs_.find(m.job_id); old != jobs_.end() && old->second->state &&
                                             old->second->setup.seed == m.seed &&
                                             old->second->setup.model == m.model && old->second->setup.optimizer == m.optimizer)
          j->state = std::move(old->second->state);
      }
      if (j->state && j->state->sharded() != m.sharded) j->state.reset();
      if (!j->state) {
        FLEXSP_TRY_ASSIGN(auto dev, compute_device());
        FLEXSP_TRY_ASSIGN(j->state, replica::create(std::move(dev), m.model, m.seed, m.optimizer, m.sharded,
                                                    m.resume_from));
      }
      return j;
    }();
    if (made)
      reply = state_of(**made, m.tag, [](replica&) { return expected<void>{}; });
    else
      reply.error = made.error().to_string();
    if (!reply.error.empty()) {
      log::get("device")->warn("{}: cannot join job {}: {}", name_, m.job_id, reply.error);
    } else {
      auto& st = *(*made)->state;
      std::lock_guard lock{mutex_};
      if (auto old = jobs_.find(m.job_id); old != jobs_.end()) old->second->abort_communicators();
      jobs_[m.job_id] = *made;
      log::get("device")->debug("{}: joined job {} as device {} ({} replica, {} collectives)", name_, m.job_id,
                                m.device, st.backend(), to_string(m.collectives));
    }
    if (auto r = tell_patiently(scheduler, reply); !r)
      log::get("device")->warn("{}: cannot answer job {}: {}", name_, m.job_id, r.error().message());
  });
}

void device_trainer::handle(step_plan m) {
  if (auto j = find(m.job_id)) raise_to(j->latest_attempt, m.attempt);
  post([this, m = std::move(m)]() {
    auto j = find(m.job_id);
    if (!j || j->aborted(m.attempt)) return;
    j->current_attempt = m.attempt;
    j->ready = false;
    const auto me = j->setup.device;
    auto fail = [&](const error& e) {
      if (!j->aborted(m.attempt))
        log::get("device")->warn("{}: step {} attempt {} failed: {}", name_, m.step, m.attempt,
                                 e.to_string());
      j->reply(step_failed{m.job_id, m.step, m.attempt, me, e.to_string()});
    };
    auto run = [&]() -> expected<grad_ready> {
      auto cache = j->cache_for(m.comm_epoch);
      grad_ready out{m.job_id, m.step, m.attempt, me, 0, 0, 0, 0, {}, 0};
      auto& st = *j->state;
      st.reset_peak_memory();
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
      // Sharded states: the shard group's communicator (a second one: its gathers run on a second
      // thread beside the SP groups' exchanges), the replicas of this shard, and this device's
      // shard, cut from its recipe or received by transfer.
      std::shared_ptr<kernels::communicator> shard_comm, replica_comm;
      const bool sharded = !m.shard_group.empty();
      if (sharded) {
        const std::vector<int> shard_group{m.shard_group.begin(), m.shard_group.end()};
        const std::vector<int> replicas{m.replica_group.begin(), m.replica_group.end()};
        const int index = kernels::communicator_cache::rank_in(shard_group, static_cast<int>(me));
        if (index < 0) return make_error(errc::invalid_argument, "device {} is not in its shard group", me);
        FLEXSP_TRY_ASSIGN(shard_comm, cache->get(shard_group, kernels::second_channel(m.comm_epoch)));
        if (replicas.size() > 1) {
          FLEXSP_TRY_ASSIGN(replica_comm, cache->get(replicas, m.comm_epoch));
        }
        std::vector<int> sources;
        for (auto d : m.sync_shards) {
          const int r = kernels::communicator_cache::rank_in(world, static_cast<int>(d));
          if (r < 0) return make_error(errc::invalid_argument, "shard source {} is not in the world", d);
          sources.push_back(r);
        }
        if (!sources.empty() && !world_comm) {
          FLEXSP_TRY_ASSIGN(world_comm, cache->get(world, m.comm_epoch));
        }
        const auto t_prep = Clock::now();
        FLEXSP_TRY(st.prepare(world_comm.get(), static_cast<int>(shard_group.size()), index, sources));
        out.comm_ms += ms_since(t_prep);
        // The group's state checksum: every shard's fingerprint, in shard order.
        FLEXSP_TRY_ASSIGN(out.shard_checksum, st.checksum());
        float mine[2];
        std::memcpy(mine, &out.shard_checksum, sizeof mine);
        std::vector<float> all(2 * shard_group.size());
        FLEXSP_TRY(shard_comm->all_gather(mine, all));
        std::vector<std::uint64_t> sums(shard_group.size());
        std::memcpy(sums.data(), all.data(), sums.size() * sizeof(std::uint64_t));
        out.checksum = kernels::combine_fingerprints(sums);
      } else {
        FLEXSP_TRY_ASSIGN(out.checksum, st.checksum());
      }
      FLEXSP_TRY(st.zero_grads());
      (void)st.take_shard_comm_seconds();
      double loss_sum = 0;
      const float scale = m.global_tokens > 0 ? 1.0f / static_cast<float>(m.global_tokens) : 1.0f;
      for (std::uint32_t i = 0; i < m.micro_batches.size(); ++i) {
        const auto& mb = m.micro_batches[i];
        if (j->aborted(m.attempt)) return make_error(errc::cancelled, "attempt {} aborted", m.attempt);
        if (mb.group.empty()) {
          // Idle in this round; a shard holder still serves its group's gathers.
          if (sharded) FLEXSP_TRY(st.idle(shard_comm.get()));
          continue;
        }
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
                                                                     static_cast<int>(j->setup.model.heads)));
        FLEXSP_TRY_ASSIGN(auto inputs, kernels::shard_inputs(layout, seqs));
        FLEXSP_TRY_ASSIGN(const double loss, st.forward_backward(*comm, layout, inputs, scale, shard_comm.get()));
        loss_sum += loss;
        const double ms = ms_since(t0);
        out.compute_ms += ms;
        out.groups.push_back({i, static_cast<std::uint32_t>(group.size()), tokens, ms});
      }
      if (!m.calibrate) {
        const auto t1 = Clock::now();
        if (sharded) {
          if (replica_comm) FLEXSP_TRY(st.all_reduce_gradients(*replica_comm));
          FLEXSP_TRY(st.settle_gradient_norm(shard_comm.get()));
        }
        if (world_comm) {
          if (!sharded) FLEXSP_TRY(st.all_reduce_gradients(*world_comm));
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
      out.peak_memory = st.peak_memory();
      out.shard_comm_ms = 1000.0 * st.take_shard_comm_seconds();
      out.state_bytes = st.state_bytes();
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
                                name_, m.step, m.attempt, j->ready_step, j->ready_attempt);
      j->reply(step_failed{m.job_id, m.step, m.attempt, j->setup.device, "commit without gradients"});
      return;
    }
    j->ready = false;
    if (auto r = j->state->optimizer_step(m.lr); !r) {
      // The replica no longer matches the others: the scheduler sees it in the next checksum.
      log::get("device")->error("{}: optimizer step {} failed: {}", name_, m.step, r.error().to_string());
      j->reply(step_failed{m.job_id, m.step, m.attempt, j->setup.device, r.error().to_string()});
      return;
    }
  });
}

void device_trainer::handle(abort_attempts m) {
  auto j = find(m.job_id);
  if (!j) return;
  raise_to(j->min_attempt, m.attempt);
  if (j->current_attempt.load() < m.attempt) j->abort_communicators();
}

void device_trainer::abort_in_flight() {
  std::vector<std::shared_ptr<job>> all;
  {
    std::lock_guard lock{mutex_};
    for (const auto& [_, j] : jobs_) all.push_back(j);
  }
  for (auto& j : all) {
    // Every attempt planned so far, running or still queued behind the running one.
    const auto last = std::max(j->current_attempt.load(), j->latest_attempt.load());
    raise_to(j->min_attempt, last + 1);
    log::get("device")->info("{}: the node's membership ended; abandoning attempts up to {} of job {}", name_, last,
                             j->setup.job_id);
    j->abort_communicators();
  }
}

void device_trainer::handle(save_state m) {
  post([this, m = std::move(m)]() {
    auto j = find(m.job_id);
    if (!j) return;
    j->reply(state_of(*j, m.tag, [&](replica& st) { return st.save(m.path); }));
  });
}

void device_trainer::handle(query_state m) {
  post([this, m = std::move(m)]() {
    auto j = find(m.job_id);
    if (!j) return;
    j->reply(state_of(*j, m.tag, [](replica&) { return expected<void>{}; }));
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
