// `flexsp plan` and `flexsp plan-replay` as a user runs them: real processes, exit codes, output.
#include <array>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

namespace {

struct run_result {
  int exit_code;
  std::string output;
};

run_result shell(const std::string& command) {
  FILE* pipe = ::popen((command + " 2>&1").c_str(), "r");
  EXPECT_NE(pipe, nullptr);
  std::string out;
  std::array<char, 4096> buf{};
  while (auto n = std::fread(buf.data(), 1, buf.size(), pipe)) out.append(buf.data(), n);
  const int status = ::pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

run_result flexsp(const std::string& args) { return shell(std::string{FLEXSP_CLI_PATH} + " " + args); }

bool contains(const std::string& text, const std::string& what) { return text.find(what) != std::string::npos; }

TEST(PlanCli, HelpNamesTheInputsAndTheSyntheticDemo) {
  auto r = flexsp("plan --help");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  for (const char* flag : {"--lengths", "--synthetic", "--devices", "--profile", "--strategy", "--json"})
    EXPECT_TRUE(contains(r.output, flag)) << flag << "\n" << r.output;
}

TEST(PlanCli, SyntheticBatchGivesJsonWithGroupsAndBounds) {
  auto r = flexsp("plan --synthetic wikipedia --batch-size 128 --seed 4 --devices 16 --devices-per-node 8 "
                  "--profile gpt-7b --json");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  for (const char* key : {"\"strategy\": \"flexsp\"", "\"predicted_ms\"", "\"lower_bound_ms\"", "\"solve_ms\"",
                          "\"status\"", "\"micro_batches\"", "\"devices\"", "\"sequences\"", "\"memory_mb\""})
    EXPECT_TRUE(contains(r.output, key)) << key << "\n" << r.output;
}

std::string read_file(const std::string& path) {
  std::ifstream in{path};
  return {std::istreambuf_iterator<char>{in}, std::istreambuf_iterator<char>{}};
}

std::size_t count(const std::string& text, const std::string& what) {
  std::size_t n = 0;
  for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + what.size())) ++n;
  return n;
}

TEST(PlanCli, SvgDrawsEveryGroupOnItsDevices) {
  const std::string svg = ::testing::TempDir() + "flexsp_plan.svg";
  std::remove(svg.c_str());
  auto r = shell(std::string{FLEXSP_CLI_PATH} +
                 " plan --synthetic wikipedia --batch-size 96 --seed 2 --devices 16 --devices-per-node 8 --json --svg " +
                 svg + " 2>/dev/null");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  // One block per device of every group that holds sequences.
  std::size_t device_blocks = 0;
  for (auto at = r.output.find("\"degree\": "); at != std::string::npos; at = r.output.find("\"degree\": ", at + 1)) {
    const auto seqs = r.output.find("\"sequences\": [", at);
    const bool empty = seqs != std::string::npos && r.output.compare(seqs + 14, 1, "]") == 0;
    if (!empty) device_blocks += static_cast<std::size_t>(std::stoi(r.output.substr(at + 10)));
  }
  const auto picture = read_file(svg);
  EXPECT_TRUE(contains(picture, "<svg")) << picture.substr(0, 200);
  EXPECT_TRUE(contains(picture, "</svg>"));
  EXPECT_GT(device_blocks, 0u);
  EXPECT_EQ(count(picture, "class=\"group\""), device_blocks);
  EXPECT_TRUE(contains(picture, "SP degree"));
  auto bad = flexsp("plan --synthetic wikipedia --batch-size 8 --svg /nonexistent-dir/x.svg");
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_TRUE(contains(bad.output, "--svg: cannot write /nonexistent-dir/x.svg")) << bad.output;
  std::remove(svg.c_str());
}

TEST(PlanCli, ReadsLengthsFromStdinAndPrintsATable) {
  auto r = shell("printf '1000\\n2000\\n16000\\n300\\n' | " + std::string{FLEXSP_CLI_PATH} +
                 " plan --lengths - --devices 8 --devices-per-node 8 --strategy batchada");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "predicted step")) << r.output;
  EXPECT_TRUE(contains(r.output, "batchada")) << r.output;
}

TEST(PlanCli, ALongLengthsFileIsCutIntoBatchesAndWhatTheContextLimitDroppedIsCounted) {
  // 1200 lengths, 101..1300: the limit drops the 50 above 1250, leaving batches of 512, 512, 126.
  const std::string lengths = "seq 1200 | awk '{ print 100 + $1 }' | " + std::string{FLEXSP_CLI_PATH} +
                              " plan --lengths - --devices 8 --devices-per-node 8 --context-limit 1250";
  auto r = shell(lengths + " --batch-index 2 --json");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "stdin holds 1150 sequences (50 longer than --context-limit 1250 dropped): planning "
                                 "batch 2 of 3 (sequences 1024..1149"))
      << r.output;
  EXPECT_TRUE(contains(r.output, "planning 126 sequences on 8 devices")) << r.output;
  auto beyond = shell(lengths + " --batch-index 3");
  EXPECT_NE(beyond.exit_code, 0);
  EXPECT_TRUE(contains(beyond.output, "--batch-index 3: stdin holds 1150 sequences")) << beyond.output;
  EXPECT_TRUE(contains(beyond.output, "indexes 0..2")) << beyond.output;
  auto whole = shell("printf '1000\\n2000\\n' | " + std::string{FLEXSP_CLI_PATH} + " plan --lengths - --devices 8");
  ASSERT_EQ(whole.exit_code, 0) << whole.output;
  EXPECT_TRUE(contains(whole.output, "planning 2 sequences")) << "a short file is one batch\n" << whole.output;
}

