// 02: submit a job to a running cluster from C++ and stream its metrics.
//
//   scripts/launch_cluster.sh --nodes 2 --devices cpu:2
//   FLEXSP_SECRET_FILE=<the head's secret file> ./example_02_submit_job 127.0.0.1:7400
//
// The address defaults to FLEXSP_ADDRESS; the secret comes from FLEXSP_CLUSTER_SECRET or
// FLEXSP_SECRET_FILE. Checks that every step arrived once, in order, and the loss fell.
#include <cstdio>
#include <cstdlib>

#include <nlohmann/json.hpp>

#include "flexsp/actors/job_client.hpp"

int main(int argc, char** argv) {
  using namespace flexsp::actors;
  const char* env_address = std::getenv("FLEXSP_ADDRESS");
  const std::string address = argc > 1 ? argv[1] : (env_address ? env_address : "127.0.0.1:7400");
  auto client = job_client::connect(address);
  if (!client) {
    std::fprintf(stderr, "connect %s: %s\n", address.c_str(), client.error().to_string().c_str());
    return 1;
  }
  auto spec = parse_job_spec(R"({"name": "example02", "steps": 12, "batch_size": 24,
      "model": {"layers": 2, "d_model": 32, "heads": 4, "max_seq": 256}, "optimizer": {"lr": 0.01, "warmup": 2}})");
  if (!spec) {
    std::fprintf(stderr, "spec: %s\n", spec.error().message().c_str());
    return 1;
  }
  auto job = (*client)->submit(*spec);
  if (!job) {
    std::fprintf(stderr, "submit: %s\n", job.error().to_string().c_str());
    return 1;
  }
  std::printf("submitted %s\n", job->id().c_str());
  std::uint64_t next = 0;
  bool in_order = true;
  auto final = job->wait([&](const std::string& line) {
    auto m = nlohmann::json::parse(line);
    in_order = in_order && m["step"].get<std::uint64_t>() == ++next;  // steps are numbered from 1
    std::printf("step %2llu  loss %.3f  devices %d\n", static_cast<unsigned long long>(next), m["loss"].get<double>(),
                m["devices"].get<int>());
  });
  if (!final) {
    std::fprintf(stderr, "wait: %s\n", final.error().to_string().c_str());
    return 1;
  }
  const bool ok = final->state == flexsp::actors::job_state::succeeded && in_order && next == spec->steps && final->last_loss < final->first_loss - 1.0;
  std::printf("%s: loss %.3f -> %.3f\n%s\n", std::string{flexsp::actors::to_string(final->state)}.c_str(), final->first_loss, final->last_loss, ok ? "OK" : "FAILED");
  return ok ? 0 : 1;
}
