#include "flexsp/actors/scheduler_actor.hpp"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>

#include <nlohmann/json.hpp>

#include "flexsp/actors/client.hpp"
#include "flexsp/actors/data_source.hpp"
#include "flexsp/actors/step_protocol.hpp"
#include "flexsp/core/log.hpp"
#include "flexsp/scheduler/fit.hpp"
#include "flexsp/scheduler/planner.hpp"

namespace flexsp::actors {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

std::string_view to_string(job_state s) noexcept {
  switch (s) {
    case job_state::pending: return "pending";
    case job_state::running: return "running";
    case job_state::succeeded: return "succeeded";
    case job_state::failed: return "failed";
    case job_state::cancelled: return "cancelled";
  }
  return "?";
}

std::string step_metrics::to_json() const {
  nlohmann::json j{{"step", step},         {"epoch", epoch},           {"devices", devices},
                   {"loss", loss},         {"tokens", tokens},         {"sequences", sequences},
                   {"plan", plan},         {"strategy", strategy},     {"solve_ms", solve_ms},
                   {"milp_solves", milp_solves}, {"milp_gap", milp_gap},
                   {"predicted_ms", predicted_ms}, {"step_ms", step_ms}, {"compute_ms", compute_ms},
                   {"comm_ms", comm_ms},   {"overhead_ms", overhead_ms}, {"group_error", group_error},
                   {"retried", retried},   {"recovery_ms", recovery_ms}, {"committed_at_ms", committed_at_ms}};
  auto& g = j["groups"] = nlohmann::json::array();
  for (const auto& t : groups)
    g.push_back({{"micro_batch", t.micro_batch}, {"degree", t.degree}, {"predicted_ms", t.predicted_ms},
                 {"measured_ms", t.measured_ms}});
  return j.dump();
}

namespace {
double ms_between(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double, std::milli>(b - a).count(); }

/// Raised inside the runner to end the job; caught at the top of its thread.
struct job_end {
  job_state state;
  std::string message;
};
/// Thrown when every replica holding the state was lost and the job went back to its latest
/// checkpoint: the step loop continues from `step`.
struct rewound {
  std::uint64_t step;
};
}  // namespace

struct scheduler_actor::runner {
  struct device {
    std::uint32_t index = 0;
    std::uint64_t node = 0;
    std::string name;
    remote_ref ref;
    bool synced = false;  ///< holds the job's replica state
  };
  struct prepared_plan {
    std::vector<std::uint32_t> world;
    std::uint64_t step = 0;
    scheduler::plan plan;
    double solve_ms = 0;
  };

  scheduler_actor& self;
  const job_spec& spec;
  std::unique_ptr<cluster_client> client;
  std::unique_ptr<batch_source> data;
  std::map<std::uint32_t, device> devices;        // live members of the job
  std::map<std::uint64_t, std::vector<device_id>> pending_nodes;  // joined, devices not yet named
  std::set<std::uint64_t> lost_nodes;
  std::uint32_t next_device = 0;
  std::uint64_t epoch = 0;
  std::uint64_t attempt = 0;
  std::uint64_t comm_epoch = 0;
  std::vector<std::uint32_t> comm_world;
  std::uint64_t next_tag = 1;
  std::map<std::uint64_t, device_state> replies;  // by tag
  std::optional<scheduler::profile> profile;
  std::optional<scheduler::planner> planner;
  std::vector<std::uint32_t> planner_world;
  std::optional<prepared_plan> prepared;
  commit_tracker tracker;
  bool attempt_failed = false;
  std::string failure_reason;
  bool world_changed = false;
  std::string resume_file;
  std::uint64_t start_step = 0;
  bool state_exists = false;  ///< some device holds the job's replica state
  std::deque<scheduler::fit_sample> observed;  ///< measured group times of committed steps
  int steps_since_refit = 0;
  std::string backend;      ///< device kind the job trains on ("cpu" / "cuda"); empty until resolved
  std::string collectives;  ///< "gloo" / "nccl", resolved with backend

  explicit runner(scheduler_actor& s) : self{s}, spec{s.spec_} {}

  // ---- events -----------------------------------------------------------------------------

  void log(std::string line) {
    log::get("scheduler")->info("job {}: {}", self.id_, line);
    {
      std::lock_guard lock{self.mutex_};
      self.logs_.push_back(line);
    }
    if (self.on_log_) self.on_log_(line);
  }

  /// Handles queued events for up to `wait`; returns when one arrived or the time passed.
  void pump(std::chrono::milliseconds wait) {
    std::deque<std::function<void(runner&)>> batch;
    {
      std::unique_lock lock{self.mutex_};
      self.changed_.wait_for(lock, wait, [this]() { return !self.inbox_.empty() || self.cancel_requested_; });
      batch.swap(self.inbox_);
    }
    for (auto& e : batch) e(*this);
    check_cancel();
  }

  void check_cancel() {
    bool c;
    {
      std::lock_guard lock{self.mutex_};
      c = self.cancel_requested_;
    }
    if (c) {
      abort_attempt();
      throw job_end{job_state::cancelled, "cancelled"};
    }
  }

