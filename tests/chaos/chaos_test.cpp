// The chaos suite: real head and node processes (scripts/launch_cluster.sh; a network namespace
// for the partition, skipped where namespaces are not permitted) under the faults a cluster
// meets, with a short heartbeat (100 ms) and failure timeout (500 ms) so that faults bite. Per trial it checks: the job succeeds, every step is committed exactly once and in
// order, the losses equal those of a fault-free run of the same job (to 1e-5 relative), the
// replicas end identical (the scheduler's final checksum), and no process is left behind.
//
// `ctest -L chaos` runs the short form (CI). The long form runs by hand:
//   FLEXSP_CHAOS_TRIALS=30 FLEXSP_CHAOS_SOAK_S=600 build/tests/flexsp_chaos_tests
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <map>
#include <random>

#include "../integration/train_common.hpp"
#include "../support/redis_server.hpp"

namespace flexsp::testing {
namespace {

using namespace std::chrono_literals;

int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::atoi(v) : fallback;
}

actors::job_spec chaos_job(std::uint64_t steps) {
  auto spec = small_job(steps);
  spec.name = "chaos";
  spec.milp = false;  // plans are ready when a step commits: faults land inside steps
  return spec;
}

struct run {
  actors::job_status final;
  std::vector<step_record> steps;
};

/// Runs `spec` on `cluster`; `on_step` sees each committed step as it arrives.
template <class F>
run run_job(process_cluster& cluster, const actors::job_spec& spec, F on_step) {
  run out;
  auto client = cluster.client();
  EXPECT_TRUE(client);
  if (!client) return out;
  auto job = client->submit(spec);
  EXPECT_TRUE(job) << job.error().to_string();
  if (!job) return out;
  auto final = job->wait([&](const std::string& line) {
    out.steps.push_back(parse_step(line));
    on_step(out.steps.back());
  });
  EXPECT_TRUE(final) << final.error().to_string();
  if (final) {
    out.final.state = final->state;
    out.final.error = final->error;
    out.final.final_checksum = final->final_checksum;
  }
  return out;
}

/// The invariants every trial must keep.
void expect_sound(const run& r, const run& reference, std::uint64_t steps) {
  EXPECT_EQ(r.final.state, actors::job_state::succeeded) << r.final.error;
  ASSERT_EQ(r.steps.size(), steps) << "every step committed exactly once";
  for (std::size_t i = 0; i < r.steps.size(); ++i) {
    EXPECT_EQ(r.steps[i].step, i) << "in order";
    if (i < reference.steps.size()) {
      const double a = r.steps[i].loss, b = reference.steps[i].loss;
      EXPECT_LE(std::abs(a - b), 1e-5 * std::max(1.0, std::abs(b))) << "step " << i << ": " << a << " vs fault-free " << b;
    }
  }
  EXPECT_NE(r.final.final_checksum, 0u) << "the replicas were checked identical at the end";
}

/// The fault-free losses of `spec` (3 nodes x 2 CPU devices), measured once per spec length.
const run& reference_run(const actors::job_spec& spec) {
  static std::map<std::string, run> refs;  // by the whole spec
  const auto key = actors::job_spec_to_json(spec);
  auto it = refs.find(key);
  if (it == refs.end()) {
    process_cluster cluster{"chaos-ref"};
    EXPECT_TRUE(cluster.launch(3, "cpu:2", "100ms", "500ms"));
    it = refs.emplace(key, run_job(cluster, spec, [](const step_record&) {})).first;
  }
  return it->second;
}

// True when `pid` is gone (or a zombie nobody reaped: it runs nothing).
bool gone(pid_t pid) {
  if (pid <= 0 || ::kill(pid, 0) != 0) return true;
  const auto stat = read_text(fmt::format("/proc/{}/stat", pid));
  const auto paren = stat.rfind(')');
  return paren != std::string::npos && paren + 2 < stat.size() && stat[paren + 2] == 'Z';
}

/// Waits (up to 20 s) until none of `pids` runs.
bool no_process_left(const std::vector<pid_t>& pids) {
  const auto deadline = std::chrono::steady_clock::now() + 20s;
  for (;;) {
    if (std::all_of(pids.begin(), pids.end(), gone)) return true;
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(50ms);
  }
}

constexpr std::uint64_t kSteps = 24;

TEST(Chaos, KillNineOfANodeAtRandomPointsIncludingCommits) {
  const auto spec = chaos_job(kSteps);
  const auto& ref = reference_run(spec);
  ASSERT_EQ(ref.steps.size(), kSteps);
  std::mt19937 rng{std::random_device{}()};
  const int trials = env_int("FLEXSP_CHAOS_TRIALS", 2);
  for (int t = 0; t < trials; ++t) {
    SCOPED_TRACE(fmt::format("trial {}", t));
    process_cluster cluster{"chaos-kill"};
    ASSERT_TRUE(cluster.launch(3, "cpu:2", "100ms", "500ms"));
    auto pids = cluster.node_pids();
    pids.push_back(cluster.head_pid());
    const auto victim = cluster.node_pids().at(std::uniform_int_distribution<std::size_t>{0, 2}(rng));
    const auto at_step = std::uniform_int_distribution<std::uint64_t>{2, kSteps - 6}(rng);
    // 0-80 ms after a commit: inside the next step, or in its commit.
    const auto delay = std::chrono::milliseconds{std::uniform_int_distribution<int>{0, 80}(rng)};
    std::thread killer;
    auto r = run_job(cluster, spec, [&](const step_record& s) {
      if (s.step == at_step)
        killer = std::thread{[victim, delay] {
          std::this_thread::sleep_for(delay);
          ::kill(victim, SIGKILL);
        }};
    });
    if (killer.joinable()) killer.join();
    expect_sound(r, ref, kSteps);
    EXPECT_EQ(r.steps.back().devices, 4u);
    cluster.stop();
    EXPECT_TRUE(no_process_left(pids)) << "a head or node process outlived the cluster";
  }
}

TEST(Chaos, TwoOfThreeNodesKilled) {
  const auto spec = chaos_job(kSteps);
  const auto& ref = reference_run(spec);
  process_cluster cluster{"chaos-two"};
  ASSERT_TRUE(cluster.launch(3, "cpu:2", "100ms", "500ms"));
  const auto nodes = cluster.node_pids();
  auto r = run_job(cluster, spec, [&](const step_record& s) {
    if (s.step == 5) ::kill(nodes[0], SIGKILL);
    if (s.step == 10) ::kill(nodes[2], SIGKILL);
  });
  expect_sound(r, ref, kSteps);
  EXPECT_EQ(r.steps.back().devices, 2u);
}

/// Kills one of three nodes (2 CPU devices each) right after `at_step` commits under a sharded
/// job and returns the run and the wall time from the kill until the step that was running then
/// committed (for zero3, after the restart re-ran the steps since the checkpoint).
struct killed_run {
  run r;
  double recovery_ms = 0;
};
killed_run kill_node_under(actors::sharding_mode mode, const std::string& tag, const fs::path& checkpoints,
                           std::uint64_t at_step) {
  auto spec = chaos_job(kSteps);
  spec.sharding = mode;
  spec.checkpoint_dir = checkpoints.string();
  spec.checkpoint_every = 4;
  killed_run out;
  process_cluster cluster{tag};
  EXPECT_TRUE(cluster.launch(3, "cpu:2", "100ms", "500ms"));
  const auto victim = cluster.node_pids().at(1);
  std::chrono::steady_clock::time_point killed{};
  out.r = run_job(cluster, spec, [&](const step_record& s) {
    if (s.step == at_step && killed == std::chrono::steady_clock::time_point{}) {
      ::kill(victim, SIGKILL);
      killed = std::chrono::steady_clock::now();
    }
    if (s.step == at_step + 1 && out.recovery_ms == 0 && killed != std::chrono::steady_clock::time_point{})
      out.recovery_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - killed).count();
  });
  const bool restarted = !cluster.log_lines("restarted from").empty();
  const bool lost_shard = !cluster.log_lines("has no live copy").empty();
  if (mode == actors::sharding_mode::hsdp) {
    EXPECT_FALSE(restarted) << "hsdp keeps a copy of every shard on another node: no checkpoint is read";
    EXPECT_FALSE(lost_shard);
  } else {
    EXPECT_TRUE(lost_shard) << "zero3 keeps one copy of each shard: the job says it lost some";
    EXPECT_TRUE(restarted) << "and restarts from its latest checkpoint";
  }
  return out;
}

