// The `flexsp` binary as a user runs it: a real process, its exit code and its output.
#include <array>
#include <cstdio>
#include <string>

#include <gtest/gtest.h>
#include <sys/wait.h>

namespace {

struct run_result {
  int exit_code;
  std::string output;
};

run_result run(const std::string& args) {
  const std::string command = std::string{FLEXSP_CLI_PATH} + " " + args + " 2>&1";
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

TEST(Cli, InfoReportsTheCudaBackendAsJson) {
  auto r = run("info --json");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("\"compiled\""), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("\"cpu_devices\""), std::string::npos) << r.output;
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