  void on_membership(const membership_event& ev) {
    epoch = std::max(epoch, ev.epoch);
    if (ev.kind == membership_event::kind_t::lost) {
      lost_nodes.insert(ev.node.id);
      pending_nodes.erase(ev.node.id);
      bool had = false;
      for (auto it = devices.begin(); it != devices.end();) {
        if (it->second.node == ev.node.id) {
          had = true;
          it = devices.erase(it);
        } else {
          ++it;
        }
      }
      if (had) {
        world_changed = true;
        log(fmt::format("node {} lost at epoch {} ({}); {} devices left", ev.node.id, ev.epoch, ev.node.lost_reason,
                        devices.size()));
      }
    } else {
      pending_nodes[ev.node.id] = ev.node.devices;
    }
  }

  void on_device_state(const device_state& m) { replies[m.tag] = m; }

  void on_step_failed(const step_failed& f) {
    if (!tracker.concerns(f)) return;
    attempt_failed = true;
    failure_reason = fmt::format("device {}: {}", f.device, f.reason);
  }

  // ---- devices ----------------------------------------------------------------------------

  /// Fixes the job's device kind and collective library the first time devices are offered:
  /// spec.backend "auto" means cuda when any offered device is one.
  void resolve_backend() {
    if (!backend.empty() || pending_nodes.empty()) return;
    bool any_cuda = false;
    for (const auto& [_, devs] : pending_nodes)
      for (const auto& d : devs) any_cuda = any_cuda || d.kind == "cuda";
    // NCCL collectives, bf16 attention and tf32 GEMMs exist on CUDA devices only.
    const bool needs_cuda = spec.collectives == "nccl" || !spec.model.cuda_only_reason().empty();
    backend = spec.backend != "auto" ? spec.backend : (any_cuda || needs_cuda) ? "cuda" : "cpu";
    collectives = spec.collectives != "auto" ? spec.collectives : backend == "cuda" ? "nccl" : "gloo";
    log(fmt::format("training on {} devices with {} collectives", backend, collectives));
  }

  /// Looks up the device actors of joined nodes; returns the new devices. Devices of another
  /// kind than the job's backend are left out.
  std::vector<std::uint32_t> discover() {
    resolve_backend();
    std::vector<std::uint32_t> added;
    for (auto it = pending_nodes.begin(); it != pending_nodes.end();) {
      const auto node = it->first;
      std::vector<device> found;
      bool complete = true;
      for (const auto& d : it->second) {
        if (d.kind != backend) continue;
        auto addr = client->lookup(fmt::format("device/{}/{}", node, d.to_string()));
        if (!addr) {
          complete = false;
          break;
        }
        found.push_back({0, node, d.to_string(), self.config_.host->ref(*addr), false});
      }
      if (!complete) {
        ++it;
        continue;
      }
      for (auto& d : found) {
        d.index = next_device++;
        added.push_back(d.index);
        devices.emplace(d.index, std::move(d));
      }
      it = pending_nodes.erase(it);
    }
    return added;
  }

  /// Sends join_job to `fresh` devices and waits for their answers; drops those that fail.
  void join(const std::vector<std::uint32_t>& fresh, const std::string& resume_from) {
    std::map<std::uint64_t, std::uint32_t> tags;
    for (auto d : fresh) {
      join_job m;
      m.job_id = self.id_;
      m.device = d;
      m.model = spec.model;
      m.seed = spec.seed;
      m.optimizer = spec.optimizer;
      m.scheduler_host = self.config_.host->address();
      m.scheduler_actor = self.actor_id_;
      m.collective_timeout_ms = spec.collective_timeout_ms;
      m.resume_from = resume_from;
      m.collective_host = net::endpoint::parse(devices[d].ref.address().host).value().host;
      m.collectives = collectives;
      m.tag = next_tag++;
      tags[m.tag] = d;
      if (!devices[d].ref.tell(m)) devices.erase(d);
    }
    const auto deadline = Clock::now() + 30s;
    for (;;) {
      bool all = true;
      for (const auto& [tag, d] : tags)
        all = all && (replies.count(tag) || !devices.count(d));
      if (all) break;
      if (Clock::now() > deadline) break;
      pump(100ms);
    }
    for (const auto& [tag, d] : tags) {
      auto r = replies.find(tag);
      if (r == replies.end() || !r->second.error.empty()) {
        if (devices.count(d))
          log(fmt::format("device {} ({}) could not join: {}", d, devices[d].name,
                          r == replies.end() ? std::string{"no answer"} : r->second.error));
        devices.erase(d);
        continue;
      }
      replies.erase(r);
    }
  }