TEST(Chaos, AKilledNodeUnderHsdpCostsNoCheckpointWhileZero3RestartsFromOne) {
  const auto& ref = reference_run(chaos_job(kSteps));
  ASSERT_EQ(ref.steps.size(), kSteps);
  const auto dir = fs::temp_directory_path() / fmt::format("flexsp-chaos-shards-{}", ::getpid());
  fs::remove_all(dir);
  constexpr std::uint64_t at = 9;  // a checkpoint after step 7 (8 steps done); the kill in step 10
  auto hsdp = kill_node_under(actors::sharding_mode::hsdp, "chaos-hsdp", dir / "hsdp", at);
  expect_sound(hsdp.r, ref, kSteps);
  EXPECT_EQ(hsdp.r.steps.back().devices, 4u);
  auto zero3 = kill_node_under(actors::sharding_mode::zero3, "chaos-zero3", dir / "zero3", at);
  // A restart re-runs (and republishes) the steps since the checkpoint: the last record of each
  // step must match the fault-free run.
  EXPECT_EQ(zero3.r.final.state, actors::job_state::succeeded) << zero3.r.final.error;
  std::map<std::uint64_t, double> last;
  for (const auto& s : zero3.r.steps) last[s.step] = s.loss;
  ASSERT_EQ(last.size(), kSteps);
  for (const auto& [step, loss] : last)
    EXPECT_LE(std::abs(loss - ref.steps[step].loss), 1e-5 * std::max(1.0, std::abs(ref.steps[step].loss)))
        << "step " << step;
  std::printf("recovery from kill -9 of a node (3 nodes x 2 CPU devices, kill after step %llu): hsdp %.0f ms (no "
              "checkpoint read), zero3 %.0f ms (restart from the step-8 checkpoint); zero3 / hsdp = %.2fx\n",
              static_cast<unsigned long long>(at), hsdp.recovery_ms, zero3.recovery_ms,
              hsdp.recovery_ms > 0 ? zero3.recovery_ms / hsdp.recovery_ms : 0.0);
  fs::remove_all(dir);
}

