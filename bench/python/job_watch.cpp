// The C++ reference of the Python client benchmark: watches a job through the C++ job client
// (pushed metrics, as `flexsp job submit --wait` does) and prints, per committed step, when the
// line arrived and when the head stamped the commit (Unix ms), until the job ends.
//   flexsp_bench_job_watch ADDRESS JOB_ID     (the secret as the CLI finds it)
#include <chrono>
#include <cstdio>

#include <nlohmann/json.hpp>

#include "flexsp/actors/job_client.hpp"

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: flexsp_bench_job_watch ADDRESS JOB_ID\n");
    return 2;
  }
  auto client = flexsp::actors::job_client::connect(argv[1]);
  if (!client) {
    std::fprintf(stderr, "job_watch: %s\n", client.error().to_string().c_str());
    return 1;
  }
  auto job = (*client)->attach(argv[2]);
  if (!job) {
    std::fprintf(stderr, "job_watch: %s\n", job.error().to_string().c_str());
    return 1;
  }
  auto final = job->wait([](const std::string& line) {
    // Microseconds, as Python's time.time() has them (the commit stamp itself is whole ms).
    const double now = static_cast<double>(std::chrono::duration_cast<std::chrono::microseconds>(
                                               std::chrono::system_clock::now().time_since_epoch())
                                               .count()) /
                       1000.0;
    auto m = nlohmann::json::parse(line, nullptr, false);
    if (m.is_discarded()) return;
    std::printf("%llu %.3f %lld\n", static_cast<unsigned long long>(m.value("step", 0ull)), now,
                static_cast<long long>(m.value("committed_at_ms", 0ll)));
    std::fflush(stdout);
  });
  if (!final) {
    std::fprintf(stderr, "job_watch: %s\n", final.error().to_string().c_str());
    return 1;
  }
  return 0;
}