  void wait_for_devices() {
    const auto deadline = Clock::now() + self.config_.device_wait;
    while (devices.size() < spec.min_devices) {
      if (Clock::now() > deadline)
        throw job_end{job_state::failed, fmt::format("only {} of the {} {} devices the job needs are available",
                                                     devices.size(), spec.min_devices,
                                                     backend.empty() ? std::string{"cpu or cuda"} : backend)};
      auto fresh = discover();
      if (!fresh.empty()) {
        join(fresh, state_exists ? std::string{} : resume_file);
        // At the start every replica comes from the same seed or checkpoint.
        if (!state_exists)
          for (auto& [_, d] : devices) d.synced = true;
      }
      if (devices.size() < spec.min_devices) pump(100ms);
    }
    if (!state_exists) {
      state_exists = true;
      return;
    }
    bool any = false;
    for (const auto& [_, d] : devices) any = any || d.synced;
    if (!any) rewind_to_checkpoint();
  }

  /// Every device holding the model state is gone: the devices there are now load the latest
  /// checkpoint and the job re-runs the steps after it (throws `rewound`); without a checkpoint
  /// the job fails.
  void rewind_to_checkpoint() {
    resume_file.clear();
    load_resume_point();
    if (resume_file.empty())
      throw job_end{job_state::failed, "every device holding the model state was lost and there is no checkpoint"};
    std::vector<std::uint32_t> all;
    for (const auto& [i, _] : devices) all.push_back(i);
    join(all, resume_file);
    if (devices.empty()) throw job_end{job_state::failed, "no device could load checkpoint " + resume_file};
    for (auto& [_, d] : devices) d.synced = true;
    prepared.reset();
    comm_world.clear();  // fresh communicators: the rejoined devices start without any
    {
      std::lock_guard lock{self.mutex_};
      self.status_.steps_done = start_step;
    }
    log(fmt::format("every device holding the model state was lost; {} devices restarted from {} (step {})",
                    devices.size(), resume_file, start_step));
    throw rewound{start_step};
  }

  std::vector<std::uint32_t> world() const {
    std::vector<std::uint32_t> w;
    for (const auto& [i, _] : devices) w.push_back(i);
    return w;
  }

  void abort_attempt() {
    if (!tracker.active()) return;
    comm_world.clear();  // the aborted attempt's communicators are gone: the next one builds new ones
    for (const auto& [_, d] : devices) (void)d.ref.tell(abort_attempts{self.id_, tracker.attempt() + 1});
    tracker.reset();
  }

  // ---- planning ---------------------------------------------------------------------------

  int devices_per_node() const {
    std::map<std::uint64_t, int> per;
    for (const auto& [_, d] : devices) ++per[d.node];
    int k = 1 << 30;
    for (const auto& [_, n] : per) k = std::min(k, n);
    return per.empty() ? 1 : k;
  }

  scheduler::profile initial_profile() const {
    scheduler::profile p;
    p.name = "cpu-default";
    const double layers = spec.model.layers, d = spec.model.d_model;
    // Rough CPU figures (fp32 GEMM at a few GFLOP/s); calibration replaces them.
    p.alpha2 = 24.0 * layers * d * d / 2e6;
    p.alpha1 = 6.0 * layers * d / 2e6;
    p.beta1 = 2.0;
    p.hidden = static_cast<int>(spec.model.d_model);
    p.layers = static_cast<int>(spec.model.layers);
    p.bandwidth_gbps = {{2, 0.5}, {4, 0.4}, {8, 0.3}, {16, 0.2}};
    // Activation budget: a device holds up to 4 * max_seq tokens (a nominal 1 MB each).
    p.act_per_token_mb = 1.0;
    p.params_b = 0;
    p.mem_limit_gb = 4.0 * spec.model.max_seq / 1024.0;
    p.devices_per_node = 1;
    return p;
  }

  std::string strategy_for(int n) const {
    if (spec.strategy.rfind("static:", 0) != 0) return spec.strategy;
    int d = std::stoi(spec.strategy.substr(7));
    while (d > n) d /= 2;
    return fmt::format("static:{}", std::max(d, 1));
  }

  scheduler::planner& planner_for(const std::vector<std::uint32_t>& w) {
    if (!planner || planner_world != w) {
      scheduler::cluster c{static_cast<int>(w.size()), devices_per_node()};
      auto p = *profile;
      p.devices_per_node = c.devices_per_node;
      scheduler::planner_options o;
      o.strategy = strategy_for(c.devices);
      o.time_limit_ms = spec.planner_time_limit_ms;
      o.use_milp = spec.milp;
      o.milp_min_gap = spec.milp_min_gap;
      auto made = scheduler::planner::create(p, c, o);
      if (!made) throw job_end{job_state::failed, "planner: " + made.error().to_string()};
      planner.emplace(std::move(*made));
      planner_world = w;
    }
    return *planner;
  }

  scheduler::plan make_plan(const std::vector<std::uint32_t>& w, const training_batch& b) {
    auto r = planner_for(w).make_plan(b.lengths);
    if (!r) throw job_end{job_state::failed, fmt::format("planning step {}: {}", b.index, r.error().to_string())};
    return std::move(*r);
  }

  // ---- calibration ------------------------------------------------------------------------

