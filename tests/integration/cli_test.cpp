// The `flexsp` binary as a user runs it: a real process, its exit code and its output.
#include <array>
#include <cstdio>
#include <filesystem>
#include <string>

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>

namespace {

struct run_result {
  int exit_code;
  std::string output;
};

run_result run_env(const std::string& env, const std::string& args);

run_result run(const std::string& args) { return run_env("", args); }

run_result run_env(const std::string& env, const std::string& args) {
  const std::string command = env + std::string{FLEXSP_CLI_PATH} + " " + args + " 2>&1";
  FILE* pipe = ::popen(command.c_str(), "r");
  EXPECT_NE(pipe, nullptr);
  std::string out;
  std::array<char, 4096> buf{};
  while (auto n = std::fread(buf.data(), 1, buf.size(), pipe)) out.append(buf.data(), n);
  const int status = ::pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

TEST(Cli, HelpListsTheSubcommands) {
  auto r = run("--help");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("info"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("--log-level"), std::string::npos);
}

TEST(Cli, UnknownSubcommandFailsWithAMessage) {
  auto r = run("frobnicate");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("frobnicate"), std::string::npos) << r.output;
}

TEST(Cli, BadLogLevelIsRejectedByName) {
  auto r = run("--log-level loud info");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("loud"), std::string::npos) << r.output;
}

TEST(Cli, ABadAddressOrAMissingSecretIsNamedAsSuch) {
  const std::string env = "FLEXSP_STATE_DIR=" + ::testing::TempDir() + "flexsp-no-cluster ";
  auto bad = run_env(env, "job status --address nonsense");
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.output.find("--address nonsense: expected HOST:PORT"), std::string::npos) << bad.output;
  auto nosecret = run_env(env, "job status --address 127.0.0.1:1");
  EXPECT_NE(nosecret.exit_code, 0);
  EXPECT_NE(nosecret.output.find("no cluster secret for 127.0.0.1:1 (no head was started on this machine)"),
            std::string::npos)
      << nosecret.output;
}

TEST(Cli, InfoShowsTheBuildAndSaysPlainlyWhyThereIsNoGpu) {
  auto r = run("info");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find(" build, "), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("driver version is insufficient"), std::string::npos) << r.output;
  auto j = run("info --json");
  ASSERT_EQ(j.exit_code, 0) << j.output;
  EXPECT_NE(j.output.find("\"build\""), std::string::npos) << j.output;
}

TEST(Cli, InfoReportsTheCudaBackendAsJson) {
  auto r = run("info --json");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("\"compiled\""), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("\"cpu_devices\""), std::string::npos) << r.output;
}

TEST(Cli, PlanPrintsTheMemoryModelOfAJobSpec) {
  const std::string spec = ::testing::TempDir() + "flexsp_plan_memory_spec.json";
  {
    FILE* f = std::fopen(spec.c_str(), "w");
    ASSERT_NE(f, nullptr);
    std::fputs(R"({"steps": 5, "model": {"preset": "llama-tiny", "max_seq": 4096}})", f);
    std::fclose(f);
  }
  auto r = run("plan --job " + spec + " --mem-limit-gb 1 --json");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("\"model_states_mib\""), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("\"longest_sequence\""), std::string::npos) << r.output;
  auto text = run("plan --job " + spec + " --mem-limit-gb 1");
  ASSERT_EQ(text.exit_code, 0) << text.output;
  EXPECT_NE(text.output.find("longest sequence"), std::string::npos) << text.output;
  auto missing = run("plan --job " + spec + ".absent");
  EXPECT_NE(missing.exit_code, 0);
  EXPECT_NE(missing.output.find("cannot read"), std::string::npos) << missing.output;
  std::remove(spec.c_str());
}

