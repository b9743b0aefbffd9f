// Ulysses SP and Gloo collectives across separate processes: each rank is a worker process
// (fork/exec of flexsp_ulysses_worker) that meets the others through a file rendezvous store.
#include <cmath>
#include <csignal>
#include <filesystem>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include "flexsp/kernels/data.hpp"
#include "ulysses_common.hpp"

extern char** environ;

namespace flexsp::kernels {
namespace {

using namespace testing;
using namespace std::chrono_literals;

class scratch {
public:
  explicit scratch(const std::string& name)
      : dir_{std::filesystem::temp_directory_path() / (name + "_" + std::to_string(::getpid()))} {
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_ / "store");
  }
  ~scratch() { std::filesystem::remove_all(dir_); }
  std::string store() const { return (dir_ / "store").string(); }
  std::string file(const std::string& n) const { return (dir_ / n).string(); }

private:
  std::filesystem::path dir_;
};

pid_t spawn(std::vector<std::string> args) {
  args.insert(args.begin(), FLEXSP_ULYSSES_WORKER);
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  // One BLAS thread per process: the ranks already share the cores.
  std::vector<std::string> env_s{"OPENBLAS_NUM_THREADS=1"};
  for (char** e = environ; *e; ++e)
    if (std::string_view{*e}.rfind("OPENBLAS_NUM_THREADS=", 0) != 0) env_s.emplace_back(*e);
  std::vector<char*> envp;
  for (auto& e : env_s) envp.push_back(e.data());
  envp.push_back(nullptr);
  pid_t pid = -1;
  if (posix_spawn(&pid, FLEXSP_ULYSSES_WORKER, nullptr, nullptr, argv.data(), envp.data()) != 0) return -1;
  return pid;
}

// Waits for every process (generous bound); kills stragglers. Returns their exit codes
// (-signal for a signal, -1000 for a process that had to be killed).
std::vector<int> wait_all(const std::vector<pid_t>& pids, std::chrono::seconds bound = 240s) {
  std::vector<int> codes(pids.size(), -1000);
  std::vector<bool> done(pids.size(), false);
  const auto deadline = std::chrono::steady_clock::now() + bound;
  std::size_t left = pids.size();
  while (left > 0 && std::chrono::steady_clock::now() < deadline) {
    for (std::size_t i = 0; i < pids.size(); ++i) {
      if (done[i]) continue;
      int status = 0;
      if (::waitpid(pids[i], &status, WNOHANG) == pids[i]) {
        done[i] = true;
        --left;
        codes[i] = WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
      }
    }
    if (left > 0) std::this_thread::sleep_for(10ms);
  }
  for (std::size_t i = 0; i < pids.size(); ++i)
    if (!done[i]) {
      ::kill(pids[i], SIGKILL);
      ::waitpid(pids[i], nullptr, 0);
    }
  return codes;
}

double rel_err(std::span<const float> a, std::span<const float> b) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    num += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    den += static_cast<double>(b[i]) * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

struct reference {
  double loss = 0;
  std::vector<float> logits;  // [tokens, vocab]
  model mdl;
};

reference single_device_sp_reference() {
  auto mdl = model::create(kSpModel, kModelSeed).value();
  auto seqs = synthetic_sequences(kSpLengths, kDataSeed);
  const auto total = std::accumulate(kSpLengths.begin(), kSpLengths.end(), std::int64_t{0});
  auto layout = ulysses_layout::make(kSpLengths, 1, 0, kSpModel.heads).value();
  auto comm = make_local_communicator();
  auto res = mdl.forward_backward(*comm, layout, shard_inputs(layout, seqs).value(),
                                    1.0f / static_cast<float>(total), {.backward = true, .keep_logits = true}).value();
  return {res.loss_sum, std::vector<float>(res.logits.span().begin(), res.logits.span().end()), std::move(mdl)};
}

class UlyssesSpEquivalence : public ::testing::TestWithParam<int> {};

TEST_P(UlyssesSpEquivalence, ForwardLossAndEveryGradientMatchOneDevice) {
  const int d = GetParam();
  static const reference ref = single_device_sp_reference();
  scratch s{"flexsp_sp" + std::to_string(d)};
  std::vector<pid_t> pids;
  for (int r = 0; r < d; ++r)
    pids.push_back(spawn({"sp", s.store(), std::to_string(d), std::to_string(r), s.file("rank" + std::to_string(r))}));
  const auto codes = wait_all(pids);
  for (int r = 0; r < d; ++r) ASSERT_EQ(codes[r], 0) << "rank " << r << " of " << d;

  const auto V = kSpModel.vocab;
  double loss = 0;
  for (int r = 0; r < d; ++r) {
    auto a = read_arrays(s.file("rank" + std::to_string(r)));
    loss += a.at("loss")[0];
    // Forward output: this rank's logits equal the reference rows of its tokens.
    auto layout = ulysses_layout::make(kSpLengths, d, r, kSpModel.heads).value();
    const auto g = layout.local_to_global();
    const auto& logits = a.at("logits");
    ASSERT_EQ(logits.size(), g.size() * V);
    std::vector<float> ref_rows;
    for (auto t : g) ref_rows.insert(ref_rows.end(), ref.logits.begin() + t * V, ref.logits.begin() + (t + 1) * V);
    EXPECT_LE(rel_err(logits, ref_rows), 1e-4) << "logits of rank " << r;
    // Every parameter gradient (after the all-reduce over the group) on every rank.
    const auto& grads = a.at("grads");
    for (const auto& p : ref.mdl.parameters()) {
      const auto n = static_cast<std::size_t>(numel_of(p.shape));
      std::span<const float> mine{grads.data() + p.offset, n}, want{ref.mdl.host_grads().data() + p.offset, n};
      EXPECT_LE(rel_err(mine, want), 1e-4) << p.name << " on rank " << r << " of " << d;
    }
  }
  EXPECT_LE(std::abs(loss - ref.loss) / ref.loss, 1e-4) << "loss " << loss << " vs " << ref.loss;
}

INSTANTIATE_TEST_SUITE_P(Degrees, UlyssesSpEquivalence, ::testing::Values(1, 2, 3, 4, 8),
                         [](const auto& info) { return "degree" + std::to_string(info.param); });

TEST(UlyssesPlan, GroupsOfDifferentDegreesPlusGlobalAllReduceMatchOneDeviceUpdate) {
  auto mdl = model::create(kSpModel, kModelSeed).value();
  auto seqs = synthetic_sequences(kPlanLengths, kDataSeed);
  const auto total = std::accumulate(kPlanLengths.begin(), kPlanLengths.end(), std::int64_t{0});
  auto layout = ulysses_layout::make(kPlanLengths, 1, 0, kSpModel.heads).value();
  auto local = make_local_communicator();
  const auto ref = mdl.forward_backward(*local, layout, shard_inputs(layout, seqs).value(),
                                          1.0f / static_cast<float>(total)).value();
  const std::vector<float> before(mdl.host_params().begin(), mdl.host_params().end());
  (void)mdl.optimizer_step(kPlanAdam, kPlanClip).value();

  scratch s{"flexsp_plan"};
  std::vector<pid_t> pids;
  for (int dev = 0; dev < kPlanDevices; ++dev)
    pids.push_back(spawn({"plan", s.store(), std::to_string(dev), s.file("dev" + std::to_string(dev))}));
  const auto codes = wait_all(pids);
  for (int dev = 0; dev < kPlanDevices; ++dev) ASSERT_EQ(codes[dev], 0) << "device " << dev;
  std::vector<float> ref_update(before.size());
  for (std::size_t i = 0; i < before.size(); ++i) ref_update[i] = mdl.host_params()[i] - before[i];
  for (int dev = 0; dev < kPlanDevices; ++dev) {
    auto a = read_arrays(s.file("dev" + std::to_string(dev)));
    EXPECT_LE(std::abs(a.at("loss")[0] - ref.loss_sum) / ref.loss_sum, 1e-4) << "device " << dev;
    EXPECT_GE(a.at("groups")[0], 3.0f) << "device " << dev << " cached its groups";
    const auto& params = a.at("params");
    ASSERT_EQ(params.size(), before.size());
    EXPECT_LE(rel_err(params, mdl.host_params()), 1e-4) << "device " << dev;
    // The updates themselves (not only the parameters, which barely move in one step).
    std::vector<float> update(params.size());
    for (std::size_t i = 0; i < params.size(); ++i) update[i] = params[i] - before[i];
    EXPECT_LE(rel_err(update, ref_update), 1e-3) << "device " << dev;
    if (dev == 0) RecordProperty("update_rel_err", std::to_string(rel_err(update, ref_update)));
  }
}

TEST(GlooProcesses, AllToAllVWithUnevenAndZeroCountsAcrossFiveProcesses) {
  scratch s{"flexsp_a2a"};
  std::vector<pid_t> pids;
  for (int r = 0; r < 5; ++r) pids.push_back(spawn({"a2a", s.store(), "5", std::to_string(r), s.file("x")}));
  const auto codes = wait_all(pids);
  for (int r = 0; r < 5; ++r) EXPECT_EQ(codes[r], 0) << "rank " << r;
}

struct failure_result {
  float elapsed_ms = -1;
  errc kind = errc::failed;
};

failure_result run_failure(const std::string& mode) {
  scratch s{"flexsp_" + mode};
  const pid_t p0 = spawn({mode, s.store(), "0", s.file("r0")});
  const pid_t p1 = spawn({mode, s.store(), "1", s.file("r1")});
  const auto c0 = wait_all({p0}, 120s);
  ::kill(p1, SIGKILL);  // stopped or already dead
  ::waitpid(p1, nullptr, 0);
  EXPECT_EQ(c0[0], 0) << mode;
  auto a = read_arrays(s.file("r0"));
  if (!a.contains("elapsed_ms")) return {};
  return {a.at("elapsed_ms")[0], static_cast<errc>(static_cast<int>(a.at("kind")[0]))};
}

TEST(GlooProcesses, ADeadPeerFailsTheWaitingRankLongBeforeTheTimeout) {
  const auto r = run_failure("die");  // 60 s timeout
  EXPECT_EQ(r.kind, errc::disconnected) << to_string(r.kind);
  EXPECT_GE(r.elapsed_ms, 0.0f);
  EXPECT_LT(r.elapsed_ms, 10'000.0f);
}

TEST(GlooProcesses, AStoppedPeerFailsTheWaitingRankWithATimeout) {
  const auto r = run_failure("hang");  // 2 s timeout; the peer keeps its sockets open
  EXPECT_EQ(r.kind, errc::timeout) << to_string(r.kind);
  EXPECT_GE(r.elapsed_ms, 1'500.0f);
  EXPECT_LT(r.elapsed_ms, 9'000.0f);
}

TEST(GlooProcesses, AbortUnblocksARankWaitingOnAStoppedPeer) {
  const auto r = run_failure("abort");  // 60 s timeout; abort after 0.5 s
  EXPECT_EQ(r.kind, errc::cancelled) << to_string(r.kind);
  EXPECT_LT(r.elapsed_ms, 5'000.0f);
}

}  // namespace
}  // namespace flexsp::kernels