  /// Timing probes: for every power-of-two degree d <= N, micro-batches of N/d groups. All
  /// groups of one micro-batch hold the same sequence set, so they finish together even when
  /// devices share cores (balanced plans are what the planner makes); the sets differ between
  /// micro-batches (one long sequence, one short, several short) so that alpha1, alpha2 and
  /// beta1 separate. The probes run three times; the first run (communicator setup) is dropped.
  void calibrate() {
    const auto w = world();
    const int n = static_cast<int>(w.size());
    std::vector<scheduler::fit_sample> samples;
    scheduler::plan probe;
    training_batch b;
    const std::int64_t maxl = spec.model.max_seq;
    auto len = [&](std::int64_t div) { return std::max<std::int64_t>(8, maxl / div); };
    const std::vector<std::vector<std::int64_t>> sets{{len(2)}, {len(8)}, {len(16), len(16), len(16), len(16)}};
    for (int d = 1; d <= n; d *= 2) {
      for (const auto& set : sets) {
        scheduler::micro_batch mb;
        for (int g = 0; g < n / d; ++g) {
          scheduler::sp_group grp;
          grp.degree = d;
          for (int k = 0; k < d; ++k) grp.devices.push_back(g * d + k);
          for (auto l : set) {
            grp.sequences.push_back(static_cast<int>(b.lengths.size()));
            b.lengths.push_back(l);
          }
          mb.groups.push_back(std::move(grp));
        }
        probe.micro_batches.push_back(std::move(mb));
      }
    }
    auto content = data->batch(0);
    for (auto l : b.lengths) {
      std::vector<std::int32_t> ids(static_cast<std::size_t>(l) + 1);
      for (std::size_t i = 0; i < ids.size(); ++i)
        ids[i] = content.tokens[0][i % content.tokens[0].size()] % static_cast<std::int32_t>(spec.model.vocab);
      b.tokens.push_back(std::move(ids));
    }
    const auto t0 = Clock::now();
    // A tiny copy of the probe first: it creates every group's communicator, which the timed
    // run must not include.
    training_batch tiny = b;
    for (std::size_t q = 0; q < tiny.lengths.size(); ++q) {
      tiny.lengths[q] = 8;
      tiny.tokens[q].resize(9);
    }
    if (!run_attempt(probe, tiny, ~std::uint64_t{0}, true)) {
      log("calibration warm-up failed; keeping the default profile");
      return;
    }
    auto reports = run_attempt(probe, b, ~std::uint64_t{0}, true);
    if (!reports) {
      log("calibration probe failed; keeping the default profile");
      return;
    }
    for (std::size_t m = 0; m < probe.micro_batches.size(); ++m) {
      for (const auto& g : probe.micro_batches[m].groups) {
        double ms = 0;
        for (int dev : g.devices)
          for (const auto& t : (*reports)[w[static_cast<std::size_t>(dev)]].groups)
            if (t.micro_batch == m) ms = std::max(ms, t.compute_ms);
        scheduler::fit_sample s;
        s.degree = g.degree;
        s.time_ms = ms;
        for (int q : g.sequences) s.lengths.push_back(b.lengths[static_cast<std::size_t>(q)]);
        samples.push_back(std::move(s));
      }
    }
    auto base = *profile;
    auto fit = scheduler::fit_profile(samples, base);
    if (!fit) {
      // Noisy communication timings can make a bandwidth unidentifiable; fit compute only.
      std::vector<scheduler::fit_sample> local;
      for (const auto& s : samples)
        if (s.degree == 1) local.push_back(s);
      fit = scheduler::fit_profile(local, base);
    }
    if (!fit) {
      log(fmt::format("calibration fit failed ({}); keeping the default profile", fit.error().message()));
      return;
    }
    auto p = scheduler::apply_fit(base, *fit);
    p.alpha1 = std::max(p.alpha1, 1e-9);
    p.alpha2 = std::max(p.alpha2, 1e-9);
    p.beta1 = std::max(p.beta1, 0.0);
    p.name = "cpu-calibrated";
    if (!p.validate()) return;
    profile = p;
    planner.reset();
    {
      std::lock_guard lock{self.mutex_};
      self.status_.calibration = scheduler::profile_to_json(p);
    }
    log(fmt::format("calibrated on {} devices in {:.0f} ms from {} samples: alpha1 {:.3g} ms/tok^2, alpha2 {:.3g} "
                    "ms/tok, beta1 {:.3g} ms, fit error max {:.1f}%",
                    n, ms_between(t0, Clock::now()), samples.size(), p.alpha1, p.alpha2, p.beta1,
                    100 * fit->max_relative_error));
  }

