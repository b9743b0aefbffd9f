#include <cstdio>
#include <cstdlib>
#include <thread>

#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "flexsp/kernels/attention.hpp"
#include "flexsp/kernels/cuda_runtime.hpp"
#include "flexsp/kernels/device_backend.hpp"
#include "flexsp/kernels/ops.hpp"

namespace flexsp::app {

void add_info_command(CLI::App& root) {
  auto* cmd = root.add_subcommand("info", "Show the build configuration and the devices this machine offers");
  auto json_out = std::make_shared<bool>(false);
  cmd->add_flag("--json", *json_out, "print JSON instead of text");
  cmd->callback([json_out]() {
    const auto cuda = kernels::query_cuda();
    // automatic selection never fails: it falls back to the CPU with the reason.
    const auto backend = kernels::select_device_backend(kernels::backend_request::automatic);
    nlohmann::json j;
    j["device_backend"] = {{"kind", backend ? std::string{kernels::to_string(backend->kind)} : "cpu"},
                           {"reason", backend ? backend->reason : backend.error().message()}};
    j["version"] = "0.1.0";
    j["build"] = {{"type", FLEXSP_BUILD_TYPE}, {"compiler", FLEXSP_COMPILER}, {"cuda_backend", cuda.compiled}};
    j["cpu_devices"] = std::thread::hardware_concurrency();
    // The CPU GEMM kernels, and what OpenBLAS chose by itself when flexsp corrected it.
    const char* misdetected = std::getenv("FLEXSP_BLAS_MISDETECTED");
    j["cpu_blas"] = {{"kernels", kernels::blas_core()}, {"detected", misdetected ? misdetected : kernels::blas_core()}};
    const auto variants = kernels::attention::supported_variants();
    const std::string attention_variant = variants.empty() ? "baseline" : std::string{variants.front()};
    j["cpu_attention"] = attention_variant;
    j["cpu_threads_per_device"] = kernels::cpu_math_threads();
    j["cuda"] = {{"compiled", cuda.compiled},
                 {"runtime_version", cuda.runtime_version},
                 {"driver_version", cuda.driver_version},
                 {"nccl_version", cuda.nccl_version},
                 {"reason", cuda.reason}};
    auto& gpus = j["cuda"]["devices"] = nlohmann::json::array();
    for (const auto& d : cuda.devices)
      gpus.push_back({{"index", d.index},
                      {"name", d.name},
                      {"compute_capability", std::to_string(d.compute_capability_major) + "." +
                                                 std::to_string(d.compute_capability_minor)},
                      {"memory_gb", static_cast<double>(d.memory_bytes) / (1 << 30)}});
    if (*json_out) {
      std::printf("%s\n", j.dump(2).c_str());
      return;
    }
    std::printf("flexsp 0.1.0 (%s build, %s, CUDA backend %s)\n", FLEXSP_BUILD_TYPE, FLEXSP_COMPILER,
                cuda.compiled ? "compiled in" : "not compiled in");
    std::printf("cpu devices available: %u\n", std::thread::hardware_concurrency());
    std::printf("cpu GEMM: OpenBLAS %s kernels", kernels::blas_core().c_str());
    if (misdetected) std::printf(" (OpenBLAS detected %s; flexsp set OPENBLAS_CORETYPE)", misdetected);
    std::printf("\n");
    std::printf("cpu attention: %s kernels; %d threads per CPU device\n", attention_variant.c_str(),
                kernels::cpu_math_threads());
    std::printf("cuda backend: %s", cuda.compiled ? "compiled in" : "not compiled in");
    if (cuda.compiled)
      std::printf(" (runtime %d, driver %d, nccl %d)", cuda.runtime_version, cuda.driver_version, cuda.nccl_version);
    std::printf("\n");
    for (const auto& d : cuda.devices)
      std::printf("  cuda:%d %s (sm_%d%d, %.1f GiB)\n", d.index, d.name.c_str(), d.compute_capability_major,
                  d.compute_capability_minor, static_cast<double>(d.memory_bytes) / (1 << 30));
    if (cuda.devices.empty()) std::printf("gpus: none (%s)\n", cuda.reason.c_str());
    std::printf("device backend (auto): %s\n", j["device_backend"]["reason"].get<std::string>().c_str());
  });
}

}  // namespace flexsp::app
