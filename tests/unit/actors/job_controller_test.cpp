// The job controller driven by hand: a scripted cluster answers its commands, a manual clock
// moves time, and each test plays one fault scenario. No threads, sockets or sleeps.
#include "flexsp/actors/job_controller.hpp"

#include <deque>
#include <functional>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "flexsp/scheduler/planner.hpp"

namespace flexsp::actors {
namespace {

using namespace std::chrono_literals;

job_spec small_spec(std::uint64_t steps) {
  job_spec s;
  s.name = "t";
  s.steps = steps;
  s.batch_size = 8;
  s.model.layers = 1;
  s.model.d_model = 16;
  s.model.heads = 2;
  s.model.max_seq = 256;
  s.calibrate = false;
  s.milp = false;
  s.warmup = 0;
  return s;
}

/// A scripted cluster around one controller. Devices answer joins, saves and queries at once;
/// step plans are answered with `grad_ready` when `auto_reply` is set (checksum 1000 + step),
/// otherwise they wait in `plans` for the test.
class scripted_cluster {
public:
  explicit scripted_cluster(job_spec spec) : spec_{std::move(spec)} {
    auto d = batch_source::create(spec_);
    EXPECT_TRUE(d) << d.error().to_string();
    data_ = std::move(*d);
    controller_.emplace(controller_config{"job-1", {"head:1", 7}}, spec_, *data_, clock_);
  }

  // ---- the cluster ---------------------------------------------------------------------------
  node_record node(std::uint64_t id, int devices) {
    node_record n;
    n.id = id;
    n.address = fmt::format("node{}:1", id);
    for (int i = 0; i < devices; ++i) n.devices.push_back(device_id{device_kind::cpu, static_cast<std::uint32_t>(i)});
    return n;
  }
  void start(std::vector<std::pair<std::uint64_t, int>> nodes, std::optional<checkpoint_point> resume = {},
             std::optional<recovered_progress> recovered = {}) {
    job_started s;
    s.epoch = nodes.size();
    epoch_ = s.epoch;
    for (auto [id, k] : nodes) s.nodes.push_back(node(id, k));
    s.resume = std::move(resume);
    s.recovered = std::move(recovered);
    feed(s);
  }
  void join_node(std::uint64_t id, int devices) {
    membership_event e;
    e.kind = membership_event::kind_t::joined;
    e.epoch = ++epoch_;
    e.node = node(id, devices);
    feed(e);
  }
  void lose_node(std::uint64_t id) {
    dead_nodes_.insert(id);
    membership_event e;
    e.kind = membership_event::kind_t::lost;
    e.epoch = ++epoch_;
    e.node = node(id, 0);
    e.node.lost_reason = "test";
    feed(e);
  }
  /// Moves time forward, firing due timers in deadline order.
  void advance(core::duration d) {
    const auto until = clock_.now() + d;
    for (;;) {
      auto next = std::min_element(timers_.begin(), timers_.end(),
                                   [](const auto& a, const auto& b) { return a.second < b.second; });
      if (next == timers_.end() || next->second > until) break;
      clock_.advance(next->second - clock_.now());
      const auto id = next->first;
      timers_.erase(next);
      feed(timer_fired{id});
    }
    clock_.advance(until - clock_.now());
  }

  // ---- device replies ------------------------------------------------------------------------
  grad_ready ready(std::uint32_t device, const step_plan& p, std::uint64_t checksum) {
    grad_ready r;
    r.job_id = "job-1";
    r.step = p.step;
    r.attempt = p.attempt;
    r.device = device;
    r.checksum = checksum;
    r.loss_sum = 5.0 * static_cast<double>(p.global_tokens);
    r.compute_ms = 10;
    r.comm_ms = 1;
    if (group_ms)
      for (std::size_t mb = 0; mb < p.micro_batches.size(); ++mb) {
        const auto& g = p.micro_batches[mb];
        group_timing t;
        t.micro_batch = static_cast<std::uint32_t>(mb);
        t.degree = static_cast<std::uint32_t>(g.group.size());
        std::vector<std::int64_t> lengths{g.lengths.begin(), g.lengths.end()};
        for (auto l : lengths) t.tokens += static_cast<std::uint64_t>(l);
        t.compute_ms = group_ms(static_cast<int>(g.group.size()), lengths) * (p.calibrate ? probe_slowdown : 1.0);
        r.groups.push_back(t);
      }
    return r;
  }
  /// When set, devices report each group's time as this gives it (degree, lengths).
  std::function<double(int, const std::vector<std::int64_t>&)> group_ms;
  /// Timing probes run this many times slower than training (short probes pay fixed costs).
  double probe_slowdown = 1.0;
  /// Answers every waiting step plan with grad_ready.
  void reply_all() {
    auto plans = std::move(plans_);
    plans_.clear();
    for (const auto& [d, p] : plans) feed(ready(d, p, 1000 + p.step));
  }
  step_failed failure(std::uint32_t device, const step_plan& p) {
    return step_failed{"job-1", p.step, p.attempt, device, "collective failed: connection reset"};
  }

  // ---- feeding ---------------------------------------------------------------------------------
  template <class E>
  void feed(const E& e) {
    controller_->on(e);
    run();
  }
  void run() {
    for (;;) {
      auto cmds = controller_->take_commands();
      if (cmds.empty() && replies_.empty()) return;
      for (auto& c : cmds) carry_out(c);
      while (!replies_.empty()) {
        auto r = std::move(replies_.front());
        replies_.pop_front();
        r();
      }
    }
  }

  void carry_out(job_command& c) {
    commands.push_back(c);
    std::visit(
        [&](auto& m) {
          using T = std::decay_t<decltype(m)>;
          if constexpr (std::is_same_v<T, send_to_device>) deliver(m);
          else if constexpr (std::is_same_v<T, lookup_devices>) {
            devices_found f{m.node, {}};
            for (std::size_t i = 0; i < m.devices.size(); ++i)
              f.devices.emplace_back(m.devices[i], remote_address{fmt::format("node{}:1", m.node), 100 * m.node + i});
            later([this, f]() { controller_->on(f); });
          } else if constexpr (std::is_same_v<T, request_plan>) {
            ++plan_requests;
            plan_profiles.push_back(m.profile);
            scheduler::planner_options o;
            o.strategy = m.strategy;
            o.use_milp = false;
            auto pl = scheduler::planner::create(m.profile, scheduler::cluster{m.devices, m.devices_per_node}, o);
            ASSERT_TRUE(pl) << pl.error().to_string();
            plan_ready r{m.request, pl->make_plan(m.lengths)};
            if (hold_plans) held_plans.push_back(std::move(r));
            else later([this, r]() { controller_->on(r); });
          } else if constexpr (std::is_same_v<T, write_index>) {
            index_written w{m.point.step, index_error};
            later([this, w]() { controller_->on(w); });
          } else if constexpr (std::is_same_v<T, start_timer>) {
            timers_[m.id] = clock_.now() + m.delay;
          } else if constexpr (std::is_same_v<T, publish_metrics>) {
            metrics.push_back(m.metrics);
          } else if constexpr (std::is_same_v<T, log_line>) {
            logs.push_back(m.text);
          } else if constexpr (std::is_same_v<T, job_event>) {
            events.push_back(m);
          } else if constexpr (std::is_same_v<T, job_finished>) {
            finished = m;
          }
        },
        c);
  }

