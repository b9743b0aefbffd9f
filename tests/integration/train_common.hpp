#pragma once
// Shared by the training integration tests: a cluster of real `flexsp` processes started with
// scripts/launch_cluster.sh in a private state directory, and helpers around it.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "flexsp/actors/job_client.hpp"
#include "../support/ports.hpp"

namespace flexsp::testing {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

struct run_result {
  int exit_code;
  std::string output;
};

inline run_result shell(const std::string& command) {
  FILE* pipe = ::popen((command + " 2>&1").c_str(), "r");
  if (!pipe) return {-1, "popen failed"};
  std::string out;
  std::array<char, 4096> buf{};
  while (auto n = std::fread(buf.data(), 1, buf.size(), pipe)) out.append(buf.data(), n);
  const int status = ::pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

inline std::string read_text(const fs::path& p) {
  std::ifstream in{p};
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

/// A cluster of real processes: head + nodes via the launch script, 200 ms heartbeats and a 2 s
/// failure timeout (a killed node is seen at once by its closed connection; the timeout only
/// has to survive a loaded test machine). Stops every process it started when destroyed.
class process_cluster {
public:
  explicit process_cluster(std::string tag) {
    std::random_device rd;
    state_ = fs::temp_directory_path() / fmt::format("flexsp-train-{}-{}-{:x}", tag, ::getpid(), rd());
    fs::create_directories(state_);
  }
  ~process_cluster() {
    stop();
    // A failed test (or FLEXSP_TEST_DUMP_LOGS=1) shows what the head and the nodes logged.
    if (::testing::Test::HasFailure() || std::getenv("FLEXSP_TEST_DUMP_LOGS")) dump_logs();
    std::error_code ec;
    fs::remove_all(state_, ec);
  }

  /// Prints the last lines of every process log under the state directory.
  void dump_logs() const {
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(state_ / "logs", ec)) {
      const auto text = read_text(e.path());
      std::size_t from = text.size(), lines = 0;
      while (from > 0 && lines < 60)
        if (text[--from] == '\n') ++lines;
      std::fprintf(stderr, "---- %s (last %zu lines)\n%s\n", e.path().filename().c_str(), lines,
                   text.substr(from).c_str());
    }
  }

  std::string env() const {
    return fmt::format("FLEXSP_STATE_DIR={} FLEXSP_BIN={}", state_.string(), FLEXSP_CLI_PATH);
  }

  /// Starts a head and `nodes` nodes of `devices` (e.g. "cpu:2"); false on failure.
  /// `port` 0 picks a free port (and the head keeps no state store).
  bool launch(int nodes, const std::string& devices, const std::string& heartbeat = "200ms",
              const std::string& failure_timeout = "2s", int port = 0) {
    auto r = shell(fmt::format("{} {}/scripts/launch_cluster.sh --nodes {} --devices {} --port {} --heartbeat-interval "
                               "{} --failure-timeout {} --timeout 60",
                               env(), FLEXSP_SOURCE_DIR, nodes, devices, port, heartbeat, failure_timeout));
    if (r.exit_code != 0) {
      ADD_FAILURE() << r.output;
      return false;
    }
    auto cur = nlohmann::json::parse(read_text(state_ / "current_cluster.json"), nullptr, false);
    if (cur.is_discarded()) return false;
    address_ = cur["address"].get<std::string>();
    secret_file_ = cur["secret_file"].get<std::string>();
    return true;
  }

  /// Takes over a cluster started by hand in this state directory (stopped with the rest).
  void adopt(std::string address, std::string secret_file) {
    address_ = std::move(address);
    secret_file_ = std::move(secret_file);
  }

  /// Adds one node process (daemonised by `flexsp start`).
  bool add_node(const std::string& devices) {
    auto r = shell(fmt::format("{} {} start --address {} --devices {} --secret-file {}", env(), FLEXSP_CLI_PATH,
                               address_, devices, secret_file_));
    if (r.exit_code != 0) ADD_FAILURE() << r.output;
    return r.exit_code == 0;
  }

  void stop() {
    if (address_.empty()) return;
    const auto port = address_.substr(address_.rfind(':') + 1);
    (void)shell(fmt::format("{} {}/scripts/launch_cluster.sh --stop --port {}", env(), FLEXSP_SOURCE_DIR, port));
    address_.clear();
  }

  /// Pids of the node processes, in start order.
  std::vector<pid_t> node_pids() const {
    std::vector<std::pair<fs::file_time_type, pid_t>> found;
    for (const auto& e : fs::directory_iterator(state_ / "procs")) {
      auto j = nlohmann::json::parse(read_text(e.path()), nullptr, false);
      if (!j.is_discarded() && j.value("role", "") == "node")
        found.emplace_back(e.last_write_time(), j["pid"].get<pid_t>());
    }
    std::sort(found.begin(), found.end());
    std::vector<pid_t> out;
    for (auto& [_, p] : found) out.push_back(p);
    return out;
  }

  std::shared_ptr<actors::job_client> client() const {
    net::transport_config t;
    auto s = read_text(secret_file_);
    while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
    t.secret.assign(s.begin(), s.end());
    auto c = actors::job_client::connect(address_, t);
    EXPECT_TRUE(c) << (c ? "" : c.error().to_string());
    return c ? *c : nullptr;
  }

  /// Starts a head again at the cluster's address (after the first one was killed), with the
  /// same state directory (its state store and generated secret) and `extra` flags.
  bool restart_head(const std::string& heartbeat, const std::string& failure_timeout, const std::string& extra = "") {
    const auto port = address_.substr(address_.rfind(':') + 1);
    auto r = shell(fmt::format("{} {} start --head --port {} --heartbeat-interval {} --failure-timeout {} {} 2>&1", env(),
                               FLEXSP_CLI_PATH, port, heartbeat, failure_timeout, extra));
    if (r.exit_code != 0) ADD_FAILURE() << r.output;
    return r.exit_code == 0;
  }

  /// Pid of the head process.
  pid_t head_pid() const {
    auto cur = nlohmann::json::parse(read_text(state_ / "current_cluster.json"), nullptr, false);
    return cur.is_discarded() ? 0 : cur["head_pid"].get<pid_t>();
  }
  /// Lines of every process log that contain `text`.
  std::vector<std::string> log_lines(const std::string& text) const {
    std::vector<std::string> out;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(state_ / "logs", ec)) {
      std::istringstream in{read_text(e.path())};
      for (std::string line; std::getline(in, line);)
        if (line.find(text) != std::string::npos) out.push_back(line);
    }
    return out;
  }

  const std::string& address() const { return address_; }
  const fs::path& state() const { return state_; }
  const std::string& secret_file() const { return secret_file_; }

private:
  fs::path state_;
  std::string address_;
  std::string secret_file_;
};

/// A small, quick job: 2 layers, d_model 32, sequences up to 256 tokens.
inline actors::job_spec small_job(std::uint64_t steps, std::uint32_t batch = 24) {
  actors::job_spec s;
  s.name = "itest";
  s.steps = steps;
  s.batch_size = batch;
  s.model.layers = 2;
  s.model.d_model = 32;
  s.model.heads = 4;
  s.model.max_seq = 256;
  s.optimizer.lr = 0.01f;
  s.warmup = 2;
  s.collective_timeout_ms = 5000;
  return s;
}

/// Parsed metrics lines.
struct step_record {
  std::uint64_t step;
  std::uint32_t devices;
  double loss;
  std::uint32_t retried;
  double recovery_ms;
};
inline step_record parse_step(const std::string& line) {
  auto j = nlohmann::json::parse(line);
  // The line numbers steps from 1; records keep the 0-based index.
  return {j["step"].get<std::uint64_t>() - 1, j["devices"].get<std::uint32_t>(), j["loss"].get<double>(),
          j["retried"].get<std::uint32_t>(), j["recovery_ms"].get<double>()};
}

}  // namespace flexsp::testing
