// 03: an elastic run. Submits a job to a running cluster of at least two nodes, kills one node
// process with SIGKILL after a few steps, and checks that the job still commits every step
// exactly once, on fewer devices, with the loss still falling.
//
//   scripts/launch_cluster.sh --nodes 3 --devices cpu:2 --heartbeat-interval 100ms --failure-timeout 500ms
//   FLEXSP_SECRET_FILE=... ./example_03_elastic_node_loss 127.0.0.1:7400 <pid of a node process>
#include <signal.h>

#include <cstdio>
#include <cstdlib>

#include <nlohmann/json.hpp>

#include "flexsp/actors/job_client.hpp"

int main(int argc, char** argv) {
  using namespace flexsp::actors;
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s HEAD_ADDRESS NODE_PID\n", argv[0]);
    return 2;
  }
  const pid_t victim = static_cast<pid_t>(std::atoi(argv[2]));
  auto client = job_client::connect(argv[1]);
  if (!client) {
    std::fprintf(stderr, "connect: %s\n", client.error().to_string().c_str());
    return 1;
  }
  job_spec spec;
  spec.name = "example03";
  spec.steps = 20;
  spec.batch_size = 24;
  spec.model.d_model = 32;
  spec.model.max_seq = 256;
  spec.optimizer.lr = 0.01f;
  // Layout-search plans only (no CBC): each next plan is ready when a step commits, so the kill
  // below lands while a step is in flight and that step is re-planned.
  spec.milp = false;
  auto job = (*client)->submit(spec);
  if (!job) {
    std::fprintf(stderr, "submit: %s\n", job.error().to_string().c_str());
    return 1;
  }
  std::uint64_t next = 0;
  bool in_order = true, killed = false;
  int devices_before = 0, devices_after = 0, retried = 0;
  auto final = job->wait([&](const std::string& line) {
    auto m = nlohmann::json::parse(line);
    in_order = in_order && m["step"].get<std::uint64_t>() == ++next;  // steps are numbered from 1
    const int devices = m["devices"].get<int>();
    retried += m["retried"].get<int>();
    std::printf("step %2llu  loss %.3f  devices %d%s\n", static_cast<unsigned long long>(next), m["loss"].get<double>(),
                devices, m["retried"].get<int>() ? "  (re-planned after the node loss)" : "");
    if (!killed) devices_before = devices;
    else devices_after = devices;
    if (!killed && next == 6) {
      std::printf("kill -9 %d\n", static_cast<int>(victim));
      killed = ::kill(victim, SIGKILL) == 0;
    }
  });
  if (!final) {
    std::fprintf(stderr, "wait: %s\n", final.error().to_string().c_str());
    return 1;
  }
  const bool ok = final->state == job_state::succeeded && in_order && next == spec.steps && killed &&
                  devices_after < devices_before && retried >= 1 && final->last_loss < final->first_loss - 1.0;
  std::printf("%s: %d -> %d devices, loss %.3f -> %.3f\n%s\n", std::string{to_string(final->state)}.c_str(), devices_before, devices_after,
              final->first_loss, final->last_loss, ok ? "OK" : "FAILED");
  return ok ? 0 : 1;
}