  void deliver(const send_to_device& s) {
    const auto node = s.address.actor_id / 100;
    if (dead_nodes_.count(node)) {
      later([this, d = s.device]() { controller_->on(send_failed{d, "peer is down"}); });
      return;
    }
    std::visit(
        [&](const auto& m) {
          using T = std::decay_t<decltype(m)>;
          if constexpr (std::is_same_v<T, join_job>) {
            joins.push_back(m);
            if (silent_joins.count(s.device)) return;
            device_state st;
            st.device = s.device;
            st.job_id = m.job_id;
            st.tag = m.tag;
            if (auto mem = memory_by_node.find(node); mem != memory_by_node.end()) st.memory_capacity = mem->second;
            if (m.sharded) st.shard_count = 0;  // a sharded replica keeps nothing until its first plan
            if (auto h = held_by_node.find(node); h != held_by_node.end()) {
              st.optimizer_steps = h->second.first;
              st.checksum = h->second.second;
            }
            later([this, st]() { controller_->on(st); });
          } else if constexpr (std::is_same_v<T, step_plan>) {
            sent_plans.push_back({s.device, m});
            if (!m.shard_group.empty()) {
              const auto at = std::find(m.shard_group.begin(), m.shard_group.end(), s.device);
              shard_of[s.device] = {static_cast<std::uint32_t>(m.shard_group.size()),
                                    static_cast<std::uint32_t>(at - m.shard_group.begin())};
            }
            if (auto_reply && !silent.count(s.device)) {
              later([this, d = s.device, m]() { controller_->on(ready(d, m, 1000 + m.step)); });
            } else {
              plans_[s.device] = m;
            }
          } else if constexpr (std::is_same_v<T, commit_step>) {
            commits.push_back({s.device, m});
          } else if constexpr (std::is_same_v<T, abort_attempts>) {
            aborts.push_back({s.device, m});
          } else if constexpr (std::is_same_v<T, save_state>) {
            saves.push_back(m);
            savers.push_back(s.device);
            device_state st;
            st.job_id = m.job_id;
            st.tag = m.tag;
            st.checksum = 77;
            if (auto sh = shard_of.find(s.device); sh != shard_of.end())
              std::tie(st.shard_count, st.shard_index) = sh->second;
            later([this, st]() { controller_->on(st); });
          } else if constexpr (std::is_same_v<T, query_state>) {
            device_state st;
            st.device = s.device;
            st.job_id = m.job_id;
            st.tag = m.tag;
            st.checksum = diverged_final.count(s.device) ? 2 : 1;
            if (auto sh = shard_of.find(s.device); sh != shard_of.end()) {
              std::tie(st.shard_count, st.shard_index) = sh->second;
              st.checksum += 10 * sh->second.second;  // each shard its own bits
            }
            later([this, st]() { controller_->on(st); });
          } else if constexpr (std::is_same_v<T, leave_job>) {
            leaves.push_back(s.device);
          }
        },
        s.message);
  }

  void later(std::function<void()> f) { replies_.push_back(std::move(f)); }

  /// Commits of `step` (one per device per committed attempt).
  std::size_t commits_of(std::uint64_t step) const {
    std::size_t n = 0;
    for (const auto& [_, c] : commits) n += c.step == step;
    return n;
  }
  /// Distinct attempts whose plans were sent for `step`.
  std::set<std::uint64_t> attempts_of(std::uint64_t step) const {
    std::set<std::uint64_t> a;
    for (const auto& [_, p] : sent_plans)
      if (p.step == step) a.insert(p.attempt);
    return a;
  }
  bool logged(std::string_view text) const {
    return std::any_of(logs.begin(), logs.end(), [&](const std::string& l) { return l.find(text) != std::string::npos; });
  }

  job_controller& controller() { return *controller_; }
  std::map<std::uint32_t, step_plan>& waiting_plans() { return plans_; }

  // What happened.
  std::vector<job_command> commands;
  std::vector<join_job> joins;
  std::vector<std::pair<std::uint32_t, step_plan>> sent_plans;
  std::vector<std::pair<std::uint32_t, commit_step>> commits;
  std::vector<std::pair<std::uint32_t, abort_attempts>> aborts;
  std::vector<save_state> saves;
  std::vector<std::uint32_t> savers;
  /// The shard each device keeps after its latest plan: (count, index).
  std::map<std::uint32_t, std::pair<std::uint32_t, std::uint32_t>> shard_of;
  std::vector<std::uint32_t> leaves;
  std::vector<step_metrics> metrics;
  std::vector<std::string> logs;
  std::vector<job_event> events;
  std::optional<job_finished> finished;
  /// The kinds of the events, in order.
  std::vector<std::string> event_kinds() const {
    std::vector<std::string> k;
    for (const auto& e : events) k.push_back(e.kind);
    return k;
  }
  int plan_requests = 0;
  std::vector<scheduler::profile> plan_profiles;
  std::map<std::uint64_t, std::uint64_t> memory_by_node;  ///< bytes its devices report at join