TEST(PlanCli, UnreadableFileAndBadFlagsFailWithAMessage) {
  auto missing = flexsp("plan --lengths /nonexistent/lengths.txt");
  EXPECT_NE(missing.exit_code, 0);
  EXPECT_TRUE(contains(missing.output, "/nonexistent/lengths.txt")) << missing.output;

  auto bad = flexsp("plan --synthetic wikipedia --devices lots");
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_TRUE(contains(bad.output, "--devices")) << bad.output;

  EXPECT_TRUE(contains(bad.output, "flexsp plan: --devices: 'lots' is not a number")) << bad.output;
  auto negative = flexsp("plan --synthetic wikipedia --batch-size -3");
  EXPECT_TRUE(contains(negative.output, "--batch-size: '-3' is not a positive number")) << negative.output;
  auto steps = flexsp("train --steps many");
  EXPECT_NE(steps.exit_code, 0);
  EXPECT_TRUE(contains(steps.output, "flexsp train: --steps: 'many' is not a value")) << steps.output;

  auto strategy = flexsp("plan --synthetic wikipedia --batch-size 8 --strategy fastest");
  EXPECT_NE(strategy.exit_code, 0);
  EXPECT_TRUE(contains(strategy.output, "--strategy: unknown strategy 'fastest'")) << strategy.output;

  auto both = flexsp("plan --synthetic wikipedia --lengths -");
  EXPECT_NE(both.exit_code, 0);
  EXPECT_TRUE(contains(both.output, "exactly one")) << both.output;
}

TEST(PlanCli, SequenceThatFitsNowhereIsReportedByIndex) {
  auto r = shell("printf '100\\n900000\\n' | " + std::string{FLEXSP_CLI_PATH} + " plan --lengths - --devices 64");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_TRUE(contains(r.output, "sequence 1")) << r.output;
  EXPECT_TRUE(contains(r.output, "cannot fit")) << r.output;
}

TEST(PlanReplayCli, ReplaysAGzippedDatasetWithThePaperProtocol) {
  const std::string dir = FLEXSP_BINARY_DIR;
  const std::string gz = dir + "/plan_replay_test_lengths.txt.gz";
  auto made = shell("awk 'BEGIN { srand(3); for (i = 0; i < 600; i++) print int(50 + 8000 * rand() ^ 4) }' | gzip -c > " + gz);
  ASSERT_EQ(made.exit_code, 0) << made.output;
  auto r = flexsp("plan-replay --dataset " + gz + " --batch-size 128 --iterations 3 --devices 16 --devices-per-node 8 "
                  "--context-limit 60000 --strategies flexsp,static:16,batchada --json");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  for (const char* key : {"\"summary\"", "\"per_batch\"", "\"solve_ms_p99\"", "\"speedup_of_flexsp\"", "\"static:16\"",
                          "\"gap_to_lower_bound\""})
    EXPECT_TRUE(contains(r.output, key)) << key << "\n" << r.output;
  EXPECT_TRUE(contains(r.output, "batch 3/3")) << "progress goes to stderr\n" << r.output;

  auto table = flexsp("plan-replay --dataset " + gz + " --batch-size 128 --iterations 2 --devices 16 --strategies flexsp,static:16");
  ASSERT_EQ(table.exit_code, 0) << table.output;
  EXPECT_TRUE(contains(table.output, "solve_p50")) << table.output;
}

TEST(PlanReplayCli, MissingDatasetFailsWithItsName) {
  auto r = flexsp("plan-replay --dataset /nonexistent/data.txt.gz --iterations 1");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_TRUE(contains(r.output, "/nonexistent/data.txt.gz")) << r.output;
}

TEST(ProfileCli, MeasuresAProfileThatThePlannerReads) {
  const std::string out = ::testing::TempDir() + "flexsp-profile-" + std::to_string(::getpid()) + ".json";
  auto r = flexsp("profile --devices cpu:2 --out " + out);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "alpha1")) << r.output;
  std::ifstream in{out};
  ASSERT_TRUE(in.good()) << out;
  const std::string text{std::istreambuf_iterator<char>{in}, {}};
  EXPECT_TRUE(contains(text, "\"beta1\"")) << text;
  // The file is a profile `flexsp plan` plans with.
  auto plan = flexsp("plan --synthetic wikipedia --batch-size 16 --devices 2 --devices-per-node 2 --profile " + out);
  EXPECT_EQ(plan.exit_code, 0) << plan.output;
  EXPECT_TRUE(contains(plan.output, "predicted step")) << plan.output;
  std::remove(out.c_str());
}

TEST(ProfileCli, BadFlagsFailNamingThem) {
  auto devices = flexsp("profile --devices gpu:2");
  EXPECT_EQ(devices.exit_code, 2) << devices.output;
  EXPECT_TRUE(contains(devices.output, "--devices")) << devices.output;
  auto config = flexsp("profile --config /nonexistent/job.json");
  EXPECT_EQ(config.exit_code, 2) << config.output;
  EXPECT_TRUE(contains(config.output, "/nonexistent/job.json")) << config.output;
  auto both = flexsp("profile --address 127.0.0.1:1 --devices cpu:2");
  EXPECT_NE(both.exit_code, 0) << both.output;
  EXPECT_TRUE(contains(both.output, "--address")) << both.output;
}

}  // namespace