TEST(Chaos, ANodeStoppedPastTheTimeoutTrainsAgainAfterContinue) {
  constexpr std::uint64_t steps = 100;  // long enough to see the node back
  const auto spec = chaos_job(steps);
  const auto& ref = reference_run(spec);
  process_cluster cluster{"chaos-stop"};
  ASSERT_TRUE(cluster.launch(3, "cpu:2", "100ms", "500ms"));
  const auto victim = cluster.node_pids().at(1);
  std::thread stopper;
  auto r = run_job(cluster, spec, [&](const step_record& s) {
    if (s.step == 4)
      stopper = std::thread{[victim] {
        ::kill(victim, SIGSTOP);
        std::this_thread::sleep_for(1000ms);  // twice the failure timeout: it is lost
        ::kill(victim, SIGCONT);
      }};
  });
  if (stopper.joinable()) stopper.join();
  expect_sound(r, ref, steps);
  EXPECT_EQ(r.steps.back().devices, 6u) << "the resumed node's devices train again";
}

TEST(Chaos, EveryNodeStoppedPastTheTimeoutGoesOnFromTheStateTheyStillHold) {
  // All three nodes hang at once (false suspicion of everyone): every replica is declared lost,
  // there is no checkpoint, yet the processes still hold the committed state. When they run
  // again they register anew, report it, and the job continues from it.
  constexpr std::uint64_t steps = 40;
  const auto spec = chaos_job(steps);
  const auto& ref = reference_run(spec);
  process_cluster cluster{"chaos-all"};
  ASSERT_TRUE(cluster.launch(3, "cpu:2", "100ms", "500ms"));
  const auto nodes = cluster.node_pids();
  std::thread stopper;
  auto r = run_job(cluster, spec, [&](const step_record& s) {
    if (s.step == 6)
      stopper = std::thread{[nodes] {
        for (auto p : nodes) ::kill(p, SIGSTOP);
        std::this_thread::sleep_for(1000ms);
        for (auto p : nodes) ::kill(p, SIGCONT);
      }};
  });
  if (stopper.joinable()) stopper.join();
  expect_sound(r, ref, steps);
  EXPECT_FALSE(cluster.log_lines("returning devices still hold the state of step").empty())
      << "the job went on from the replicas the stopped processes kept";
}