  // Knobs.
  bool auto_reply = true;
  bool hold_plans = false;
  std::vector<plan_ready> held_plans;
  std::set<std::uint32_t> silent;         // devices that never answer step plans
  std::set<std::uint32_t> silent_joins;   // devices that never answer join_job
  std::set<std::uint32_t> diverged_final; // devices whose final checksum differs
  std::string index_error;
  /// What the devices of a node say they hold when they join: (optimizer steps, checksum).
  std::map<std::uint64_t, std::pair<std::uint64_t, std::uint64_t>> held_by_node;

private:
  job_spec spec_;
  core::manual_clock clock_;
  std::unique_ptr<batch_source> data_;
  std::optional<job_controller> controller_;
  std::map<std::uint32_t, step_plan> plans_;
  std::deque<std::function<void()>> replies_;
  std::map<std::uint64_t, core::time_point> timers_;
  std::set<std::uint64_t> dead_nodes_;
  std::uint64_t epoch_ = 0;
};

TEST(JobController, AFaultFreeJobCommitsEveryStepOnceAndLeavesTheDevices) {
  scripted_cluster c{small_spec(5)};
  c.start({{1, 2}, {2, 2}});
  ASSERT_TRUE(c.finished);
  EXPECT_EQ(c.finished->state, job_state::succeeded) << c.finished->message;
  ASSERT_EQ(c.metrics.size(), 5u);
  for (std::uint64_t s = 0; s < 5; ++s) {
    EXPECT_EQ(c.metrics[s].step, s);
    EXPECT_EQ(c.metrics[s].devices, 4u);
    EXPECT_EQ(c.metrics[s].retried, 0u);
    EXPECT_EQ(c.commits_of(s), 4u) << "step " << s;
    EXPECT_EQ(c.attempts_of(s).size(), 1u);
  }
  EXPECT_EQ(c.joins.size(), 4u);
  EXPECT_EQ(c.leaves.size(), 4u);
  EXPECT_TRUE(c.aborts.empty());
  EXPECT_EQ(c.controller().status().steps_done, 5u);
  EXPECT_EQ(c.controller().status().final_checksum, 1u);
}

// The memory constraint of every plan is measured, not nominal: the smallest capacity the
// devices report, unless the spec sets one; model states and per-token bytes come from the
// model's own memory accounting.
TEST(JobController, PlansUseTheSmallestMemoryTheDevicesReport) {
  scripted_cluster c{small_spec(3)};
  c.memory_by_node[1] = 8ull << 30;
  c.memory_by_node[2] = 6ull << 30;
  c.start({{1, 2}, {2, 2}});
  ASSERT_TRUE(c.finished);
  EXPECT_EQ(c.finished->state, job_state::succeeded) << c.finished->message;
  ASSERT_FALSE(c.plan_profiles.empty());
  const auto& p = c.plan_profiles.back();
  EXPECT_DOUBLE_EQ(p.mem_limit_gb, 6.0);
  EXPECT_EQ(p.state_shards, 1) << "every device holds a full replica";
  const auto est = kernels::estimate_memory(kernel_config(small_spec(3).model), 2, 1);
  EXPECT_NEAR(p.act_per_token_mb * 1024 * 1024, est.per_token, 0.05 * est.per_token);
  EXPECT_GT(p.params_b, 0.0);
}

TEST(JobController, ASpecMemoryLimitTooSmallForASequenceFailsTheJobNamingItAndTheLimit) {
  auto spec = small_spec(3);
  spec.memory_limit_gb = 0.0005;  // 0.5 MB per device: not even one long sequence fits
  scripted_cluster c{spec};
  c.memory_by_node[1] = 8ull << 30;
  c.start({{1, 2}});
  ASSERT_TRUE(c.finished);
  EXPECT_EQ(c.finished->state, job_state::failed);
  EXPECT_NE(c.finished->message.find("cannot fit"), std::string::npos) << c.finished->message;
  EXPECT_NE(c.finished->message.find("0.0005 GB per device"), std::string::npos) << c.finished->message;
  ASSERT_FALSE(c.plan_profiles.empty());
  EXPECT_DOUBLE_EQ(c.plan_profiles.back().mem_limit_gb, 0.0005);
}

TEST(JobController, TheNextBatchIsPlannedWhileTheStepRuns) {
  scripted_cluster c{small_spec(4)};
  c.auto_reply = false;
  c.start({{1, 2}});
  // Step 0 is out; the plan of step 1 was asked for before any device answered.
  EXPECT_EQ(c.attempts_of(0).size(), 1u);
  EXPECT_EQ(c.plan_requests, 2);
  c.reply_all();
  EXPECT_EQ(c.plan_requests, 3) << "step 1 used the plan made while step 0 ran";
  EXPECT_EQ(c.metrics.at(0).overhead_ms, 0.0);
}

TEST(JobController, ANodeLostMidStepReRunsTheSameBatchOnTheSurvivors) {
  scripted_cluster c{small_spec(4)};
  c.auto_reply = false;
  c.start({{1, 2}, {2, 2}});
  c.reply_all();  // step 0
  c.reply_all();  // step 1
  ASSERT_EQ(c.metrics.size(), 2u);
  // Step 2: devices 0 and 1 report, then node 2 (devices 2, 3) dies.
  auto& waiting = c.waiting_plans();
  ASSERT_EQ(waiting.size(), 4u);
  const auto tokens = waiting.at(0).global_tokens;
  c.feed(c.ready(0, waiting.at(0), 1002));
  c.feed(c.ready(1, waiting.at(1), 1002));
  waiting.clear();
  c.lose_node(2);
  // Aborted everywhere left, re-planned for two devices, same batch.
  ASSERT_FALSE(c.aborts.empty());
  ASSERT_EQ(c.waiting_plans().size(), 2u);
  EXPECT_EQ(c.waiting_plans().at(0).step, 2u);
  EXPECT_EQ(c.waiting_plans().at(0).world, (std::vector<std::uint32_t>{0, 1}));
  EXPECT_EQ(c.waiting_plans().at(0).global_tokens, tokens);
  c.reply_all();
  c.reply_all();
  ASSERT_TRUE(c.finished);
  EXPECT_EQ(c.finished->state, job_state::succeeded) << c.finished->message;
  EXPECT_EQ(c.commits_of(2), 2u) << "committed once, by the survivors";
  EXPECT_EQ(c.metrics.at(2).retried, 1u);
  EXPECT_EQ(c.metrics.at(2).devices, 2u);
  EXPECT_EQ(c.metrics.size(), 4u);
  // The same story as typed events, for tools.
  EXPECT_EQ(c.event_kinds(), (std::vector<std::string>{"node_lost", "attempt_aborted", "finished"}));
  EXPECT_EQ(c.events.front().step, 2u);
  EXPECT_NE(c.events.front().detail.find("node 2"), std::string::npos) << c.events.front().detail;
}

TEST(JobController, AStepFailedBeforeTheMembershipEventWaitsForItInsteadOfBurningRetries) {
  auto spec = small_spec(3);
  spec.fault.max_retries = 3;
  scripted_cluster c{spec};
  c.auto_reply = false;
  c.start({{1, 2}, {2, 2}});
  c.reply_all();  // step 0
  auto waiting = c.waiting_plans();
  c.waiting_plans().clear();
  // A survivor's collective fails first (the head has not noticed the dead node yet).
  c.feed(c.failure(0, waiting.at(0)));
  const auto attempts = c.attempts_of(1).size();
  EXPECT_EQ(attempts, 1u) << "no new attempt during the grace period";
  c.advance(100ms);  // still inside the 300 ms grace
  EXPECT_EQ(c.attempts_of(1).size(), 1u);
  c.lose_node(2);  // the membership event ends the wait at once
  EXPECT_EQ(c.attempts_of(1).size(), 2u);
  EXPECT_EQ(c.waiting_plans().at(0).world, (std::vector<std::uint32_t>{0, 1}));
  c.reply_all();
  c.reply_all();
  ASSERT_TRUE(c.finished);
  EXPECT_EQ(c.finished->state, job_state::succeeded) << c.finished->message;
  EXPECT_EQ(c.metrics.at(1).retried, 1u);
}

TEST(JobController, AFailureWithNoMembershipChangeIsRetriedAfterTheGracePeriod) {
  scripted_cluster c{small_spec(2)};
  c.auto_reply = false;
  c.start({{1, 2}});
  auto waiting = c.waiting_plans();
  c.waiting_plans().clear();
  c.feed(c.failure(1, waiting.at(1)));
  c.advance(299ms);
  EXPECT_EQ(c.attempts_of(0).size(), 1u);
  c.advance(1ms);
  EXPECT_EQ(c.attempts_of(0).size(), 2u) << "the same devices run the batch again";
  c.reply_all();
  c.reply_all();
  ASSERT_TRUE(c.finished);
  EXPECT_EQ(c.finished->state, job_state::succeeded);
  EXPECT_GT(c.metrics.at(0).recovery_ms, 0.0);
}

TEST(JobController, AGradReadyFromAnOlderAttemptArrivingLateIsIgnored) {
  auto spec = small_spec(1);
  spec.fault.membership_grace_ms = 0;
  scripted_cluster c{spec};
  c.auto_reply = false;
  c.start({{1, 2}});
  auto first = c.waiting_plans();
  c.waiting_plans().clear();
  c.feed(c.failure(0, first.at(0)));  // attempt 1 aborted, attempt 2 sent
  ASSERT_EQ(c.attempts_of(0).size(), 2u);
  auto second = c.waiting_plans();
  c.waiting_plans().clear();
  // Device 1's report of attempt 1 arrives after attempt 2 started, with another checksum.
  c.feed(c.ready(1, first.at(1), 999));
  c.feed(c.ready(0, second.at(0), 1000));
  EXPECT_TRUE(c.commits.empty()) << "one report of the live attempt is not enough";
  c.feed(c.ready(1, second.at(1), 1000));
  ASSERT_EQ(c.commits.size(), 2u);
  EXPECT_EQ(c.commits[0].second.attempt, second.at(0).attempt);
  ASSERT_TRUE(c.finished);
  EXPECT_EQ(c.finished->state, job_state::succeeded);
}

TEST(JobController, MismatchedReplicaChecksumsFailTheJobWithoutCommitting) {
  scripted_cluster c{small_spec(3)};
  c.auto_reply = false;
  c.start({{1, 2}});
  auto w = c.waiting_plans();
  c.feed(c.ready(0, w.at(0), 1000));
  c.feed(c.ready(1, w.at(1), 4242));
  ASSERT_TRUE(c.finished);
  EXPECT_EQ(c.finished->state, job_state::failed);
  EXPECT_NE(c.finished->message.find("replicas diverged at step 0"), std::string::npos) << c.finished->message;
  EXPECT_TRUE(c.commits.empty());
  EXPECT_EQ(c.leaves.size(), 2u);
}

TEST(JobController, ADeviceSilentPastItsTimeoutAbortsTheAttempt) {
  auto spec = small_spec(1);
  spec.fault.device_timeout_ms = 5000;
  spec.fault.membership_grace_ms = 0;
  scripted_cluster c{spec};
  c.silent.insert(1);
  c.start({{1, 2}});
  c.advance(4000ms);
  EXPECT_EQ(c.attempts_of(0).size(), 1u);
  c.silent.clear();
  c.advance(1000ms);
  EXPECT_TRUE(c.logged("no report from 1 devices within 5000 ms")) << ::testing::PrintToString(c.logs);
  EXPECT_EQ(c.attempts_of(0).size(), 2u);
  ASSERT_TRUE(c.finished);
  EXPECT_EQ(c.finished->state, job_state::succeeded);
}

TEST(JobController, ReportsKeepASlowAttemptAlive) {
  auto spec = small_spec(1);
  spec.fault.device_timeout_ms = 5000;
  scripted_cluster c{spec};
  c.auto_reply = false;
  c.start({{1, 2}});
  auto w = c.waiting_plans();
  c.advance(4000ms);
  c.feed(c.ready(0, w.at(0), 1000));
  c.advance(4000ms);  // 8 s after dispatch, 4 s after the last report
  EXPECT_EQ(c.attempts_of(0).size(), 1u);
  c.feed(c.ready(1, w.at(1), 1000));
  ASSERT_TRUE(c.finished);
  EXPECT_EQ(c.finished->state, job_state::succeeded);
}

TEST(JobController, LosingEveryReplicaRewindsToTheLatestCheckpoint) {
  auto spec = small_spec(5);
  spec.checkpoint_dir = "/ckpt";
  spec.checkpoint_every = 2;
  scripted_cluster c{spec};
  c.auto_reply = false;
  c.start({{1, 2}});
  for (int s = 0; s < 3; ++s) c.reply_all();  // steps 0..2; a checkpoint after step 2
  ASSERT_EQ(c.saves.size(), 1u);
  EXPECT_EQ(c.saves[0].path, "/ckpt/step-000002.ckpt");
  c.waiting_plans().clear();
  c.lose_node(1);  // every device holding the state, mid step 3
  EXPECT_TRUE(c.logged("no devices left"));
  c.join_node(3, 2);
  // The new devices load the checkpoint and the job re-runs from step 2.
  ASSERT_FALSE(c.joins.empty());
  EXPECT_EQ(c.joins.back().resume_from, "/ckpt/step-000002.ckpt");
  ASSERT_FALSE(c.waiting_plans().empty());
  EXPECT_EQ(c.waiting_plans().begin()->second.step, 2u);
  EXPECT_EQ(c.waiting_plans().begin()->second.sync_source, -1) << "every device loaded the same state";
  for (int s = 0; s < 3; ++s) c.reply_all();
  ASSERT_TRUE(c.finished);
  EXPECT_EQ(c.finished->state, job_state::succeeded) << c.finished->message;
  EXPECT_TRUE(c.logged("restarted from /ckpt/step-000002.ckpt (step 2)"));
  EXPECT_EQ(c.controller().status().steps_done, 5u);
  const auto kinds = c.event_kinds();
  EXPECT_NE(std::find(kinds.begin(), kinds.end(), "checkpoint"), kinds.end());
  EXPECT_NE(std::find(kinds.begin(), kinds.end(), "rewind"), kinds.end());
  EXPECT_EQ(kinds.back(), "finished");
}

TEST(JobController, LosingEveryReplicaWithoutACheckpointFailsTheJobWithTheReason) {
  scripted_cluster c{small_spec(5)};
  c.auto_reply = false;
  c.start({{1, 2}});
  c.reply_all();
  c.waiting_plans().clear();
  c.lose_node(1);
  c.join_node(2, 2);
  ASSERT_TRUE(c.finished);
  EXPECT_EQ(c.finished->state, job_state::failed);
  EXPECT_EQ(c.finished->message, "every device holding the model state was lost and there is no checkpoint");
}

TEST(JobController, EveryReplicaLostButANodeReturnsHoldingTheCommittedStateGoesOnWithoutACheckpoint) {
  // Falsely suspected: the node was hung, not dead. It registers again (node 2) and its devices
  // still hold the state of the last commit; the job continues from it instead of failing.
  scripted_cluster c{small_spec(5)};
  c.auto_reply = false;
  c.start({{1, 2}});
  c.reply_all();  // step 0 commits; step 1 starts from the state with checksum 1001
  c.reply_all();  // step 1 commits
  c.waiting_plans().clear();
  c.lose_node(1);
  ASSERT_FALSE(c.finished);
  c.held_by_node[2] = {2, 1002};  // two optimizer steps; the checksum step 2 started from
  c.join_node(2, 2);
  ASSERT_FALSE(c.finished) << c.finished->message;
  EXPECT_TRUE(c.logged("every replica was lost, but 2 returning devices still hold the state of step 2"));
  c.auto_reply = true;
  c.reply_all();
  ASSERT_TRUE(c.finished);
  EXPECT_EQ(c.finished->state, job_state::succeeded) << c.finished->message;
  EXPECT_EQ(c.commits_of(2), 2u) << "step 2 runs once, on the returned devices";
}

TEST(JobController, ReturningDevicesWhoseStateIsNotTheLastCommitAreNotAdopted) {
  scripted_cluster c{small_spec(5)};
  c.auto_reply = false;
  c.start({{1, 2}});
  c.reply_all();
  c.reply_all();
  c.waiting_plans().clear();
  c.lose_node(1);
  c.held_by_node[2] = {1, 999};  // one commit behind, and not the state step 1 started from
  c.join_node(2, 2);
  ASSERT_TRUE(c.finished);
  EXPECT_EQ(c.finished->state, job_state::failed);
  EXPECT_EQ(c.finished->message, "every device holding the model state was lost and there is no checkpoint");
}

TEST(JobController, ReturningDevicesThatMissedTheLastCommitRunThatStepAgainWithoutPublishingItTwice) {
  // The commit of step 1 was decided (and published) but never reached the devices: they still
  // hold the state step 1 started from (checksum 1001), so step 1 runs again on them.
  scripted_cluster c{small_spec(5)};
  c.auto_reply = false;
  c.start({{1, 2}});
  c.reply_all();
  c.reply_all();
  ASSERT_EQ(c.metrics.size(), 2u);
  c.waiting_plans().clear();
  c.lose_node(1);
  c.held_by_node[2] = {1, 1001};
  c.join_node(2, 2);
  ASSERT_FALSE(c.finished) << c.finished->message;
  EXPECT_TRUE(c.logged("no returning device applied the commit of step 1"));
  ASSERT_FALSE(c.waiting_plans().empty());
  EXPECT_EQ(c.waiting_plans().begin()->second.step, 1u);
  c.auto_reply = true;
  c.reply_all();
  ASSERT_TRUE(c.finished);
  EXPECT_EQ(c.finished->state, job_state::succeeded) << c.finished->message;
  ASSERT_EQ(c.metrics.size(), 5u) << "every step published once";
  for (std::uint64_t s = 0; s < 5; ++s) EXPECT_EQ(c.metrics[s].step, s);
  EXPECT_EQ(c.controller().status().steps_done, 5u);
}

TEST(JobController, AJobTakenBackByARestartedHeadContinuesAfterItsLastRecordedStep) {
  // The head went down after recording step 2 (steps_done 3); the restarted head takes the job
  // back and the devices, which never stopped, report the state of step 3.
  scripted_cluster c{small_spec(6)};
  c.auto_reply = false;
  c.held_by_node[1] = {3, 1003};
  recovered_progress r;
  r.steps_done = 3;
  r.first_loss = 2.5;
  r.last_loss = 2.0;
  r.last_step_checksum = 1002;
  r.aborted_attempts = 4;
  r.incarnation = 1;
  c.start({{1, 2}}, {}, r);
  ASSERT_FALSE(c.finished) << c.finished->message;
  EXPECT_TRUE(c.logged("taken back by a restarted head at step 3 of 6"));
  ASSERT_EQ(c.waiting_plans().size(), 2u);
  const auto& p = c.waiting_plans().begin()->second;
  EXPECT_EQ(p.step, 3u) << "no step repeated";
  EXPECT_GT(p.attempt, 1ull << 32) << "attempts above every earlier run's";
  EXPECT_GE(p.comm_epoch, 1ull << 32) << "communicator epochs above every earlier run's";
  EXPECT_EQ(c.controller().status().aborted_attempts, 4u);
  c.auto_reply = true;
  c.reply_all();
  ASSERT_TRUE(c.finished);
  EXPECT_EQ(c.finished->state, job_state::succeeded) << c.finished->message;
  ASSERT_EQ(c.metrics.size(), 3u);
  EXPECT_EQ(c.metrics.front().step, 3u);
  EXPECT_EQ(c.controller().status().first_loss, 2.5);
}

TEST(JobController, ATakenBackJobWhoseNodesRejoinUnderNewIdsGoesOnFromTheirReplicas) {
  // The restarted head lost the restored nodes before their devices answered (their
  // heartbeats were late); they join again as new nodes, their devices still holding step 3.
  scripted_cluster c{small_spec(6)};
  c.auto_reply = false;
  c.silent_joins = {0, 1};
  recovered_progress r;
  r.steps_done = 3;
  r.last_step_checksum = 1002;
  c.start({{1, 2}}, {}, r);
  c.lose_node(1);
  ASSERT_FALSE(c.finished) << c.finished->message;
  c.held_by_node[2] = {3, 1003};
  c.join_node(2, 2);
  ASSERT_FALSE(c.finished) << c.finished->message;
  ASSERT_FALSE(c.waiting_plans().empty());
  EXPECT_EQ(c.waiting_plans().begin()->second.step, 3u);
  c.auto_reply = true;
  c.reply_all();
  ASSERT_TRUE(c.finished);
  EXPECT_EQ(c.finished->state, job_state::succeeded) << c.finished->message;
}

TEST(JobController, ATakenBackJobWhoseDevicesMissedTheLastCommitRunsThatStepAgain) {
  // The head died between recording step 2 and telling any device: the devices hold the state
  // step 2 started from.
  scripted_cluster c{small_spec(4)};
  c.auto_reply = false;
  c.held_by_node[1] = {2, 1002};
  recovered_progress r;
  r.steps_done = 3;
  r.last_step_checksum = 1002;
  c.start({{1, 2}}, {}, r);
  ASSERT_FALSE(c.finished) << c.finished->message;
  EXPECT_EQ(c.waiting_plans().begin()->second.step, 2u);
  c.auto_reply = true;
  c.reply_all();
  ASSERT_TRUE(c.finished);
  EXPECT_EQ(c.finished->state, job_state::succeeded) << c.finished->message;
  ASSERT_EQ(c.metrics.size(), 1u) << "step 2 is not published again";
  EXPECT_EQ(c.metrics.front().step, 3u);
}

TEST(JobController, ATakenBackJobWithNoDeviceHoldingItsStateFallsBackToItsCheckpoint) {
  scripted_cluster c{small_spec(4)};
  c.auto_reply = false;
  c.held_by_node[1] = {0, 5};  // fresh devices (their node was restarted too)
  recovered_progress r;
  r.steps_done = 3;
  r.last_step_checksum = 1002;
  c.start({{1, 2}}, checkpoint_point{2, "/ckpt/step-000002.ckpt", 0, 0}, r);
  ASSERT_FALSE(c.finished) << c.finished->message;
  ASSERT_FALSE(c.waiting_plans().empty());
  EXPECT_EQ(c.waiting_plans().begin()->second.step, 2u);
  EXPECT_EQ(c.joins.back().resume_from, "/ckpt/step-000002.ckpt");
}

TEST(JobController, ADeviceJoinsAtTheNextStepBoundaryAndGetsTheStateFromALiveReplica) {
  scripted_cluster c{small_spec(3)};
  c.auto_reply = false;
  c.start({{1, 2}});
  EXPECT_EQ(c.joins.size(), 2u);
  c.join_node(2, 2);  // mid step 0
  EXPECT_EQ(c.joins.size(), 2u) << "no join while a step runs";
  c.reply_all();  // step 0 commits on devices 0, 1
  EXPECT_EQ(c.commits_of(0), 2u);
  EXPECT_EQ(c.joins.size(), 4u);
  EXPECT_EQ(c.joins[2].resume_from, "") << "joiners get the state from a replica, not a checkpoint";
  ASSERT_EQ(c.waiting_plans().size(), 4u);
  const auto& p = c.waiting_plans().at(2);
  EXPECT_EQ(p.step, 1u);
  EXPECT_EQ(p.world, (std::vector<std::uint32_t>{0, 1, 2, 3}));
  EXPECT_EQ(p.sync_source, 0);
  c.reply_all();
  const auto& p2 = c.waiting_plans().at(2);
  EXPECT_EQ(p2.sync_source, -1) << "synced after their first step";
  c.reply_all();
  ASSERT_TRUE(c.finished);
  EXPECT_EQ(c.finished->state, job_state::succeeded);
  EXPECT_EQ(c.metrics.back().devices, 4u);
}

TEST(JobController, CancelMidStepAbortsTheAttemptAndReleasesTheDevices) {
  scripted_cluster c{small_spec(10)};
  c.auto_reply = false;
  c.start({{1, 2}});
  c.reply_all();
  c.feed(cancel_requested{});
  ASSERT_TRUE(c.finished);
  EXPECT_EQ(c.finished->state, job_state::cancelled);
  EXPECT_EQ(c.aborts.size(), 2u);
  EXPECT_EQ(c.leaves.size(), 2u);
  EXPECT_EQ(c.commits_of(1), 0u);
  EXPECT_EQ(c.controller().status().steps_done, 1u);
}

TEST(JobController, ExhaustingTheRetryBudgetFailsTheJobNamingTheLastReason) {
  auto spec = small_spec(2);
  spec.fault.max_retries = 2;
  spec.fault.membership_grace_ms = 0;
  scripted_cluster c{spec};
  c.auto_reply = false;
  c.start({{1, 2}});
  for (int i = 0; i < 3; ++i) {
    auto w = c.waiting_plans();
    c.waiting_plans().clear();
    c.feed(c.failure(0, w.at(0)));
  }
  ASSERT_TRUE(c.finished);
  EXPECT_EQ(c.finished->state, job_state::failed);
  EXPECT_EQ(c.finished->message, "step 0 failed 3 times: device 0: collective failed: connection reset");
  EXPECT_EQ(c.attempts_of(0).size(), 3u);
  EXPECT_EQ(c.controller().status().aborted_attempts, 3u) << "a failed job still says how many attempts it aborted";
  EXPECT_EQ(c.controller().status().final_checksum, 0u);
}

TEST(JobController, TooFewDevicesFailsAfterTheDeviceWait) {
  auto spec = small_spec(2);
  spec.min_devices = 4;
  spec.fault.device_wait_ms = 2000;
  scripted_cluster c{spec};
  c.start({{1, 2}});
  c.advance(1900ms);
  EXPECT_FALSE(c.finished);
  c.advance(200ms);
  ASSERT_TRUE(c.finished);
  EXPECT_EQ(c.finished->message, "only 2 of the 4 cpu devices the job needs are available");
}

TEST(JobController, AJobWaitsForMinDevicesAndStartsWhenANodeJoins) {
  auto spec = small_spec(1);
  spec.min_devices = 4;
  scripted_cluster c{spec};
  c.start({{1, 2}});
  EXPECT_TRUE(c.sent_plans.empty());
  c.join_node(2, 2);
  ASSERT_TRUE(c.finished);
  EXPECT_EQ(c.finished->state, job_state::succeeded);
  EXPECT_EQ(c.metrics.at(0).devices, 4u);
}

TEST(JobController, ADeviceThatDoesNotAnswerItsJoinIsLeftOut) {
  auto spec = small_spec(1);
  spec.fault.join_timeout_ms = 1000;
  scripted_cluster c{spec};
  c.silent_joins.insert(1);
  c.start({{1, 2}});
  EXPECT_TRUE(c.sent_plans.empty());
  c.advance(1000ms);
  ASSERT_TRUE(c.finished);
  EXPECT_EQ(c.finished->state, job_state::succeeded);
  EXPECT_EQ(c.metrics.at(0).devices, 1u);
  EXPECT_TRUE(c.logged("could not join: no answer"));
}

TEST(JobController, ReplicasThatDifferAtTheEndFailTheJob) {
  scripted_cluster c{small_spec(1)};
  c.diverged_final.insert(1);
  c.start({{1, 2}});
  ASSERT_TRUE(c.finished);
  EXPECT_EQ(c.finished->state, job_state::failed);
  EXPECT_EQ(c.finished->message, "replicas differ after the last step (device 1)");
}

TEST(JobController, CalibrationRunsAWarmUpAndATimedProbeBeforeTheFirstStep) {
  auto spec = small_spec(1);
  spec.calibrate = true;
  scripted_cluster c{spec};
  c.start({{1, 2}});
  ASSERT_TRUE(c.finished);
  EXPECT_EQ(c.finished->state, job_state::succeeded);
  std::size_t probes = 0;
  for (const auto& [_, p] : c.sent_plans) probes += p.calibrate;
  EXPECT_EQ(probes, 4u) << "two probe attempts on two devices";
  EXPECT_TRUE(c.commits_of(~std::uint64_t{0}) == 0) << "probes are never committed";
}

TEST(JobController, TheCostModelIsRefitToTheGroupTimesMeasuredInTraining) {
  // The devices run at 0.05 ms per token plus 2 ms per group, and the start-up probes 3 times
  // slower: the calibrated profile is off until training's own groups correct it.
  auto device_ms = [](int degree, const std::vector<std::int64_t>& lengths) {
    double t = 2.0;
    for (auto l : lengths) t += 0.05 * static_cast<double>(l) / degree;
    return t;
  };
  auto profile_after = [&](std::uint64_t steps) {
    auto spec = small_spec(steps);
    spec.calibrate = true;
    scripted_cluster c{spec};
    c.group_ms = device_ms;
    c.probe_slowdown = 3.0;
    c.start({{1, 2}});
    EXPECT_TRUE(c.finished && c.finished->state == job_state::succeeded);
    return nlohmann::json::parse(c.controller().status().calibration);
  };
  const auto calibrated = profile_after(1);
  EXPECT_EQ(calibrated["name"], "cpu-calibrated") << "one step: the start-up calibration only";
  EXPECT_NEAR(calibrated["alpha2"].get<double>(), 0.15, 0.01) << calibrated.dump();
  const auto refit = profile_after(8);
  EXPECT_EQ(refit["name"], "cpu-online") << "refit once the groups measured in training determine it";
  EXPECT_NEAR(refit["alpha2"].get<double>(), 0.05, 0.005) << refit.dump();
  EXPECT_NEAR(refit["beta1"].get<double>(), 2.0, 0.5) << refit.dump();
}

TEST(JobController, ACheckpointIsIndexedOnlyAfterTheDeviceWroteIt) {
  auto spec = small_spec(2);
  spec.checkpoint_dir = "/ckpt";
  spec.checkpoint_every = 1;
  scripted_cluster c{spec};
  c.index_error = "disk full";
  c.start({{1, 1}});
  ASSERT_TRUE(c.finished);
  EXPECT_EQ(c.finished->state, job_state::succeeded);
  EXPECT_EQ(c.saves.size(), 2u);
  EXPECT_TRUE(c.logged("warning: checkpoint at step 1 failed: its index could not be written: disk full"));
}

TEST(JobController, CheckpointsFailingRepeatedlyFailTheJobUnlessToldOtherwise) {
  auto spec = small_spec(6);
  spec.checkpoint_dir = "/ckpt";
  spec.checkpoint_every = 1;
  {
    scripted_cluster c{spec};
    c.index_error = "disk full";
    c.start({{1, 1}});
    ASSERT_TRUE(c.finished);
    EXPECT_EQ(c.finished->state, job_state::failed);
    EXPECT_NE(c.finished->message.find("3 checkpoints failed in a row"), std::string::npos) << c.finished->message;
    EXPECT_NE(c.finished->message.find("disk full"), std::string::npos) << c.finished->message;
    EXPECT_EQ(c.saves.size(), 3u);
  }
  spec.fault.max_checkpoint_failures = 0;
  scripted_cluster c{spec};
  c.index_error = "disk full";
  c.start({{1, 1}});
  ASSERT_TRUE(c.finished);
  EXPECT_EQ(c.finished->state, job_state::succeeded) << "0: checkpoint failures are warnings only";
  EXPECT_EQ(c.saves.size(), 6u);
}

TEST(JobController, APlanForAWorldThatChangedIsNotUsed) {
  scripted_cluster c{small_spec(2)};
  c.hold_plans = true;
  c.start({{1, 2}, {2, 2}});
  ASSERT_EQ(c.held_plans.size(), 1u);
  c.lose_node(2);
  // The step is planned again for two devices at once; the plan for four arrives late.
  ASSERT_EQ(c.held_plans.size(), 2u);
  auto held = std::move(c.held_plans);
  c.held_plans.clear();
  c.hold_plans = false;
  c.feed(held[0]);
  EXPECT_TRUE(c.sent_plans.empty()) << "the plan for the old world is not used";
  c.feed(held[1]);
  ASSERT_FALSE(c.sent_plans.empty());
  EXPECT_EQ(c.sent_plans.front().second.world, (std::vector<std::uint32_t>{0, 1}));
  ASSERT_TRUE(c.finished);
  EXPECT_EQ(c.finished->state, job_state::succeeded);
}

TEST(JobController, AnUnreachableDeviceLeavesAtOnceAndRejoinsWhileItsNodeIsAMember) {
  scripted_cluster c{small_spec(3)};
  c.auto_reply = false;
  c.start({{1, 2}});
  c.reply_all();  // step 0
  c.waiting_plans().clear();
  // Device 1's connection breaks mid step 1; the head still counts its node alive.
  c.feed(device_down{1, "connection to node1:1 lost"});
  EXPECT_TRUE(c.logged("device 1 (cpu:1) unreachable"));
  ASSERT_EQ(c.waiting_plans().size(), 1u) << "step 1 re-runs at once on the device left";
  EXPECT_EQ(c.waiting_plans().at(0).world, (std::vector<std::uint32_t>{0}));
  c.advance(100ms);  // the next lookup tick finds the device again
  c.reply_all();     // step 1 commits on device 0
  // It rejoins at the step boundary under a new index, taking the state from the live replica.
  ASSERT_EQ(c.joins.size(), 3u);
  EXPECT_EQ(c.joins.back().device, 2u);
  ASSERT_EQ(c.waiting_plans().size(), 2u);
  EXPECT_EQ(c.waiting_plans().at(2).step, 2u);
  EXPECT_EQ(c.waiting_plans().at(2).world, (std::vector<std::uint32_t>{0, 2}));
  EXPECT_EQ(c.waiting_plans().at(2).sync_source, 0);
  c.reply_all();
  ASSERT_TRUE(c.finished);
  EXPECT_EQ(c.finished->state, job_state::succeeded) << c.finished->message;
  EXPECT_EQ(c.metrics.at(1).retried, 1u);
  EXPECT_EQ(c.metrics.at(1).devices, 1u);
  EXPECT_EQ(c.metrics.at(2).devices, 2u);
}

TEST(JobController, AnUnreachableDeviceOfALostNodeIsNotLookedUpAgain) {
  scripted_cluster c{small_spec(2)};
  c.auto_reply = false;
  c.start({{1, 1}, {2, 1}});
  c.waiting_plans().clear();
  c.lose_node(2);
  c.feed(device_down{1, "connection lost"});
  c.reply_all();
  c.reply_all();
  ASSERT_TRUE(c.finished);
  EXPECT_EQ(c.finished->state, job_state::succeeded);
  EXPECT_EQ(c.joins.size(), 2u);
}

TEST(JobController, AnUnreachableMemberEndsTheGracePeriodAtOnce) {
  scripted_cluster c{small_spec(2)};
  c.auto_reply = false;
  c.start({{1, 1}, {2, 1}});
  auto w = c.waiting_plans();
  c.waiting_plans().clear();
  c.feed(c.failure(0, w.at(0)));  // a collective failed: wait for the head
  EXPECT_EQ(c.attempts_of(0).size(), 1u);
  c.feed(device_down{1, "connection to node2:1 lost"});  // the proxy saw the peer go first
  EXPECT_EQ(c.attempts_of(0).size(), 2u) << "re-run at once, without waiting out the grace period";
  EXPECT_EQ(c.waiting_plans().at(0).world, (std::vector<std::uint32_t>{0}));
}

TEST(JobController, ACancelBeforeTheJobStartedEndsItCancelled) {
  scripted_cluster c{small_spec(2)};
  c.feed(cancel_requested{});
  ASSERT_TRUE(c.finished);
  EXPECT_EQ(c.finished->state, job_state::cancelled);
  EXPECT_TRUE(c.sent_plans.empty());
}

}  // namespace
}  // namespace flexsp::actors