  /// Online calibration: every few steps, refit the profile to the group times measured in
  /// training (the last kRefitWindow groups), so the cost model follows the devices as they are
  /// loaded in practice. A fit that does not validate leaves the profile as it is.
  void refit() {
    static constexpr std::size_t kRefitWindow = 256;
    while (observed.size() > kRefitWindow) observed.pop_front();
    if (!spec.calibrate || ++steps_since_refit < 5) return;
    steps_since_refit = 0;
    std::vector<scheduler::fit_sample> samples{observed.begin(), observed.end()};
    auto fit = scheduler::fit_profile(samples, *profile);
    if (!fit) return;
    auto p = scheduler::apply_fit(*profile, *fit);
    if (!(p.alpha1 >= 0 && p.alpha2 >= 0 && p.beta1 >= 0) || !p.validate()) return;
    p.name = "cpu-online";
    profile = p;
    planner.reset();
    prepared.reset();
    std::lock_guard lock{self.mutex_};
    self.status_.calibration = scheduler::profile_to_json(p);
  }

  // ---- one attempt ------------------------------------------------------------------------

  /// Sends the plan to every device of the current world and waits until all reported ready
  /// (returns their reports) or the attempt failed (nullopt; the attempt is aborted).
  std::optional<std::map<std::uint32_t, grad_ready>> run_attempt(const scheduler::plan& p, const training_batch& b,
                                                                 std::uint64_t step, bool calibrate_only,
                                                                 std::function<void()> while_running = {}) {
    const auto w = world();
    step_header h;
    h.job_id = self.id_;
    h.step = step;
    h.epoch = epoch;
    h.attempt = ++attempt;
    h.calibrate = calibrate_only;
    if (w != comm_world) {
      comm_world = w;
      ++comm_epoch;
    }
    h.comm_epoch = comm_epoch;
    for (const auto& [i, d] : devices)
      if (d.synced) {
        h.sync_source = i;
        break;
      }
    bool need_sync = false;
    for (const auto& [_, d] : devices) need_sync = need_sync || !d.synced;
    if (!need_sync || calibrate_only) h.sync_source = -1;
    if (need_sync && h.sync_source < 0) {
      if (calibrate_only) throw job_end{job_state::failed, "every device holding the model state was lost"};
      rewind_to_checkpoint();  // throws
    }
    auto parts = slice_plan(p, w, b, h);
    if (!parts) throw job_end{job_state::failed, "plan slicing: " + parts.error().to_string()};
    tracker.start(step, h.attempt, {w.begin(), w.end()});
    attempt_failed = false;
    world_changed = false;
    for (auto& [d, part] : *parts) {
      if (auto r = devices[d].ref.tell(part); !r) {
        attempt_failed = true;
        failure_reason = fmt::format("device {}: {}", d, r.error().message());
      }
    }
    if (while_running) while_running();
    const auto silence = std::chrono::milliseconds{spec.collective_timeout_ms} * 3 + 10s;
    auto last_progress = Clock::now();
    std::size_t seen = 0;
    for (;;) {
      if (attempt_failed || world_changed) break;
      if (tracker.reports().size() == w.size()) break;
      if (tracker.reports().size() != seen) {
        seen = tracker.reports().size();
        last_progress = Clock::now();
      }
      if (Clock::now() - last_progress > silence) {
        attempt_failed = true;
        failure_reason = fmt::format("no report from {} devices within {} ms", w.size() - seen, silence.count());
        break;
      }
      pump(50ms);
    }
    if (attempt_failed || world_changed || tracker.reports().size() != w.size()) {
      abort_attempt();
      return std::nullopt;
    }
    auto out = tracker.reports();
    if (!need_sync || calibrate_only) {
    } else {
      for (auto& [_, d] : devices) d.synced = true;
    }
    if (!calibrate_only) return out;
    tracker.reset();
    return out;
  }

  void on_grad_ready(const grad_ready& r) {
    switch (tracker.on_ready(r)) {
      case commit_tracker::outcome::mismatch:
        abort_attempt();
        throw job_end{job_state::failed, fmt::format("replicas diverged at step {}: parameter checksums {}", r.step,
                                                     tracker.mismatch_detail())};
      default: break;
    }
  }

  // ---- steps ------------------------------------------------------------------------------

