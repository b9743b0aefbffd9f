// Training through GPU device actors under the CPU emulation: an embedded cluster trains a tiny
// GPT (and a tiny LLaMA with grouped-query attention) on `cuda:N` devices and on `cpu` devices with the same seed, data and plans, and the losses
// must agree. Covers the GPU replica (checksums computed on the device, the all-reduce and the
// Ulysses exchanges over Gloo through the host and over NCCL in device memory, state broadcast
// to devices that join mid-run, checkpoint download) end to end, and bf16 attention (with fp32
// and tf32 GEMMs) against fp32. Exit status 0 when every check passed.
//
// Usage: training_check [DEVICES]   (DEVICES per kind, default 2; FLEXSP_EMU_GPUS >= DEVICES)
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "flexsp/actors/embedded.hpp"

using namespace flexsp;
using namespace flexsp::actors;

namespace {

job_spec tiny(const std::string& backend, const std::string& collectives, const std::string& strategy,
              const std::string& dir) {
  job_spec s;
  s.name = "emu-" + backend;
  s.steps = 3;
  s.batch_size = 4;
  s.model = {.layers = 1, .d_model = 16, .heads = 2, .vocab = 256, .max_seq = 24};
  s.optimizer.lr = 0.01f;
  s.calibrate = false;
  s.milp = false;
  // "auto" (or anything else) leaves the choice to the scheduler.
  if (device_kind k; parse_device_kind(backend, k)) s.backend = k;
  if (collective_library c; parse_collective_library(collectives, c)) s.collectives = c;
  s.strategy = job_strategy::parse(strategy).value();
  s.checkpoint_dir = dir;
  return s;
}

struct outcome {
  job_status status;
  std::vector<double> losses;
};

outcome run(embedded_cluster& c, const job_spec& spec, std::function<void(std::uint64_t)> after_step = {}) {
  outcome out;
  auto job = c.jobs().submit(
      spec,
      [&](const step_metrics& m) {
        out.losses.push_back(m.loss);
        if (after_step) after_step(m.step);
      },
      [](const std::string& line) { std::printf("  [job] %s\n", line.c_str()); });
  if (!job) {
    std::printf("submit failed: %s\n", job.error().to_string().c_str());
    return out;
  }
  out.status = (*job)->wait();
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  const int n = argc > 1 ? std::atoi(argv[1]) : 2;
  const auto dir = std::filesystem::temp_directory_path() / "flexsp-cuda-emulation";
  std::filesystem::remove_all(dir);
  int failures = 0;
  for (const std::string strategy : {"flexsp", "static:2"}) {
    for (const std::string collectives : {"gloo", "nccl"}) {
      auto cluster = embedded_cluster::start(0, 0).value();
      std::vector<device_id> cpus;
      for (int i = 0; i < n; ++i) cpus.push_back({device_kind::cpu, static_cast<std::uint32_t>(i)});
      (void)cluster->add_node(cpus);
      // As many GPU nodes now as a static degree needs (a job asking for more devices than the
      // cluster offers is refused at submit); one more joins after the first step and gets the
      // state by broadcast.
      const int first = strategy == "static:2" ? 2 : 1;
      for (int i = 0; i < first; ++i)
        (void)cluster->add_node(std::vector<device_id>{{device_kind::cuda, static_cast<std::uint32_t>(i)}});
      const auto tag = strategy + "-" + collectives;
      const auto cpu = run(*cluster, tiny("cpu", "gloo", strategy, (dir / ("cpu-" + tag)).string()));
      const auto gpu = run(*cluster, tiny("cuda", collectives, strategy, (dir / ("cuda-" + tag)).string()),
                           [&](std::uint64_t step) {
                             if (step == 0)
                               for (int i = first; i < std::max(n, first + 1); ++i)
                                 (void)cluster->add_node(
                                     std::vector<device_id>{{device_kind::cuda, static_cast<std::uint32_t>(i)}});
                           });
      bool ok = cpu.status.state == job_state::succeeded && gpu.status.state == job_state::succeeded &&
                cpu.losses.size() == 3 && gpu.losses.size() == 3;
      for (std::size_t i = 0; ok && i < 3; ++i) ok = std::abs(cpu.losses[i] - gpu.losses[i]) <= 1e-4 * cpu.losses[i];
      std::printf("%s, cuda with %s: %s  cpu %s, cuda %s; losses", strategy.c_str(), collectives.c_str(),
                  ok ? "ok" : "FAILED", std::string{to_string(cpu.status.state)}.c_str(),
                  std::string{to_string(gpu.status.state)}.c_str());
      for (std::size_t i = 0; i < std::max(cpu.losses.size(), gpu.losses.size()); ++i)
        std::printf("  %.6f/%.6f", i < cpu.losses.size() ? cpu.losses[i] : NAN,
                    i < gpu.losses.size() ? gpu.losses[i] : NAN);
      std::printf("%s%s\n", gpu.status.error.empty() ? "" : "  error: ", gpu.status.error.c_str());
      failures += ok ? 0 : 1;
    }
  }
  {
    // The llama family on 2 emulated GPUs with NCCL, SP groups of 2 over 1 K/V head (repeated
    // for the exchange, gradients summed back), against the same job on CPU devices.
    auto cluster = embedded_cluster::start(0, 0).value();
    std::vector<device_id> cpus{{device_kind::cpu, 0}, {device_kind::cpu, 1}};
    (void)cluster->add_node(cpus);
    for (std::uint32_t i = 0; i < 2; ++i) (void)cluster->add_node(std::vector<device_id>{{device_kind::cuda, i}});
    auto llama = [&](const std::string& backend, const std::string& collectives) {
      auto s = tiny(backend, collectives, "static:2", (dir / ("llama-" + backend)).string());
      s.model.family = model_family::llama;
      s.model.kv_heads = 1;
      s.model.ffn = 32;
      return s;
    };
    const auto cpu = run(*cluster, llama("cpu", "gloo"));
    const auto gpu = run(*cluster, llama("cuda", "nccl"));
    bool ok = cpu.status.state == job_state::succeeded && gpu.status.state == job_state::succeeded &&
              cpu.losses.size() == 3 && gpu.losses.size() == 3;
    for (std::size_t i = 0; ok && i < 3; ++i) ok = std::abs(cpu.losses[i] - gpu.losses[i]) <= 1e-4 * cpu.losses[i];
    std::printf("llama (GQA), static:2, cuda with nccl: %s  cpu %s, cuda %s; losses", ok ? "ok" : "FAILED",
                std::string{to_string(cpu.status.state)}.c_str(), std::string{to_string(gpu.status.state)}.c_str());
    for (std::size_t i = 0; i < std::max(cpu.losses.size(), gpu.losses.size()); ++i)
      std::printf("  %.6f/%.6f", i < cpu.losses.size() ? cpu.losses[i] : NAN, i < gpu.losses.size() ? gpu.losses[i] : NAN);
    std::printf("%s%s\n", gpu.status.error.empty() ? "" : "  error: ", gpu.status.error.c_str());
    failures += ok ? 0 : 1;
  }
  for (const std::string mode : {"zero3", "hsdp"}) {
    // Sharded states on emulated GPUs against the replicated job on CPU devices: zero3 over NCCL
    // (gathers and reduce-scatters on device buffers) on 2 GPUs with a third joining after the
    // first step (its shard by transfer, re-sharded 3 ways); hsdp over Gloo (through host copies)
    // on 2 nodes of 2 GPUs (a shard group per node, replicated across nodes).
    auto cluster = embedded_cluster::start(0, 0).value();
    (void)cluster->add_node(std::vector<device_id>{{device_kind::cpu, 0}, {device_kind::cpu, 1}});
    const bool zero3 = mode == "zero3";
    if (zero3) {
      for (std::uint32_t i = 0; i < 2; ++i) (void)cluster->add_node(std::vector<device_id>{{device_kind::cuda, i}});
    } else {
      for (std::uint32_t i = 0; i < 4; i += 2)
        (void)cluster->add_node(std::vector<device_id>{{device_kind::cuda, i}, {device_kind::cuda, i + 1}});
    }
    auto sharded = tiny("cuda", zero3 ? "nccl" : "gloo", "flexsp", (dir / ("shard-" + mode)).string());
    (void)parse_sharding_mode(mode, sharded.sharding);
    const auto cpu = run(*cluster, tiny("cpu", "gloo", "flexsp", (dir / ("shard-cpu-" + mode)).string()));
    const auto gpu = run(*cluster, sharded, [&](std::uint64_t step) {
      if (zero3 && step == 0) (void)cluster->add_node(std::vector<device_id>{{device_kind::cuda, 2}});
    });
    bool ok = cpu.status.state == job_state::succeeded && gpu.status.state == job_state::succeeded &&
              cpu.losses.size() == 3 && gpu.losses.size() == 3;
    for (std::size_t i = 0; ok && i < 3; ++i) ok = std::abs(cpu.losses[i] - gpu.losses[i]) <= 1e-4 * cpu.losses[i];
    std::printf("sharding %s, cuda with %s: %s  cpu %s, cuda %s; losses", mode.c_str(), zero3 ? "nccl" : "gloo",
                ok ? "ok" : "FAILED", std::string{to_string(cpu.status.state)}.c_str(),
                std::string{to_string(gpu.status.state)}.c_str());
    for (std::size_t i = 0; i < std::max(cpu.losses.size(), gpu.losses.size()); ++i)
      std::printf("  %.6f/%.6f", i < cpu.losses.size() ? cpu.losses[i] : NAN, i < gpu.losses.size() ? gpu.losses[i] : NAN);
    std::printf("%s%s\n", gpu.status.error.empty() ? "" : "  error: ", gpu.status.error.c_str());
    failures += ok ? 0 : 1;
  }
  {
    // Mixed precision against the fp32 job on the same emulated GPU: bf16 attention, and bf16
    // attention with tf32 GEMMs (computed in fp32 by the emulated cuBLAS).
    auto cluster = embedded_cluster::start(0, 0).value();
    (void)cluster->add_node(std::vector<device_id>{{device_kind::cuda, 0}});
    const auto fp32 = run(*cluster, tiny("cuda", "gloo", "flexsp", (dir / "fp32").string()));
    for (const std::string matmul : {"fp32", "tf32"}) {
      auto spec = tiny("cuda", "gloo", "flexsp", (dir / ("bf16-" + matmul)).string());
      spec.model.attention = attention_precision::bf16;
      (void)parse_matmul_precision(matmul, spec.model.matmul);
      const auto mixed = run(*cluster, spec);
      bool ok = fp32.status.state == job_state::succeeded && mixed.status.state == job_state::succeeded &&
                fp32.losses.size() == 3 && mixed.losses.size() == 3 && mixed.losses[0] != fp32.losses[0];
      for (std::size_t i = 0; ok && i < 3; ++i)
        ok = std::abs(fp32.losses[i] - mixed.losses[i]) <= 1e-2 * fp32.losses[i];
      std::printf("bf16 attention, %s GEMMs: %s  fp32 %s, mixed %s; losses", matmul.c_str(), ok ? "ok" : "FAILED",
                  std::string{to_string(fp32.status.state)}.c_str(), std::string{to_string(mixed.status.state)}.c_str());
      for (std::size_t i = 0; i < std::max(fp32.losses.size(), mixed.losses.size()); ++i)
        std::printf("  %.6f/%.6f", i < fp32.losses.size() ? fp32.losses[i] : NAN,
                    i < mixed.losses.size() ? mixed.losses[i] : NAN);
      std::printf("%s%s\n", mixed.status.error.empty() ? "" : "  error: ", mixed.status.error.c_str());
      failures += ok ? 0 : 1;
    }
  }
  std::filesystem::remove_all(dir);
  std::printf("%s\n", failures == 0 ? "training under emulation: PASSED" : "training under emulation: FAILED");
  return failures == 0 ? 0 : 1;
}