namespace flexsp::actors {
namespace {

job_spec sharded_spec(std::uint64_t steps, sharding_mode mode) {
  auto s = small_spec(steps);
  s.sharding = mode;
  return s;
}

/// The plans of `step` sent last (the latest attempt), by device.
std::map<std::uint32_t, step_plan> latest_plans(const scripted_cluster& c, std::uint64_t step) {
  std::map<std::uint32_t, step_plan> out;
  for (const auto& [d, p] : c.sent_plans)
    if (p.step == step && (!out.count(d) || out[d].attempt <= p.attempt)) out[d] = p;
  return out;
}

TEST(ShardedJobController, Zero3ShardsOverEveryDeviceAndThePlannerCountsThem) {
  scripted_cluster c{sharded_spec(3, sharding_mode::zero3)};
  c.start({{1, 2}, {2, 2}});
  ASSERT_TRUE(c.finished);
  EXPECT_EQ(c.finished->state, job_state::succeeded) << c.finished->message;
  for (const auto& j : c.joins) EXPECT_TRUE(j.sharded);
  const auto plans = latest_plans(c, 0);
  ASSERT_EQ(plans.size(), 4u);
  for (const auto& [d, p] : plans) {
    EXPECT_EQ(p.shard_group, (std::vector<std::uint32_t>{0, 1, 2, 3}));
    EXPECT_EQ(p.replica_group, (std::vector<std::uint32_t>{d}));
    EXPECT_TRUE(p.sync_shards.empty()) << "every device cuts its shard from the seed";
  }
  EXPECT_EQ(c.plan_profiles.back().state_shards, 4);
  // Each shard has its own fingerprint; the job's final checksum combines them.
  EXPECT_EQ(c.controller().status().final_checksum, kernels::combine_fingerprints(std::vector<std::uint64_t>{1, 11, 21, 31}));
}

TEST(ShardedJobController, HsdpShardsWithinANodeAndReplicatesAcrossNodes) {
  scripted_cluster c{sharded_spec(2, sharding_mode::hsdp)};
  c.start({{1, 2}, {2, 2}});
  ASSERT_TRUE(c.finished);
  EXPECT_EQ(c.finished->state, job_state::succeeded) << c.finished->message;
  const auto plans = latest_plans(c, 1);
  EXPECT_EQ(plans.at(0).shard_group, (std::vector<std::uint32_t>{0, 1}));
  EXPECT_EQ(plans.at(3).shard_group, (std::vector<std::uint32_t>{2, 3}));
  EXPECT_EQ(plans.at(1).replica_group, (std::vector<std::uint32_t>{1, 3}));
  EXPECT_EQ(c.plan_profiles.back().state_shards, 2);
}

TEST(ShardedJobController, UnderHsdpANodeLostMidStepReRunsOnTheSurvivorsWithoutACheckpoint) {
  auto spec = sharded_spec(4, sharding_mode::hsdp);
  spec.checkpoint_dir = "/ckpt";
  spec.checkpoint_every = 100;  // only at the end
  scripted_cluster c{spec};
  c.auto_reply = false;
  c.start({{1, 2}, {2, 2}});
  c.reply_all();  // step 0
  c.reply_all();  // step 1
  auto& waiting = c.waiting_plans();
  ASSERT_EQ(waiting.size(), 4u);
  c.feed(c.ready(0, waiting.at(0), 1002));
  waiting.clear();
  c.lose_node(1);  // devices 0 and 1: the other node keeps a whole copy of every shard
  ASSERT_EQ(c.waiting_plans().size(), 2u);
  const auto& p = c.waiting_plans().at(2);
  EXPECT_EQ(p.step, 2u);
  EXPECT_EQ(p.shard_group, (std::vector<std::uint32_t>{2, 3}));
  EXPECT_TRUE(p.sync_shards.empty()) << "the survivors keep their shards as they are";
  c.reply_all();
  c.reply_all();
  ASSERT_TRUE(c.finished);
  EXPECT_EQ(c.finished->state, job_state::succeeded) << c.finished->message;
  for (const auto& j : c.joins) EXPECT_EQ(j.resume_from, "") << "no checkpoint was read";
  EXPECT_FALSE(c.logged("no live copy"));
  EXPECT_EQ(c.commits_of(2), 2u);
}

TEST(ShardedJobController, UnderZero3ANodeLostRestartsFromTheLatestCheckpointAndSaysSo) {
  auto spec = sharded_spec(4, sharding_mode::zero3);
  spec.checkpoint_dir = "/ckpt";
  spec.checkpoint_every = 1;
  scripted_cluster c{spec};
  c.auto_reply = false;
  c.start({{1, 2}, {2, 2}});
  c.reply_all();  // step 0, checkpoint 1 (written by every shard's holder)
  ASSERT_EQ(c.saves.size(), 4u);
  EXPECT_EQ(std::set<std::uint32_t>(c.savers.begin(), c.savers.end()), (std::set<std::uint32_t>{0, 1, 2, 3}));
  c.reply_all();  // step 1, checkpoint 2
  c.waiting_plans().clear();
  c.lose_node(2);  // shards 2 and 3 had no other copy
  EXPECT_TRUE(c.logged("a shard of the model state has no live copy (sharding zero3"));
  ASSERT_FALSE(c.joins.empty());
  EXPECT_EQ(c.joins.back().resume_from, "/ckpt/step-000002.ckpt");
  ASSERT_EQ(c.waiting_plans().size(), 2u);
  EXPECT_EQ(c.waiting_plans().at(0).step, 2u);
  EXPECT_EQ(c.waiting_plans().at(0).shard_group, (std::vector<std::uint32_t>{0, 1}));
  EXPECT_TRUE(c.waiting_plans().at(0).sync_shards.empty()) << "each cuts its shard from the checkpoint";
  c.reply_all();
  c.reply_all();
  ASSERT_TRUE(c.finished);
  EXPECT_EQ(c.finished->state, job_state::succeeded) << c.finished->message;
  EXPECT_EQ(c.controller().status().steps_done, 4u);
}

TEST(ShardedJobController, ANodeJoiningGetsItsShardsByTransferFromLiveHolders) {
  scripted_cluster c{sharded_spec(3, sharding_mode::zero3)};
  c.auto_reply = false;
  c.start({{1, 2}});
  c.join_node(2, 2);  // mid step 0
  c.reply_all();      // step 0 commits on devices 0, 1 (shards 0 and 1 of 2)
  ASSERT_EQ(c.waiting_plans().size(), 4u);
  for (const auto& [d, p] : c.waiting_plans()) {
    EXPECT_EQ(p.step, 1u);
    EXPECT_EQ(p.shard_group, (std::vector<std::uint32_t>{0, 1, 2, 3})) << "re-sharded four ways";
    EXPECT_EQ(p.sync_shards, (std::vector<std::uint32_t>{0, 1})) << "old shard r from its holder";
  }
  c.reply_all();
  EXPECT_TRUE(c.waiting_plans().at(2).sync_shards.empty()) << "every device holds its new shard";
  c.reply_all();
  ASSERT_TRUE(c.finished);
  EXPECT_EQ(c.finished->state, job_state::succeeded) << c.finished->message;
}

TEST(ShardedJobController, ADeviceJoiningBeforeTheFirstCommitGetsItsShardFromTheRecipeHolders) {
  scripted_cluster c{sharded_spec(2, sharding_mode::hsdp)};
  c.auto_reply = false;
  c.start({{1, 2}});
  // Step 0 fails before any commit; a node joins meanwhile.
  auto& waiting = c.waiting_plans();
  c.feed(c.failure(0, waiting.at(0)));
  waiting.clear();
  c.join_node(2, 2);
  c.advance(2s);  // the grace period
  ASSERT_EQ(c.waiting_plans().size(), 4u);
  EXPECT_EQ(c.waiting_plans().at(3).sync_shards, (std::vector<std::uint32_t>{0, 1}))
      << "devices still holding the seed cut shards of it and hand them over";
  c.reply_all();
  c.reply_all();
  ASSERT_TRUE(c.finished);
  EXPECT_EQ(c.finished->state, job_state::succeeded) << c.finished->message;
}

TEST(ShardedJobController, ReplicasOfOneShardThatDifferAtTheEndFailTheJob) {
  scripted_cluster c{sharded_spec(2, sharding_mode::hsdp)};
  c.diverged_final.insert(3);
  c.start({{1, 2}, {2, 2}});
  ASSERT_TRUE(c.finished);
  EXPECT_EQ(c.finished->state, job_state::failed);
  EXPECT_NE(c.finished->message.find("shard 1 of 2"), std::string::npos) << c.finished->message;
}

TEST(ShardAssignment, HsdpGroupsShrinkToADivisorOfTheWorld) {
  const std::vector<std::uint32_t> six{0, 1, 2, 3, 4, 5};
  auto a = assign_shards(six, sharding_mode::hsdp, 4, 4);
  EXPECT_EQ(a.group_size, 3);
  EXPECT_EQ(a.group.at(4), (std::vector<std::uint32_t>{3, 4, 5}));
  EXPECT_EQ(a.replicas.at(4), (std::vector<std::uint32_t>{1, 4}));
  EXPECT_EQ(a.shard.at(5), (std::pair<int, int>{3, 2}));
  EXPECT_EQ(assign_shards(six, sharding_mode::hsdp, 0, 2).group_size, 2) << "default: a node's devices";
  EXPECT_EQ(assign_shards(six, sharding_mode::zero3, 0, 2).group_size, 6);
  EXPECT_TRUE(assign_shards(six, sharding_mode::replicate, 0, 2).group.empty());
}

TEST(ShardAssignment, SourcesComeFromACompleteSetOfShards) {
  // Shards 0..2 of 3 on devices 4, 7, 9; device 8 holds a second copy of shard 1.
  std::map<std::uint32_t, std::pair<int, int>> held{{4, {3, 0}}, {7, {3, 1}}, {8, {3, 1}}, {9, {3, 2}}, {11, {2, 0}}};
  EXPECT_EQ(shard_sources(held), (std::vector<std::uint32_t>{4, 7, 9}));
  held.erase(9);
  EXPECT_TRUE(shard_sources(held).empty()) << "shard 2 of 3 has no live copy; 2-way set incomplete";
}

}  // namespace
}  // namespace flexsp::actors