TEST(Chaos, TheHeadStoppedForSecondsLosesNoNodeAndNoStep) {
  const auto spec = chaos_job(kSteps);
  const auto& ref = reference_run(spec);
  for (auto pause : {1500ms, 4000ms}) {
    SCOPED_TRACE(fmt::format("head stopped {} ms", pause.count()));
    process_cluster cluster{"chaos-head"};
    ASSERT_TRUE(cluster.launch(3, "cpu:2", "100ms", "500ms"));
    const auto head = cluster.head_pid();
    std::thread stopper;
    auto r = run_job(cluster, spec, [&](const step_record& s) {
      if (s.step == 6)
        stopper = std::thread{[head, pause] {
          ::kill(head, SIGSTOP);
          std::this_thread::sleep_for(pause);
          ::kill(head, SIGCONT);
        }};
    });
    if (stopper.joinable()) stopper.join();
    expect_sound(r, ref, kSteps);
    EXPECT_EQ(r.steps.back().devices, 6u);
    EXPECT_TRUE(cluster.log_lines("] head: node").size() >= 3u);
    EXPECT_TRUE(cluster.log_lines(" lost: ").empty()) << "no node was lost: " << cluster.log_lines(" lost: ").front();
  }
}

TEST(Chaos, TheHeadKilledAndRestartedLosesNoJobAndNoStep) {
  // kill -9 of the head mid-job; a new head process on the same port takes its state back from
  // the state store (the default file in the state directory): the nodes keep their ids, the
  // job continues from its last committed step, and the client, still waiting, sees every step
  // once.
  const auto spec = chaos_job(kSteps);
  const auto& ref = reference_run(spec);
  const int trials = std::max(2, env_int("FLEXSP_CHAOS_TRIALS", 2));
  std::mt19937 rng{std::random_device{}()};
  for (int t = 0; t < trials; ++t) {
    const std::uint64_t at = std::uniform_int_distribution<std::uint64_t>{2, kSteps - 6}(rng);
    const auto down = std::chrono::milliseconds{std::uniform_int_distribution<int>{0, 1500}(rng)};
    SCOPED_TRACE(fmt::format("trial {}: head killed after step {}, down {} ms", t, at, down.count()));
    process_cluster cluster{"chaos-head-restart"};
    ASSERT_TRUE(cluster.launch(3, "cpu:2", "100ms", "500ms", free_loopback_port()));
    std::vector<pid_t> pids = cluster.node_pids();
    pids.push_back(cluster.head_pid());
    std::thread restarter;
    bool restarted = false;
    auto r = run_job(cluster, spec, [&](const step_record& s) {
      if (s.step != at) return;
      const auto head = cluster.head_pid();
      ::kill(head, SIGKILL);
      restarter = std::thread{[&cluster, &restarted, down] {
        std::this_thread::sleep_for(down);
        restarted = cluster.restart_head("100ms", "500ms");
      }};
    });
    if (restarter.joinable()) restarter.join();
    ASSERT_TRUE(restarted);
    pids.push_back(cluster.head_pid());
    expect_sound(r, ref, kSteps);
    EXPECT_FALSE(cluster.log_lines("taken back from the state store").empty());
    EXPECT_TRUE(cluster.log_lines(") lost: ").empty()) << "no node was lost: " << cluster.log_lines(") lost: ").front();
    cluster.stop();
    EXPECT_TRUE(no_process_left(pids)) << "a head or node process outlived the cluster";
  }
}