  void run_step(std::uint64_t step) {
    const auto batch = data->batch(step);
    std::uint32_t retried = 0;
    std::optional<Clock::time_point> first_failure;
    for (;;) {
      integrate_joiners();
      if (devices.empty()) {
        log("no devices left; waiting for a node to join");
        wait_for_devices();
      }
      const auto w = world();
      scheduler::plan p;
      double solve_ms = 0;
      const auto t_plan = Clock::now();
      if (prepared && prepared->step == step && prepared->world == w) {
        p = std::move(prepared->plan);
        solve_ms = prepared->solve_ms;
      } else {
        p = make_plan(w, batch);
        solve_ms = p.solve_ms;
      }
      prepared.reset();
      const double exposed_plan_ms = ms_between(t_plan, Clock::now());
      const auto t0 = Clock::now();
      double hidden_ms = 0;
      auto reports = run_attempt(p, batch, step, false, [&]() {
        // Plan the next batch while the devices run this one.
        if (step + 1 < spec.steps) {
          const auto tp = Clock::now();
          auto next = data->batch(step + 1);
          prepared = prepared_plan{w, step + 1, make_plan(w, next), 0};
          prepared->solve_ms = prepared->plan.solve_ms;
          hidden_ms = ms_between(tp, Clock::now());
        }
      });
      if (!reports) {
        ++retried;
        if (!first_failure) first_failure = Clock::now();
        log(fmt::format("step {} attempt {} aborted ({}); re-planning the same batch", step, attempt,
                        world_changed ? "membership changed" : failure_reason));
        if (retried > 20) throw job_end{job_state::failed, fmt::format("step {} failed 20 times: {}", step, failure_reason)};
        // A failed collective or an unreachable device usually means a lost node: give the head
        // up to 300 ms to report it (other events that arrive meanwhile do not cut the wait
        // short), rather than spending the retries on a world that is about to change.
        if (!world_changed) {
          const auto until = Clock::now() + 300ms;
          while (!world_changed && Clock::now() < until)
            pump(std::chrono::ceil<std::chrono::milliseconds>(until - Clock::now()));
        }
        continue;
      }
      // Commit: every device reported the same checksum.
      const float lr = spec.lr_at(step);
      const auto t_commit = Clock::now();
      for (const auto& [_, d] : devices) (void)d.ref.tell(commit_step{self.id_, step, attempt, lr});
      tracker.reset();
      const auto t_end = Clock::now();
      step_metrics m;
      m.step = step;
      m.epoch = epoch;
      m.devices = static_cast<std::uint32_t>(w.size());
      m.tokens = batch.total_tokens();
      m.sequences = static_cast<std::uint32_t>(batch.lengths.size());
      m.loss = reports->begin()->second.loss_sum / static_cast<double>(std::max<std::uint64_t>(1, m.tokens));
      m.strategy = p.strategy;
      for (const auto& mb : p.micro_batches) {
        std::vector<int> degrees;
        for (const auto& g : mb.groups)
          if (!g.sequences.empty()) degrees.push_back(g.degree);
        m.plan.push_back(std::move(degrees));
      }
      m.solve_ms = solve_ms;
      m.milp_solves = p.milp_solves;
      m.milp_gap = p.milp_gap;
      m.predicted_ms = p.predicted_ms;
      m.step_ms = ms_between(t0, t_end) + exposed_plan_ms;
      double worst_device = 0;
      for (const auto& [_, r] : *reports) {
        m.compute_ms = std::max(m.compute_ms, r.compute_ms);
        m.comm_ms = std::max(m.comm_ms, r.comm_ms);
        worst_device = std::max(worst_device, r.compute_ms + r.comm_ms);
      }
      (void)hidden_ms;
      m.overhead_ms = std::max(0.0, m.step_ms - worst_device);
      double err = 0;
      int groups = 0;
      for (std::size_t mbi = 0; mbi < p.micro_batches.size(); ++mbi)
        for (const auto& g : p.micro_batches[mbi].groups) {
          if (g.sequences.empty()) continue;
          double measured = 0;
          for (int dv : g.devices)
            for (const auto& t : (*reports)[w[static_cast<std::size_t>(dv)]].groups)
              if (t.micro_batch == mbi) measured = std::max(measured, t.compute_ms);
          m.groups.push_back({static_cast<std::uint32_t>(mbi), g.degree, g.predicted_ms, measured});
          if (measured > 0) {
            err += std::abs(g.predicted_ms - measured) / measured;
            ++groups;
            scheduler::fit_sample fs;
            fs.degree = g.degree;
            fs.time_ms = measured;
            for (int q : g.sequences) fs.lengths.push_back(batch.lengths[static_cast<std::size_t>(q)]);
            observed.push_back(std::move(fs));
          }
        }
      m.group_error = groups ? err / groups : 0;
      m.retried = retried;
      m.recovery_ms = first_failure ? ms_between(*first_failure, t_commit) : 0;
      m.committed_at_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                              std::chrono::system_clock::now().time_since_epoch())
                              .count();
      job_update update{self.id_, 0, m.to_json(), {}};
      {
        std::lock_guard lock{self.mutex_};
        update.index = self.metrics_.size();
        self.metrics_.push_back(update.metrics);
        if (self.status_.steps_done == self.status_.resumed_from) self.status_.first_loss = m.loss;
        self.status_.last_loss = m.loss;
        self.status_.steps_done = step + 1;
        self.status_.devices = m.devices;
      }
      self.notify_watchers(update);
      if (self.on_metrics_) self.on_metrics_(m);
      refit();
      return;
    }
  }

  void integrate_joiners() {
    if (pending_nodes.empty()) return;
    auto fresh = discover();
    if (fresh.empty()) return;
    for (auto d : fresh) devices[d].synced = false;
    join(fresh, "");
    if (!fresh.empty()) log(fmt::format("{} devices joined; they receive the replica state at the next step", fresh.size()));
  }

  // ---- checkpoints ------------------------------------------------------------------------

