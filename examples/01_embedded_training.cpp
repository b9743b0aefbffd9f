// 01: train a small GPT on 4 CPU devices with a head, a node and the job in this process.
// The scheduler re-plans every step with FlexSP; the example checks that the loss fell and that
// every step was committed once.
#include <cstdio>

#include "flexsp/actors/embedded.hpp"

int main() {
  using namespace flexsp::actors;
  auto cluster = embedded_cluster::start(/*nodes=*/1, /*devices_per_node=*/4);
  if (!cluster) {
    std::fprintf(stderr, "cannot start: %s\n", cluster.error().to_string().c_str());
    return 1;
  }
  job_spec spec;
  spec.name = "example01";
  spec.steps = 12;
  spec.batch_size = 24;
  spec.model.d_model = 32;
  spec.model.max_seq = 256;
  spec.optimizer.lr = 0.01f;
  std::uint64_t expected_step = 0;
  bool in_order = true;
  auto job = (*cluster)->jobs().submit(spec, [&](const step_metrics& m) {
    in_order = in_order && m.step == expected_step++;
    std::printf("step %2llu  loss %.3f  devices %u  plan %zu micro-batch(es)  %.0f ms\n",
                static_cast<unsigned long long>(m.step + 1), m.loss, m.devices, m.plan.size(), m.step_ms);
  });
  if (!job) {
    std::fprintf(stderr, "submit: %s\n", job.error().to_string().c_str());
    return 1;
  }
  const auto st = (*job)->wait();
  std::printf("%s: loss %.3f -> %.3f\n", std::string{to_string(st.state)}.c_str(), st.first_loss, st.last_loss);
  const bool ok = st.state == job_state::succeeded && in_order && expected_step == spec.steps &&
                  st.last_loss < st.first_loss - 1.0;
  std::printf("%s\n", ok ? "OK" : "FAILED");
  return ok ? 0 : 1;
}