TEST(Cli, TrainShardsTheModelStatesWhenAsked) {
  auto r = run("train --devices cpu:4 --nodes 2 --steps 2 --batch-size 8 --no-calibrate --sharding hsdp");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("(sharding hsdp)"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("parameter gathers and gradient reduce-scatters"), std::string::npos) << r.output;
  // A sharded job's checkpoint directory exports as one whole model.
  const std::string dir = ::testing::TempDir() + "flexsp_cli_sharded_ckpt";
  std::filesystem::remove_all(dir);
  auto saved = run("train --devices cpu:2 --steps 2 --batch-size 8 --no-calibrate --sharding zero3 --checkpoint-dir " + dir);
  ASSERT_EQ(saved.exit_code, 0) << saved.output;
  auto exported = run("export " + dir + " " + dir + "/hf");
  ASSERT_EQ(exported.exit_code, 0) << exported.output;
  EXPECT_NE(exported.output.find("after 2 optimizer steps"), std::string::npos) << exported.output;
  auto direct = run("export " + dir + "/step-000002.ckpt " + dir + "/hf2");
  EXPECT_EQ(direct.exit_code, 0) << direct.output;
  std::filesystem::remove_all(dir);
  auto bad = run("train --sharding fsdp");
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.output.find("--sharding"), std::string::npos) << bad.output;
  auto group = run("train --devices cpu:2 --steps 1 --sharding zero3 --shard-group 2");
  EXPECT_EQ(group.exit_code, 2) << group.output;
  EXPECT_NE(group.output.find("shard_group"), std::string::npos) << group.output;
}

TEST(Cli, PlanPrintsTheShardedMemoryModel) {
  const std::string spec = ::testing::TempDir() + "flexsp_plan_sharded_spec.json";
  {
    FILE* f = std::fopen(spec.c_str(), "w");
    ASSERT_NE(f, nullptr);
    std::fputs(R"({"steps": 5, "sharding": "zero3", "model": {"preset": "llama-tiny"}})", f);
    std::fclose(f);
  }
  auto r = run("plan --job " + spec + " --devices 8 --mem-limit-gb 1");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("zero3, 1/8 of them"), std::string::npos) << r.output;
  std::remove(spec.c_str());
}

TEST(Cli, TrainRefusesGpuOnlyPrecisionsOnCpuDevicesAtOnce) {
  auto r = run("train --devices cpu:2 --steps 1 --attention bf16");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("bf16 attention runs on CUDA devices"), std::string::npos) << r.output;
  auto tf32 = run("train --devices cpu:2 --steps 1 --matmul tf32");
  EXPECT_EQ(tf32.exit_code, 2) << tf32.output;
  EXPECT_NE(tf32.output.find("tf32 GEMMs run on CUDA devices"), std::string::npos) << tf32.output;
  auto bad = run("train --attention fp16");
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.output.find("--attention"), std::string::npos) << bad.output;
}

}  // namespace

namespace {

// Output of a child process, read back from a file while it runs.
std::string read_file(const std::string& path) {
  std::string out;
  if (FILE* f = std::fopen(path.c_str(), "r")) {
    std::array<char, 4096> buf{};
    while (auto n = std::fread(buf.data(), 1, buf.size(), f)) out.append(buf.data(), n);
    std::fclose(f);
  }
  return out;
}

TEST(Cli, EmbeddedTrainingSurvivesTheWholeProcessStoppedLongerThanTheFailureTimeout) {
  // What a loaded machine or a paused VM does to `flexsp train`: the process does not run for
  // 1.5 s, longer than its 1 s failure timeout. Its nodes share the head's process and the head
  // does not count its own stall as their silence: the job goes on.
  const std::string out_path = ::testing::TempDir() + "flexsp_train_stopped.log";
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    FILE* out = std::freopen(out_path.c_str(), "w", stdout);
    if (out == nullptr || ::dup2(::fileno(stdout), 2) < 0) ::_exit(99);
    ::execl(FLEXSP_CLI_PATH, FLEXSP_CLI_PATH, "train", "--devices", "cpu:2", "--steps", "16", "--batch-size", "16",
            "--no-calibrate", "--no-milp", "--failure-timeout", "1s", "--heartbeat-interval", "200ms",
            static_cast<char*>(nullptr));
    ::_exit(98);
  }
  // Stop it once it trains (step 3 printed), for 1.5 s.
  bool training = false;
  for (int i = 0; i < 1200 && !training; ++i) {
    training = read_file(out_path).find("step   3/") != std::string::npos;
    if (!training) ::usleep(50'000);
  }
  ASSERT_TRUE(training) << read_file(out_path);
  ASSERT_EQ(::kill(child, SIGSTOP), 0);
  ::usleep(1'500'000);
  ASSERT_EQ(::kill(child, SIGCONT), 0);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  const auto output = read_file(out_path);
  ASSERT_TRUE(WIFEXITED(status)) << output;
  EXPECT_EQ(WEXITSTATUS(status), 0) << output;
  EXPECT_NE(output.find("succeeded after 16 of 16 steps"), std::string::npos) << output;
  EXPECT_EQ(output.find(" lost"), std::string::npos) << output;
}

}  // namespace