  void load_resume_point() {
    if (spec.checkpoint_dir.empty()) return;
    const fs::path latest = fs::path{spec.checkpoint_dir} / "latest.json";
    std::ifstream in{latest};
    if (!in) return;
    nlohmann::json j;
    try {
      in >> j;
      start_step = j.at("step").get<std::uint64_t>();
      resume_file = (fs::path{spec.checkpoint_dir} / j.at("file").get<std::string>()).string();
      if (j.at("seed").get<std::uint64_t>() != spec.seed)
        throw job_end{job_state::failed, fmt::format("checkpoint {} was written with seed {}, the job has {}",
                                                     latest.string(), j.at("seed").get<std::uint64_t>(), spec.seed)};
    } catch (const nlohmann::json::exception& e) {
      throw job_end{job_state::failed, fmt::format("checkpoint index {} is unreadable: {}", latest.string(), e.what())};
    }
    if (start_step > spec.steps) start_step = spec.steps;
    log(fmt::format("resuming from {} at step {}", resume_file, start_step));
  }

  void checkpoint(std::uint64_t steps_done) {
    if (spec.checkpoint_dir.empty() || devices.empty()) return;
    std::error_code ec;
    fs::create_directories(spec.checkpoint_dir, ec);
    const std::string file = fmt::format("step-{:06d}.ckpt", steps_done);
    const auto path = fs::absolute(fs::path{spec.checkpoint_dir} / file).string();
    const auto tag = next_tag++;
    auto& d = devices.begin()->second;
    if (!d.ref.tell(save_state{self.id_, path, tag})) return;
    const auto deadline = Clock::now() + 60s;
    while (!replies.count(tag) && Clock::now() < deadline) pump(50ms);
    auto r = replies.find(tag);
    if (r == replies.end() || !r->second.error.empty()) {
      log(fmt::format("checkpoint at step {} failed: {}", steps_done, r == replies.end() ? "no answer" : r->second.error));
      return;
    }
    nlohmann::json j{{"step", steps_done}, {"data_position", steps_done}, {"seed", spec.seed}, {"file", file},
                     {"checksum", r->second.checksum}, {"job", self.id_}};
    replies.erase(r);
    const fs::path latest = fs::path{spec.checkpoint_dir} / "latest.json";
    const fs::path tmp = latest.string() + ".tmp";
    {
      std::ofstream out{tmp};
      out << j.dump() << "\n";
      if (!out) {
        log("checkpoint index write failed");
        return;
      }
    }
    fs::rename(tmp, latest, ec);
    if (ec) log(fmt::format("checkpoint index rename failed: {}", ec.message()));
    else log(fmt::format("checkpoint at step {} written to {}", steps_done, path));
  }

  // ---- the job ----------------------------------------------------------------------------

  std::uint64_t verify_replicas() {
    std::map<std::uint64_t, std::uint32_t> tags;
    for (const auto& [i, d] : devices) {
      const auto tag = next_tag++;
      tags[tag] = i;
      (void)d.ref.tell(query_state{self.id_, tag});
    }
    const auto deadline = Clock::now() + 30s;
    for (;;) {
      bool all = true;
      for (const auto& [tag, d] : tags) all = all && (replies.count(tag) || !devices.count(d));
      if (all || Clock::now() > deadline) break;
      pump(50ms);
    }
    std::optional<std::uint64_t> sum;
    for (const auto& [tag, d] : tags) {
      auto r = replies.find(tag);
      if (r == replies.end()) continue;
      if (sum && *sum != r->second.checksum)
        throw job_end{job_state::failed, fmt::format("replicas differ after the last step (device {})", d)};
      sum = r->second.checksum;
    }
    return sum.value_or(0);
  }

  void run() {
    auto c = cluster_client::connect(self.config_.head, self.config_.transport);
    if (!c) throw job_end{job_state::failed, "cannot reach the head: " + c.error().to_string()};
    client = std::move(*c);
    auto weak = self.weak_from_this();
    auto st = client->subscribe([weak](const membership_event& ev) {
      if (auto s = weak.lock()) s->push([ev](runner& r) { r.on_membership(ev); });
    });
    if (!st) throw job_end{job_state::failed, "cannot subscribe to membership: " + st.error().to_string()};
    epoch = st->epoch;
    for (const auto& n : st->nodes)
      if (n.state == node_state::alive) pending_nodes[n.id] = n.devices;
    auto d = batch_source::create(spec);
    if (!d) throw job_end{job_state::failed, d.error().to_string()};
    data = std::move(*d);
    load_resume_point();
    {
      std::lock_guard lock{self.mutex_};
      self.status_.resumed_from = start_step;
      self.status_.steps_done = start_step;
      self.status_.state = job_state::running;
    }
    wait_for_devices();
    log(fmt::format("{} devices joined (epoch {}); strategy {}, {} steps of {} sequences", devices.size(), epoch,
                    spec.strategy, spec.steps, spec.batch_size));
    profile = initial_profile();
    if (spec.calibrate && start_step < spec.steps) calibrate();
    for (std::uint64_t step = start_step; step < spec.steps; ++step) {
      try {
        run_step(step);
      } catch (const rewound& r) {
        step = r.step - 1;  // ++step resumes at r.step (wraps from 0 back to 0)
        continue;
      }
      const auto done = step + 1;
      if (!spec.checkpoint_dir.empty() &&
          ((spec.checkpoint_every > 0 && done % spec.checkpoint_every == 0) || done == spec.steps))
        checkpoint(done);
      check_cancel();
    }
    const auto sum = verify_replicas();
    std::lock_guard lock{self.mutex_};
    self.status_.final_checksum = sum;
  }

