// A training job on a GPU device: the device actor of `cuda:0` opens the GPU, trains its
// replica with the CUDA kernels, and reports the same losses as the same job on a CPU device
// (fp32 rounding apart). Skips without a usable GPU, saying why.
#include <filesystem>
#include <functional>
#include <random>

#include <gtest/gtest.h>

#include "flexsp/actors/embedded.hpp"
#include "flexsp/kernels/device_backend.hpp"
#include "flexsp/kernels/model.hpp"
#include "flexsp/kernels/nccl_collectives.hpp"

namespace flexsp::actors {
namespace {

namespace fs = std::filesystem;

job_spec small_job(const std::string& backend, const std::string& collectives) {
  job_spec s;
  s.name = "gpu-" + backend;
  s.steps = 4;
  s.batch_size = 16;
  s.model.layers = 2;
  s.model.d_model = 64;
  s.model.heads = 4;
  s.model.max_seq = 512;
  s.optimizer.lr = 0.01f;
  s.calibrate = false;
  // "auto" (or anything else) leaves the choice to the scheduler.
  if (device_kind k; parse_device_kind(backend, k)) s.backend = k;
  if (collective_library c; parse_collective_library(collectives, c)) s.collectives = c;
  return s;
}

struct run_out {
  job_status status;
  std::vector<double> losses;
  std::vector<std::string> logs;
};

run_out run_job(embedded_cluster& c, const job_spec& spec) {
  run_out out;
  auto job = c.jobs().submit(
      spec, [&out](const step_metrics& m) { out.losses.push_back(m.loss); },
      [&out](const std::string& line) { out.logs.push_back(line); });
  EXPECT_TRUE(job) << job.error().to_string();
  if (job) out.status = (*job)->wait();
  return out;
}

std::string skip_reason() {
  auto b = kernels::select_device_backend(kernels::backend_request::cuda);
  return b ? std::string{} : b.error().to_string();
}

TEST(TrainingGpu, AJobOnAGpuDeviceMatchesTheSameJobOnTheCpu) {
  if (auto why = skip_reason(); !why.empty()) GTEST_SKIP() << "no usable GPU: " << why;
  auto cluster = embedded_cluster::start(0, 0);
  ASSERT_TRUE(cluster) << cluster.error().to_string();
  ASSERT_TRUE((*cluster)->add_node(std::vector<device_id>{{device_kind::cpu, 0}, {device_kind::cuda, 0}}));

  const auto cpu = run_job(**cluster, small_job("cpu", "auto"));
  const auto gpu = run_job(**cluster, small_job("cuda", "auto"));
  ASSERT_EQ(cpu.status.state, job_state::succeeded) << cpu.status.error;
  ASSERT_EQ(gpu.status.state, job_state::succeeded) << gpu.status.error << "\n"
                                                     << fmt::format("{}", fmt::join(gpu.logs, "\n"));
  ASSERT_EQ(cpu.losses.size(), 4u);
  ASSERT_EQ(gpu.losses.size(), 4u);
  // Same parameters before the first step: the first loss agrees to fp32 summation order.
  EXPECT_NEAR(gpu.losses[0], cpu.losses[0], 1e-4 * std::abs(cpu.losses[0]));
  for (std::size_t i = 1; i < 4; ++i)
    EXPECT_NEAR(gpu.losses[i], cpu.losses[i], 2e-2 * std::abs(cpu.losses[i])) << "step " << i;
  EXPECT_LT(gpu.losses.back(), gpu.losses.front()) << "the GPU replica learns";
  EXPECT_NE(gpu.status.final_checksum, 0u);
}

// A precision setting applied to the small job trains within 1% of the fp32 job's losses.
void expect_close_to_fp32(const std::function<void(job_spec&)>& precision, bool must_differ) {
  auto cluster = embedded_cluster::start(0, 0);
  ASSERT_TRUE(cluster) << cluster.error().to_string();
  ASSERT_TRUE((*cluster)->add_node(std::vector<device_id>{{device_kind::cuda, 0}}));
  const auto fp32 = run_job(**cluster, small_job("cuda", "auto"));
  auto spec = small_job("cuda", "auto");
  precision(spec);
  const auto mixed = run_job(**cluster, spec);
  ASSERT_EQ(fp32.status.state, job_state::succeeded) << fp32.status.error;
  ASSERT_EQ(mixed.status.state, job_state::succeeded) << mixed.status.error;
  ASSERT_EQ(mixed.losses.size(), 4u);
  for (std::size_t i = 0; i < 4; ++i)
    EXPECT_NEAR(mixed.losses[i], fp32.losses[i], 1e-2 * std::abs(fp32.losses[i])) << "step " << i;
  if (must_differ) {
    EXPECT_NE(mixed.losses[0], fp32.losses[0]) << "the reduced-precision path ran";
  }
  EXPECT_LT(mixed.losses.back(), mixed.losses.front());
}

// bf16 keeps 8 bits of mantissa for Q, K, V and the output: the losses move by well under 1%.
TEST(TrainingGpu, Bf16AttentionTrainsCloseToTheFp32Job) {
  if (auto why = skip_reason(); !why.empty()) GTEST_SKIP() << "no usable GPU: " << why;
  expect_close_to_fp32([](job_spec& s) { s.model.attention = attention_precision::bf16; }, true);
}

TEST(TrainingGpu, Tf32GemmsTrainCloseToTheFp32Job) {
  if (auto why = skip_reason(); !why.empty()) GTEST_SKIP() << "no usable GPU: " << why;
  expect_close_to_fp32([](job_spec& s) { s.model.matmul = matmul_precision::tf32; }, false);
}

TEST(TrainingGpu, GlooCollectivesAlsoCarryAGpuJob) {
  if (auto why = skip_reason(); !why.empty()) GTEST_SKIP() << "no usable GPU: " << why;
  auto cluster = embedded_cluster::start(0, 0);
  ASSERT_TRUE(cluster) << cluster.error().to_string();
  ASSERT_TRUE((*cluster)->add_node(std::vector<device_id>{{device_kind::cuda, 0}}));
  auto spec = small_job("cuda", "gloo");
  std::random_device rd;
  const auto dir = fs::temp_directory_path() / fmt::format("flexsp-gpu-ckpt-{:x}", rd());
  spec.checkpoint_dir = dir.string();
  const auto out = run_job(**cluster, spec);
  ASSERT_EQ(out.status.state, job_state::succeeded) << out.status.error;
  // The checkpoint holds the GPU state, downloaded in the CPU layout.
  const kernels::model_config cfg{.layers = 2, .d_model = 64, .heads = 4, .vocab = 256, .max_positions = 512};
  auto mdl = kernels::model::create(cfg, 0).value();
  ASSERT_TRUE(kernels::load_checkpoint(dir / "step-000004.ckpt", mdl));
  EXPECT_EQ(mdl.steps(), 4);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace flexsp::actors