TEST(Chaos, TheHeadMovedToAnotherHostWithARedisStateStoreLosesNoJob) {
  // The head keeps its state in Redis. It is killed mid-job and started again from another
  // "host": a state directory of its own (no local file of the first head's), the cluster's
  // secret given by the operator, the same address. Then it is killed once more after the job
  // ended, and a third head still lists the job as it ended.
  process_cluster cluster{"chaos-redis"};
  redis_server redis;
  if (!redis.start(cluster.state())) GTEST_SKIP() << "redis-server is not installed (scripts/bootstrap.sh installs it)";
  const auto spec = chaos_job(kSteps);
  const auto& ref = reference_run(spec);
  const int port = free_loopback_port();
  const auto store = redis.url(fmt::format("chaos-{}", ::getpid()));
  const auto head_flags = fmt::format("start --head --port {} --heartbeat-interval 100ms --failure-timeout 500ms "
                                      "--state-store {}",
                                      port, store);
  auto first = shell(fmt::format("{} {} {} 2>&1", cluster.env(), FLEXSP_CLI_PATH, head_flags));
  ASSERT_EQ(first.exit_code, 0) << first.output;
  const auto secret = (cluster.state() / fmt::format("cluster-{}.secret", port)).string();
  cluster.adopt(fmt::format("127.0.0.1:{}", port), secret);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(cluster.add_node("cpu:2"));

  // Another host's head: its own state directory, stopped at the end.
  struct other_host {
    fs::path dir;
    ~other_host() {
      (void)shell(fmt::format("FLEXSP_STATE_DIR={} {} stop --grace 2s >/dev/null 2>&1", dir.string(), FLEXSP_CLI_PATH));
      std::error_code ec;
      fs::remove_all(dir, ec);
    }
    pid_t start(const std::string& flags, const std::string& secret) {
      fs::create_directories(dir);
      auto r = shell(fmt::format("FLEXSP_STATE_DIR={} {} {} --secret-file {} 2>&1", dir.string(), FLEXSP_CLI_PATH, flags,
                                 secret));
      EXPECT_EQ(r.exit_code, 0) << r.output;
      auto cur = nlohmann::json::parse(read_text(dir / "current_cluster.json"), nullptr, false);
      return cur.is_discarded() ? 0 : cur["head_pid"].get<pid_t>();
    }
    std::vector<std::string> log_lines(const std::string& text) const {
      std::vector<std::string> out;
      std::error_code ec;
      for (const auto& e : fs::directory_iterator(dir / "logs", ec)) {
        std::istringstream in{read_text(e.path())};
        for (std::string line; std::getline(in, line);)
          if (line.find(text) != std::string::npos) out.push_back(line);
      }
      return out;
    }
  };
  other_host second{cluster.state().parent_path() / (cluster.state().filename().string() + "-second")};
  other_host third{cluster.state().parent_path() / (cluster.state().filename().string() + "-third")};

  pid_t moved = 0;
  std::thread mover;
  const auto first_head = cluster.head_pid();
  auto r = run_job(cluster, spec, [&](const step_record& s) {
    if (s.step != 8) return;
    ::kill(first_head, SIGKILL);
    mover = std::thread{[&] { moved = second.start(head_flags, secret); }};
  });
  if (mover.joinable()) mover.join();
  ASSERT_GT(moved, 0);
  expect_sound(r, ref, kSteps);
  EXPECT_FALSE(second.log_lines("taken back from the state store").empty());
  EXPECT_TRUE(second.log_lines(") lost: ").empty()) << "no node was lost: " << second.log_lines(") lost: ").front();

  // The ended job is still on record for a head started after it.
  ::kill(moved, SIGKILL);
  ASSERT_GT(third.start(head_flags, secret), 0);
  auto client = cluster.client();
  ASSERT_TRUE(client);
  auto jobs = client->list();
  ASSERT_TRUE(jobs) << jobs.error().to_string();
  ASSERT_EQ(jobs->size(), 1u);
  EXPECT_EQ(jobs->front().state, actors::job_state::succeeded);
  EXPECT_EQ(jobs->front().steps_done, kSteps);
  auto info = client->query(jobs->front().id, 0, false);
  ASSERT_TRUE(info);
  EXPECT_EQ(info->metrics.size(), kSteps) << "every step's metrics line is on record";
}

