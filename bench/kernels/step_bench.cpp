// Training throughput on one CPU device: tokens/s of forward + backward + AdamW for the
// reference width (4 layers, d_model 256, 8 heads, vocab 256) in both families, on a long-tail
// batch of sequences up to 4K tokens: GPT-2 and LLaMA (GQA with 4 K/V heads, SwiGLU of 688,
// about the same parameters), their steps alternated in one run, and the ratio. Correctness:
// each loss is finite and starts near ln(256).
//   flexsp_bench_kernels_step [--family gpt2|llama] [--steps K] [--json]
// One family and --json print each step's seconds as JSON (scripts/bench_vs_torch.py drives it
// against PyTorch); threads: FLEXSP_CPU_THREADS.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <string>

#include "flexsp/kernels/data.hpp"
#include "flexsp/kernels/model.hpp"

using namespace flexsp::kernels;

namespace {

struct run {
  const char* name;
  model_config cfg;
  model m;
  std::vector<double> secs;
  double first_loss = 0, last_loss = 0;
};

}  // namespace

int main(int argc, char** argv) {
  restart_with_best_blas_kernels(argv);
  std::string only;
  int steps = 4;
  bool json = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--family") == 0 && i + 1 < argc) only = argv[++i];
    else if (std::strcmp(argv[i], "--steps") == 0 && i + 1 < argc) steps = std::atoi(argv[++i]);
    else if (std::strcmp(argv[i], "--json") == 0) json = true;
    else {
      std::fprintf(stderr, "usage: %s [--family gpt2|llama] [--steps K] [--json]\n", argv[0]);
      return 2;
    }
  }
  (void)add_cpu_devices(1);  // one CPU device: FLEXSP_CPU_THREADS (else every core) sets its threads
  const model_config gpt2{.layers = 4, .d_model = 256, .heads = 8, .vocab = 256, .max_positions = 4096};
  const model_config llama{.family = model_family::llama, .layers = 4, .d_model = 256, .heads = 8, .vocab = 256,
                           .max_positions = 4096, .kv_heads = 4, .ffn = 688};
  std::vector<run> runs;
  if (only.empty() || only == "gpt2") runs.push_back({"gpt2", gpt2, model::create(gpt2, 1).value(), {}, 0, 0});
  if (only.empty() || only == "llama") runs.push_back({"llama", llama, model::create(llama, 1).value(), {}, 0, 0});
  if (runs.empty() || steps < 1) {
    std::fprintf(stderr, "--family gpt2 or llama, --steps at least 1\n");
    return 2;
  }
  const std::vector<std::int64_t> lengths{4096, 1500, 900, 600, 400, 300, 200, 100};
  const auto tokens = std::accumulate(lengths.begin(), lengths.end(), std::int64_t{0});
  auto comm = make_local_communicator();
  auto layout = ulysses_layout::make(lengths, 1, 0, 8).value();
  const int kSteps = steps;
  for (int step = 0; step <= kSteps; ++step) {
    auto in = shard_inputs(layout, synthetic_sequences(lengths, 10 + step)).value();
    for (auto& r : runs) {  // alternated: both see the same machine load
      const auto t0 = std::chrono::steady_clock::now();
      (void)r.m.zero_grads().value();
      auto res = r.m.forward_backward(*comm, layout, in, 1.0f / static_cast<float>(tokens));
      if (!res) {
        std::fprintf(stderr, "%s: %s\n", r.name, res.error().to_string().c_str());
        return 1;
      }
      (void)r.m.optimizer_step({}, 1.0).value();
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (step > 0) r.secs.push_back(s);  // step 0 warms caches and the allocator
      (step == 0 ? r.first_loss : r.last_loss) = res->loss_sum / static_cast<double>(tokens);
    }
  }
  int wrong = 0;
  if (json) {
    for (const auto& r : runs) {
      std::printf("{\"family\":\"%s\",\"tokens\":%lld,\"first_loss\":%.6f,\"seconds\":[", r.name,
                  static_cast<long long>(tokens), r.first_loss);
      for (std::size_t i = 0; i < r.secs.size(); ++i) std::printf("%s%.6f", i ? "," : "", r.secs[i]);
      std::printf("]}\n");
    }
    return 0;
  }
  std::vector<double> rates;
  std::printf("batch %zu seqs, %lld tokens (max 4096), 4 layers, d_model 256, 8 heads\n", lengths.size(),
              static_cast<long long>(tokens));
  for (auto& r : runs) {
    std::sort(r.secs.begin(), r.secs.end());
    const double med = r.secs[r.secs.size() / 2];
    const bool ok = std::isfinite(r.last_loss) && std::abs(r.first_loss - std::log(256.0)) < 0.3;
    wrong += ok ? 0 : 1;
    rates.push_back(static_cast<double>(tokens) / med);
    std::printf("%-5s %lld params: fwd+bwd+AdamW median %.3f s/step over %d steps = %.0f tokens/s; loss %.3f -> %.3f\n",
                r.name, static_cast<long long>(r.cfg.parameter_count()), med, kSteps, rates.back(), r.first_loss,
                r.last_loss);
  }
  if (rates.size() == 2) std::printf("llama / gpt2 tokens/s: %.2fx; #wrong %d\n", rates[1] / rates[0], wrong);
  return wrong == 0 ? 0 : 1;
}
