// Peak device memory per rank of an SP group, predicted against measured: for both model
// families and a range of groups (sequence sets x SP degree), every rank of the group runs one
// micro-batch (forward and backward, Gloo in-process between ranks) on a fresh CPU device and
// reports the device's high-water mark of allocated bytes. Two predictions are compared with it:
// model::footprint (the exact accounting) and the planner's linear model that the scheduler
// builds from estimate_memory (fixed + per_token * tokens / degree). Prints one line per group
// and the mean and max relative error of each prediction.
//
//   flexsp_bench_kernels_memory [--quick]
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "flexsp/kernels/data.hpp"
#include "flexsp/kernels/gloo_communicator.hpp"
#include "flexsp/kernels/model.hpp"
#include "flexsp/kernels/rendezvous_store.hpp"

using namespace flexsp::kernels;

namespace {

struct group_case {
  const char* name;
  std::vector<std::int64_t> lengths;
  int degree;
};

struct rank_result {
  std::uint64_t measured = 0, exact = 0;
};

std::vector<rank_result> run_group(const model_config& cfg, const group_case& g) {
  auto seqs = synthetic_sequences(g.lengths, 3, cfg.vocab);
  std::int64_t tokens = 0;
  for (auto l : g.lengths) tokens += l;
  memory_store store;
  std::vector<rank_result> out(static_cast<std::size_t>(g.degree));
  std::vector<std::thread> threads;
  for (int r = 0; r < g.degree; ++r)
    threads.emplace_back([&, r] {
      auto comm = g.degree == 1 ? make_local_communicator()
                                : make_gloo_communicator(store, "mem", r, g.degree, gloo_options{}).value();
      auto m = model::create(cfg, 1).value();
      auto layout = ulysses_layout::make(g.lengths, g.degree, r, cfg.heads).value();
      auto inputs = shard_inputs(layout, seqs).value();
      auto& o = out[static_cast<std::size_t>(r)];
      o.exact = m.footprint(layout).value().total();
      if (auto res = m.forward_backward(*comm, layout, inputs, 1.0f / static_cast<float>(tokens)); !res) {
        std::fprintf(stderr, "rank %d: %s\n", r, res.error().to_string().c_str());
        std::exit(1);
      }
      o.measured = m.dev().memory().peak;
    });
  for (auto& t : threads) t.join();
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  model_config gpt{.layers = 4, .d_model = 256, .heads = 8, .vocab = 256, .max_positions = 16384};
  model_config llama = gpt;
  llama.family = model_family::llama;
  llama.kv_heads = 4;
  llama.ffn = 688;
  const std::vector<group_case> cases = {
      {"one 4K sequence", {4096}, 1},
      {"one 8K sequence", {8192}, 2},
      {"one 16K sequence", {16384}, 4},
      {"long tail (8 seqs)", {4096, 1500, 900, 600, 400, 300, 200, 100}, 1},
      {"long tail (8 seqs)", {4096, 1500, 900, 600, 400, 300, 200, 100}, 2},
      {"short seqs (32 x 128)", std::vector<std::int64_t>(32, 128), 1},
      {"short seqs (64 x 200)", std::vector<std::int64_t>(64, 200), 4},
      {"12K + 2K + 1K", {12000, 2000, 1000}, 8},
  };
  std::printf("%-6s %-24s %6s %7s %12s %12s %12s %9s\n", "model", "group", "degree", "tokens", "measured MiB",
              "footprint", "planner", "plan err");
  double sum_err = 0, max_err = 0, max_exact_err = 0;
  int n = 0;
  for (const auto* cfg : {&gpt, &llama}) {
    for (const auto& g : cases) {
      if (quick && g.degree > 2) continue;
      std::int64_t tokens = 0;
      for (auto l : g.lengths) tokens += l;
      const auto est = estimate_memory(*cfg, g.degree, 1);
      const double planner = est.fixed + est.per_token * static_cast<double>(tokens) / g.degree;
      const auto ranks = run_group(*cfg, g);
      // The group's peak is its fullest rank's (rank 0 holds the extra tokens and heads).
      const auto worst = *std::max_element(ranks.begin(), ranks.end(),
                                           [](const auto& a, const auto& b) { return a.measured < b.measured; });
      const double measured = static_cast<double>(worst.measured);
      const double err = std::abs(planner - measured) / measured;
      const double exact_err = std::abs(static_cast<double>(worst.exact) - measured) / measured;
      sum_err += err;
      max_err = std::max(max_err, err);
      max_exact_err = std::max(max_exact_err, exact_err);
      ++n;
      std::printf("%-6s %-24s %6d %7lld %12.2f %12.2f %12.2f %8.2f%%\n", to_string(cfg->family).data(), g.name,
                  g.degree, static_cast<long long>(tokens), measured / 1048576.0,
                  static_cast<double>(worst.exact) / 1048576.0, planner / 1048576.0, 100 * err);
    }
  }
  std::printf("planner's linear model vs measured peak over %d groups: mean %.2f%%, max %.2f%% (goal <= 5%%); "
              "exact footprint: max %.4f%%\n",
              n, 100 * sum_err / n, 100 * max_err, 100 * max_exact_err);
  return 0;
}