/// A network namespace joined to this one by a veth pair (10.233.N.1 here, 10.233.N.2 there):
/// a node started inside is a separate host, and taking the link down partitions it.
class netns_host {
public:
  netns_host() {
    const int n = static_cast<int>(::getpid() % 200) + 20;
    name_ = fmt::format("flexsp-chaos-{}", ::getpid());
    here_ = fmt::format("fxh{}", ::getpid() % 100000);
    there_ = fmt::format("fxn{}", ::getpid() % 100000);
    near_ = fmt::format("10.233.{}.1", n);
    far_ = fmt::format("10.233.{}.2", n);
    const auto r = shell(fmt::format(
        "ip netns add {0} && ip link add {1} type veth peer name {2} && ip link set {2} netns {0} && "
        "ip addr add {3}/24 dev {1} && ip link set {1} up && ip netns exec {0} ip addr add {4}/24 dev {2} && "
        "ip netns exec {0} ip link set {2} up && ip netns exec {0} ip link set lo up 2>&1",
        name_, here_, there_, near_, far_));
    ok_ = r.exit_code == 0;
    why_ = r.output;
  }
  ~netns_host() {
    (void)shell(fmt::format("ip link del {} 2>/dev/null; ip netns del {} 2>/dev/null", here_, name_));
  }
  bool ok() const { return ok_; }
  const std::string& why() const { return why_; }
  const std::string& name() const { return name_; }
  const std::string& near() const { return near_; }
  const std::string& far() const { return far_; }
  /// Cuts (false) or restores (true) the link, both directions.
  bool link(bool up) const {
    return shell(fmt::format("ip netns exec {} ip link set {} {}", name_, there_, up ? "up" : "down")).exit_code == 0;
  }

private:
  std::string name_, here_, there_, near_, far_, why_;
  bool ok_ = false;
};

TEST(Chaos, ANodeCutOffByANetworkPartitionRejoinsAfterItHeals) {
  netns_host other;
  if (!other.ok()) GTEST_SKIP() << "network namespaces are not permitted here: " << other.why();
  // Head and two nodes on this side, one node in the namespace; all traffic crosses the veth.
  process_cluster cluster{"chaos-netns"};
  const auto env = cluster.env();
  auto head = shell(fmt::format("{} {} start --head --port 0 --bind {} --heartbeat-interval 100ms --failure-timeout "
                                "500ms 2>&1",
                                env, FLEXSP_CLI_PATH, other.near()));
  ASSERT_EQ(head.exit_code, 0) << head.output;
  auto cur = nlohmann::json::parse(read_text(cluster.state() / "current_cluster.json"));
  const std::string address = cur["address"], secret = cur["secret_file"];
  for (int i = 0; i < 2; ++i) {
    auto n = shell(fmt::format("{} {} start --address {} --devices cpu:2 --bind {} --secret-file {} 2>&1", env,
                               FLEXSP_CLI_PATH, address, other.near(), secret));
    ASSERT_EQ(n.exit_code, 0) << n.output;
  }
  auto far = shell(fmt::format("{} ip netns exec {} {} start --address {} --devices cpu:2 --bind {} --secret-file {} 2>&1",
                               env, other.name(), FLEXSP_CLI_PATH, address, other.far(), secret));
  ASSERT_EQ(far.exit_code, 0) << far.output;
  cluster.adopt(address, secret);

  // Few enough steps that float rounding (a different device count sums gradients in another
  // order) stays below the 1e-5 the losses are held to; batches large enough that the job
  // outlasts the partition and the node's return.
  constexpr std::uint64_t steps = 100;
  auto spec = chaos_job(steps);
  spec.batch_size = 128;
  const auto& ref = reference_run(spec);
  std::thread cutter;
  auto r = run_job(cluster, spec, [&](const step_record& s) {
    if (s.step == 4)
      cutter = std::thread{[&other] {
        EXPECT_TRUE(other.link(false));
        std::this_thread::sleep_for(2s);  // four failure timeouts
        EXPECT_TRUE(other.link(true));
      }};
  });
  if (cutter.joinable()) cutter.join();
  expect_sound(r, ref, steps);
  std::uint32_t fewest = 6;
  for (const auto& s : r.steps) fewest = std::min(fewest, s.devices);
  EXPECT_EQ(fewest, 4u) << "the cut-off node left the job";
  EXPECT_EQ(r.steps.back().devices, 6u) << "and came back after the partition healed";
}