  void leave() {
    for (const auto& [_, d] : devices) (void)d.ref.tell(leave_job{self.id_});
  }
};

scheduler_actor::scheduler_actor(std::string id, job_spec spec, scheduler_config config, metrics_fn m, log_fn l)
    : id_{std::move(id)}, spec_{std::move(spec)}, config_{std::move(config)}, on_metrics_{std::move(m)},
      on_log_{std::move(l)} {
  status_.id = id_;
  status_.name = spec_.name;
  status_.steps_total = spec_.steps;
}

std::shared_ptr<scheduler_actor> scheduler_actor::start(std::string job_id, job_spec spec, scheduler_config config,
                                                        metrics_fn on_metrics, log_fn on_log) {
  std::shared_ptr<scheduler_actor> s{
      new scheduler_actor{std::move(job_id), std::move(spec), std::move(config), std::move(on_metrics), std::move(on_log)}};
  s->actor_id_ = s->config_.host->spawn<scheduler_actor, grad_ready, step_failed, device_state>(s);
  s->thread_ = std::thread{[s]() {
    runner r{*s};
    job_state final_state = job_state::succeeded;
    std::string message;
    try {
      r.run();
    } catch (const job_end& e) {
      final_state = e.state;
      message = e.message;
    } catch (const std::exception& e) {
      final_state = job_state::failed;
      message = fmt::format("internal error: {}", e.what());
    }
    r.leave();
    if (final_state == job_state::failed) r.log("failed: " + message);
    else if (final_state == job_state::cancelled) r.log("cancelled");
    else r.log(fmt::format("finished {} steps", s->spec_.steps));
    s->config_.host->remove(s->actor_id_);
    job_update end{s->id_, 0, {}, std::string{to_string(final_state)}};
    {
      std::lock_guard lock{s->mutex_};
      s->status_.state = final_state;
      s->status_.error = message;
      end.index = s->metrics_.size();
    }
    s->changed_.notify_all();
    s->notify_watchers(end);
  }};
  return s;
}

void scheduler_actor::watch(remote_address subscriber) {
  std::optional<job_update> ended;
  {
    std::lock_guard lock{mutex_};
    if (status_.state == job_state::succeeded || status_.state == job_state::failed ||
        status_.state == job_state::cancelled)
      ended = job_update{id_, metrics_.size(), {}, std::string{to_string(status_.state)}};
    else
      watchers_.push_back(subscriber);
  }
  if (ended) (void)config_.host->ref(subscriber).tell(*ended);
}

void scheduler_actor::notify_watchers(const job_update& update) {
  std::vector<remote_address> to;
  {
    std::lock_guard lock{mutex_};
    to = watchers_;
  }
  std::vector<remote_address> gone;
  for (const auto& w : to)
    if (!config_.host->ref(w).tell(update)) gone.push_back(w);
  if (gone.empty()) return;
  std::lock_guard lock{mutex_};
  std::erase_if(watchers_, [&](const remote_address& w) {
    return std::find(gone.begin(), gone.end(), w) != gone.end();
  });
}

scheduler_actor::~scheduler_actor() {
  if (thread_.joinable()) {
    if (thread_.get_id() == std::this_thread::get_id()) thread_.detach();
    else thread_.join();
  }
}

void scheduler_actor::push(std::function<void(runner&)> event) {
  {
    std::lock_guard lock{mutex_};
    inbox_.push_back(std::move(event));
  }
  changed_.notify_all();
}

void scheduler_actor::handle(grad_ready m) {
  push([m = std::move(m)](runner& r) { r.on_grad_ready(m); });
}
void scheduler_actor::handle(step_failed m) {
  push([m = std::move(m)](runner& r) { r.on_step_failed(m); });
}
void scheduler_actor::handle(device_state m) {
  push([m = std::move(m)](runner& r) { r.on_device_state(m); });
}

void scheduler_actor::cancel() {
  {
    std::lock_guard lock{mutex_};
    cancel_requested_ = true;
  }
  changed_.notify_all();
}

job_status scheduler_actor::wait() {
  std::unique_lock lock{mutex_};
  changed_.wait(lock, [this]() { return status_.terminal(); });
  return status_;
}

job_status scheduler_actor::status() const {
  std::lock_guard lock{mutex_};
  return status_;
}

std::vector<std::string> scheduler_actor::metrics_since(std::size_t from) const {
  std::lock_guard lock{mutex_};
  if (from >= metrics_.size()) return {};
  return {metrics_.begin() + static_cast<std::ptrdiff_t>(from), metrics_.end()};
}

std::vector<std::string> scheduler_actor::logs() const {
  std::lock_guard lock{mutex_};
  return logs_;
}

}  // namespace flexsp::actors
