// Training benchmarks (label perf):
//   1. per-step scheduler overhead (planning not hidden + messaging + commit) as a fraction of
//      step time, and the cost model's predicted vs measured per-group time, on an embedded
//      cluster of 8 CPU devices running the default `flexsp train` job;
//   2. recovery time from the loss of a node to the next committed step, between real processes
//      (3 nodes x 2 CPU devices, 100 ms heartbeats, 500 ms failure timeout): kill -9 (the
//      connection closes) and SIGSTOP (the node hangs; only heartbeats tell); after a SIGSTOP,
//      SIGCONT once the job recovered, and the time until the node's devices train again; and
//      kill -9 of the head with a new head started at once on its port (from its state store).
// Correctness is reported next to speed: `#wrong` counts steps not committed exactly once.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "flexsp/actors/embedded.hpp"
#include "flexsp/actors/job_client.hpp"
#include "../../tests/support/ports.hpp"
#include "flexsp/core/log.hpp"

namespace {

using namespace flexsp;
using namespace flexsp::actors;
namespace fs = std::filesystem;
using namespace std::chrono_literals;

std::string shell(const std::string& command, int* rc = nullptr) {
  FILE* pipe = ::popen((command + " 2>&1").c_str(), "r");
  std::string out;
  std::array<char, 4096> buf{};
  while (auto n = std::fread(buf.data(), 1, buf.size(), pipe)) out.append(buf.data(), n);
  const int status = ::pclose(pipe);
  if (rc) *rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return out;
}

std::string read_text(const fs::path& p) {
  std::ifstream in{p};
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

double mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0 : s / static_cast<double>(v.size());
}

int overhead_and_cost_model(std::uint64_t steps, int devices) {
  auto cluster = embedded_cluster::start(1, devices);
  if (!cluster) {
    fmt::print(stderr, "embedded cluster: {}\n", cluster.error().to_string());
    return 1;
  }
  job_spec spec;
  spec.name = "bench";
  spec.steps = steps;
  std::vector<step_metrics> ms;
  auto job = (*cluster)->jobs().submit(spec, [&ms](const step_metrics& m) { ms.push_back(m); });
  if (!job) return 1;
  const auto st = (*job)->wait();
  std::vector<double> step_ms, overhead, solve, err_all, err_late, pred_ratio;
  std::uint64_t wrong = 0;
  for (std::size_t i = 0; i < ms.size(); ++i) {
    const auto& m = ms[i];
    wrong += m.step != i;
    step_ms.push_back(m.step_ms);
    overhead.push_back(m.overhead_ms);
    solve.push_back(m.solve_ms);
    err_all.push_back(m.group_error);
    if (i >= 10) err_late.push_back(m.group_error);
    pred_ratio.push_back(m.predicted_ms / std::max(1e-9, m.compute_ms));
  }
  wrong += ms.size() != steps;
  fmt::print("## overhead and cost model: embedded, {} CPU devices, GPT 2x64, batch {}, {} steps ({})\n", devices,
             spec.batch_size, steps, to_string(st.state));
  fmt::print("| mean step ms | overhead ms | overhead % of step | planner ms (hidden) | group error all steps | group "
             "error steps >= 10 | predicted/measured compute | loss first->last | #wrong |\n");
  fmt::print("| {:.0f} | {:.1f} | {:.2f}% | {:.2f} | {:.1f}% | {:.1f}% | {:.2f} | {:.3f}->{:.3f} | {} |\n", mean(step_ms),
             mean(overhead), 100 * mean(overhead) / std::max(1e-9, mean(step_ms)), mean(solve), 100 * mean(err_all),
             100 * mean(err_late), mean(pred_ratio), st.first_loss, st.last_loss, wrong);
  nlohmann::json j{{"bench", "overhead"},          {"step_ms", mean(step_ms)},      {"overhead_ms", mean(overhead)},
                   {"solve_ms", mean(solve)},       {"group_error", mean(err_all)},  {"group_error_late", mean(err_late)},
                   {"predicted_over_measured", mean(pred_ratio)}, {"wrong", wrong}};
  fmt::print("{}\n", j.dump());
  return wrong == 0 && st.state == job_state::succeeded ? 0 : 1;
}

struct recovery_trial {
  double ms = -1;
  double resumed_ms = -1;  // SIGSTOP: from SIGCONT to a step committed with every device again
  std::uint64_t wrong = 0;
  std::string state;
};

/// Not a signal to a node: kill -9 of the head, then a new head on its port (its state store).
constexpr int kHeadRestart = -1;

recovery_trial recovery(int signal_to_send) {
  recovery_trial out;
  std::random_device rd;
  const auto state = fs::temp_directory_path() / fmt::format("flexsp-bench-train-{:x}", rd());
  fs::create_directories(state);
  const std::string env = fmt::format("FLEXSP_STATE_DIR={} FLEXSP_BIN={}", state.string(), FLEXSP_CLI_PATH);
  int rc = 0;
  const int port = signal_to_send == kHeadRestart ? flexsp::testing::free_loopback_port() : 0;
  auto launch = shell(fmt::format("{} {}/scripts/launch_cluster.sh --nodes 3 --devices cpu:2 --port {} "
                                  "--heartbeat-interval 100ms --failure-timeout 500ms",
                                  env, FLEXSP_SOURCE_DIR, port),
                      &rc);
  auto cur = nlohmann::json::parse(read_text(state / "current_cluster.json"), nullptr, false);
  if (rc != 0 || cur.is_discarded()) {
    fmt::print(stderr, "launch failed: {}\n", launch);
    return out;
  }
  const std::string address = cur["address"];
  std::vector<pid_t> nodes;
  for (const auto& e : fs::directory_iterator(state / "procs")) {
    auto j = nlohmann::json::parse(read_text(e.path()), nullptr, false);
    if (!j.is_discarded() && j.value("role", "") == "node") nodes.push_back(j["pid"].get<pid_t>());
  }
  auto secret = read_text(cur["secret_file"].get<std::string>());
  while (!secret.empty() && std::isspace(static_cast<unsigned char>(secret.back()))) secret.pop_back();
  net::transport_config t;
  t.secret.assign(secret.begin(), secret.end());
  auto client = job_client::connect(address, t);
  if (client) {
    job_spec spec;
    spec.name = "recovery";
    spec.steps = 40;
    spec.batch_size = 24;
    spec.model.d_model = 32;
    spec.model.max_seq = 256;
    auto job = (*client)->submit(spec);
    std::int64_t sent_at = 0, continued_at = 0;
    std::uint64_t next = 0, all_devices = 0;
    if (job) {
      auto final = job->wait([&](const std::string& line) {
        auto m = nlohmann::json::parse(line);
        out.wrong += m["step"].get<std::uint64_t>() != ++next;  // numbered from 1
        const auto devices = m["devices"].get<std::uint64_t>();
        if (next == 1) all_devices = devices;
        const auto committed = m["committed_at_ms"].get<std::int64_t>();
        if (continued_at != 0 && out.resumed_ms < 0 && committed > continued_at && devices == all_devices)
          out.resumed_ms = static_cast<double>(committed - continued_at);
        if (sent_at == 0 && next == 8 && !nodes.empty()) {
          sent_at = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
                        .count();
          if (signal_to_send == kHeadRestart) {
            ::kill(cur["head_pid"].get<pid_t>(), SIGKILL);
            int head_rc = 0;
            auto again = shell(fmt::format("{} {} start --head --port {} --heartbeat-interval 100ms --failure-timeout "
                                           "500ms 2>&1",
                                           env, FLEXSP_CLI_PATH, address.substr(address.rfind(':') + 1)),
                               &head_rc);
            if (head_rc != 0) fmt::print(stderr, "the head did not start again: {}\n", again);
          } else {
            ::kill(nodes.back(), signal_to_send);
          }
        } else if (sent_at != 0 && out.ms < 0 && committed > sent_at) {
          out.ms = static_cast<double>(committed - sent_at);
          if (signal_to_send == SIGSTOP) {
            // The node was lost while stopped; let it run again: it rejoins as a new member.
            continued_at = std::chrono::duration_cast<std::chrono::milliseconds>(
                               std::chrono::system_clock::now().time_since_epoch())
                               .count();
            ::kill(nodes.back(), SIGCONT);
          }
        }
      });
      out.wrong += next != spec.steps;
      out.state = final ? std::string{actors::to_string(final->state)} : final.error().to_string();
    }
  }
  if (!nodes.empty() && signal_to_send != kHeadRestart) ::kill(nodes.back(), SIGKILL);
  (void)shell(fmt::format("{} {}/scripts/launch_cluster.sh --stop --port {}", env, FLEXSP_SOURCE_DIR,
                          address.substr(address.rfind(':') + 1)));
  std::error_code ec;
  if (out.ms < 0 || out.ms > 5000 || (signal_to_send == SIGSTOP && out.resumed_ms < 0))
    fmt::print(stderr, "slow or failed recovery or rejoin: logs kept in {}\n", (state / "logs").string());
  else
    fs::remove_all(state, ec);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  int trials = 3;
  int devices = 8;
  std::uint64_t steps = 30;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) {
      trials = 1;
      steps = 15;
    } else if (std::strcmp(argv[i], "--devices") == 0 && i + 1 < argc) {
      devices = std::atoi(argv[++i]);
    } else if (std::strcmp(argv[i], "--trials") == 0 && i + 1 < argc) {
      trials = std::atoi(argv[++i]);
    }
  }
  (void)flexsp::log::configure("warn");
  int rc = overhead_and_cost_model(steps, devices);
  fmt::print("\n## recovery: 3 nodes x 2 CPU devices, heartbeat 100 ms, failure timeout 500 ms; signal sent after the "
             "8th committed step (head: kill -9 of the head, a new head started at once on its port)\n");
  fmt::print("| signal | trial | ms to the next committed step | SIGCONT: ms until every device trains again | job | "
             "#wrong |\n");
  for (int sig : {SIGKILL, SIGSTOP, kHeadRestart}) {
    const char* name = sig == SIGKILL ? "kill -9" : sig == SIGSTOP ? "SIGSTOP" : "head kill -9 + restart";
    std::vector<double> all, resumed;
    for (int t = 0; t < trials; ++t) {
      auto r = recovery(sig);
      fmt::print("| {} | {} | {:.0f} | {} | {} | {} |\n", name, t + 1, r.ms,
                 sig == SIGSTOP ? fmt::format("{:.0f}", r.resumed_ms) : std::string{"-"}, r.state, r.wrong);
      std::fflush(stdout);
      if (r.ms >= 0) all.push_back(r.ms);
      if (r.resumed_ms >= 0) resumed.push_back(r.resumed_ms);
      if (r.wrong != 0 || r.state != "succeeded" || r.ms < 0) rc = 1;
    }
    nlohmann::json j{{"bench", "recovery"},
                     {"signal", sig == SIGKILL ? "kill" : sig == SIGSTOP ? "stop" : "head-restart"},
                     {"mean_ms", mean(all)},
                     {"max_ms", all.empty() ? -1.0 : *std::max_element(all.begin(), all.end())}};
    if (sig == SIGSTOP) {
      j["resumed_mean_ms"] = mean(resumed);
      j["resumed_trials"] = resumed.size();
    }
    fmt::print("{}\n", j.dump());
  }
  return rc;
}