/// Busy processes at 20x the cores while alive (at most 160 unless FLEXSP_CHAOS_HOGS says).
class cpu_hogs {
public:
  cpu_hogs() {
    const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    const int n = env_int("FLEXSP_CHAOS_HOGS", std::min(20 * cores, 160));
    for (int i = 0; i < n; ++i) {
      const pid_t p = ::fork();
      if (p == 0) {
        ::execl("/bin/sh", "sh", "-c", "while :; do :; done", static_cast<char*>(nullptr));
        ::_exit(1);
      }
      pids_.push_back(p);
    }
  }
  ~cpu_hogs() {
    for (auto p : pids_) ::kill(p, SIGKILL);
    for (auto p : pids_) ::waitpid(p, nullptr, 0);
  }
  std::size_t count() const { return pids_.size(); }

private:
  std::vector<pid_t> pids_;
};

TEST(Chaos, AClusterUnderCpuStarvationLosesNoNode) {
  // Separate head and node processes with a 500 ms failure timeout, jobs back to back while
  // busy processes load every core 20 times over: no node may be declared lost.
  process_cluster cluster{"chaos-starve"};
  ASSERT_TRUE(cluster.launch(3, "cpu:2", "100ms", "500ms"));
  const auto spec = chaos_job(10);
  const int soak_s = env_int("FLEXSP_CHAOS_SOAK_S", 0);
  cpu_hogs hogs;
  const auto start = std::chrono::steady_clock::now();
  int jobs = 0;
  do {
    auto r = run_job(cluster, spec, [](const step_record&) {});
    EXPECT_EQ(r.final.state, actors::job_state::succeeded) << r.final.error;
    ++jobs;
  } while (std::chrono::steady_clock::now() - start < std::chrono::seconds{soak_s} && !::testing::Test::HasFailure());
  const auto secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const auto lost = cluster.log_lines("] head: node").size() - 3;  // 3 joins; every other line is a loss
  std::fprintf(stderr, "%d jobs in %.0f s under %zu busy processes; nodes lost: %zu\n", jobs, secs, hogs.count(), lost);
  EXPECT_TRUE(cluster.log_lines(" lost: ").empty()) << cluster.log_lines(" lost: ").front();
}

TEST(Chaos, EmbeddedTrainingUnderCpuStarvation) {
  // Busy processes at 20x the cores while `flexsp train` runs; its nodes must not be lost.
  const int soak_s = env_int("FLEXSP_CHAOS_SOAK_S", 0);
  cpu_hogs hogs;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds{soak_s};
  int runs = 0;
  do {
    auto r = shell(fmt::format("{} train --devices cpu:4 --steps 8 --batch-size 16 --no-calibrate --no-milp 2>&1",
                               FLEXSP_CLI_PATH));
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("succeeded after 8 of 8 steps"), std::string::npos) << r.output;
    EXPECT_EQ(r.output.find(" lost"), std::string::npos) << r.output;
    ++runs;
  } while (std::chrono::steady_clock::now() < deadline && !::testing::Test::HasFailure());
  std::fprintf(stderr, "%d embedded runs under %zu busy processes\n", runs, hogs.count());
}

}  // namespace
}  // namespace flexsp::testing
