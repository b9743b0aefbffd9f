#include "flexsp/actors/job_spec.hpp"

#include <gtest/gtest.h>

namespace flexsp::actors {
namespace {

std::string error_of(std::string_view json) {
  auto r = parse_job_spec(json);
  EXPECT_FALSE(r) << json;
  return r ? std::string{} : r.error().message();
}

TEST(JobSpec, OnlyStepsIsRequiredAndEverythingElseHasADefault) {
  auto s = parse_job_spec(R"({"steps": 7})");
  ASSERT_TRUE(s) << s.error().to_string();
  EXPECT_EQ(s->steps, 7u);
  EXPECT_EQ(s->strategy.kind, strategy_kind::flexsp);
  EXPECT_EQ(s->synthetic, "wikipedia");
  EXPECT_GT(s->batch_size, 0u);
  EXPECT_EQ(s->model.d_model % s->model.heads, 0u);
  EXPECT_EQ(s->backend, std::nullopt) << "auto";
  EXPECT_EQ(s->collectives, std::nullopt) << "auto";
}

TEST(JobSpec, ReadsTheBackendAndTheCollectiveLibrary) {
  auto s = parse_job_spec(R"({"steps": 2, "backend": "cuda", "collectives": "gloo"})");
  ASSERT_TRUE(s) << s.error().to_string();
  EXPECT_EQ(s->backend, device_kind::cuda);
  EXPECT_EQ(s->collectives, collective_library::gloo);
  auto again = parse_job_spec(job_spec_to_json(*s));
  ASSERT_TRUE(again);
  EXPECT_EQ(again->backend, device_kind::cuda);
  EXPECT_EQ(again->collectives, collective_library::gloo);
  EXPECT_NE(error_of(R"({"steps": 3, "backend": "tpu"})").find("backend"), std::string::npos);
  EXPECT_NE(error_of(R"({"steps": 3, "milp": 1})").find("milp"), std::string::npos);
  EXPECT_NE(error_of(R"({"steps": 3, "milp_min_gap": 2})").find("milp_min_gap"), std::string::npos);
  auto m = parse_job_spec(R"({"steps": 2, "milp": false, "milp_min_gap": 0})");
  ASSERT_TRUE(m) << m.error().to_string();
  EXPECT_FALSE(m->milp);
  EXPECT_EQ(m->milp_min_gap, 0.0);
  EXPECT_FALSE(parse_job_spec(job_spec_to_json(*m))->milp);
  EXPECT_NE(error_of(R"({"steps": 3, "collectives": "mpi"})").find("collectives"), std::string::npos);
  EXPECT_NE(error_of(R"({"steps": 3, "backend": "cpu", "collectives": "nccl"})").find("collectives"),
            std::string::npos);
}

TEST(JobSpec, ReadsTheAttentionElementTypeAndKeepsBf16OffCpuDevices) {
  auto d = parse_job_spec(R"({"steps": 2})");
  ASSERT_TRUE(d);
  EXPECT_EQ(d->model.attention, attention_precision::fp32);
  auto s = parse_job_spec(R"({"steps": 2, "model": {"attention": "bf16"}})");
  ASSERT_TRUE(s) << s.error().to_string();
  EXPECT_EQ(s->model.attention, attention_precision::bf16);
  auto again = parse_job_spec(job_spec_to_json(*s));
  ASSERT_TRUE(again) << again.error().to_string();
  EXPECT_EQ(again->model.attention, attention_precision::bf16);
  EXPECT_NE(error_of(R"({"steps": 2, "model": {"attention": "fp16"}})").find("model.attention"), std::string::npos);
  EXPECT_NE(error_of(R"({"steps": 2, "backend": "cpu", "model": {"attention": "bf16"}})").find("CUDA"),
            std::string::npos);
}

TEST(JobSpec, ReadsTheGemmArithmeticAndKeepsTf32OffCpuDevices) {
  EXPECT_EQ(parse_job_spec(R"({"steps": 2})")->model.matmul, matmul_precision::fp32);
  auto s = parse_job_spec(R"({"steps": 2, "model": {"matmul": "tf32"}})");
  ASSERT_TRUE(s) << s.error().to_string();
  EXPECT_EQ(s->model.matmul, matmul_precision::tf32);
  EXPECT_EQ(parse_job_spec(job_spec_to_json(*s))->model.matmul, matmul_precision::tf32);
  EXPECT_NE(error_of(R"({"steps": 2, "model": {"matmul": "bf16"}})").find("model.matmul"), std::string::npos);
  EXPECT_NE(error_of(R"({"steps": 2, "backend": "cpu", "model": {"matmul": "tf32"}})").find("CUDA"),
            std::string::npos);
}

TEST(JobSpec, ReadsEveryDocumentedKey) {
  auto s = parse_job_spec(R"({"name": "demo", "steps": 30, "batch_size": 16, "strategy": "static:2", "seed": 9,
    "model": {"layers": 3, "d_model": 96, "heads": 6, "vocab": 256, "max_seq": 512},
    "data": {"synthetic": "wikipedia"}, "optimizer": {"lr": 0.01, "weight_decay": 0.1, "warmup": 3},
    "checkpoint": {"dir": "/tmp/x", "every": 10}})");
  ASSERT_TRUE(s) << s.error().to_string();
  EXPECT_EQ(s->name, "demo");
  EXPECT_EQ(s->batch_size, 16u);
  EXPECT_EQ(s->strategy.kind, strategy_kind::static_degree);
  EXPECT_EQ(s->strategy.degree, 2u);
  EXPECT_EQ(s->strategy.to_string(), "static:2");
  EXPECT_EQ(s->seed, 9u);
  EXPECT_EQ(s->model.layers, 3u);
  EXPECT_EQ(s->model.d_model, 96u);
  EXPECT_EQ(s->model.heads, 6u);
  EXPECT_EQ(s->model.max_seq, 512u);
  EXPECT_FLOAT_EQ(s->optimizer.lr, 0.01f);
  EXPECT_FLOAT_EQ(s->optimizer.weight_decay, 0.1f);
  EXPECT_EQ(s->warmup, 3u);
  EXPECT_EQ(s->checkpoint_dir, "/tmp/x");
  EXPECT_EQ(s->checkpoint_every, 10u);
}

TEST(JobSpec, RoundTripsThroughJson) {
  auto s = parse_job_spec(R"({"steps": 5, "data": {"path": "docs.jsonl"}, "checkpoint": {"dir": "c", "every": 2}})");
  ASSERT_TRUE(s) << s.error().to_string();
  auto again = parse_job_spec(job_spec_to_json(*s));
  ASSERT_TRUE(again) << again.error().to_string();
  EXPECT_EQ(again->data_path, "docs.jsonl");
  EXPECT_EQ(again->checkpoint_every, 2u);
  EXPECT_EQ(job_spec_to_json(*again), job_spec_to_json(*s));
}

TEST(JobSpec, RejectionsNameTheField) {
  EXPECT_NE(error_of(R"({"batch_size": 4})").find("steps"), std::string::npos);
  EXPECT_NE(error_of(R"({"steps": 0})").find("steps"), std::string::npos);
  EXPECT_NE(error_of(R"({"steps": "ten"})").find("steps"), std::string::npos);
  EXPECT_NE(error_of(R"({"steps": 3, "model": {"d_model": 65, "heads": 4}})").find("model.d_model"), std::string::npos);
  EXPECT_NE(error_of(R"({"steps": 3, "model": {"layer": 2}})").find("model.layer"), std::string::npos);
  EXPECT_NE(error_of(R"({"steps": 3, "strategy": "static:x"})").find("strategy"), std::string::npos);
  EXPECT_NE(error_of(R"({"steps": 3, "strategy": "megatron"})").find("strategy"), std::string::npos);
  EXPECT_NE(error_of(R"({"steps": 3, "strategy": "static:0"})").find("strategy"), std::string::npos);
  EXPECT_NE(error_of(R"({"steps": 3, "strategy": "static_degree"})").find("strategy"), std::string::npos);
  EXPECT_EQ(parse_job_spec(R"({"steps": 3, "strategy": "batchada"})")->strategy.kind, strategy_kind::batchada);
  EXPECT_NE(error_of(R"({"steps": 3, "optimizer": {"lr": -1}})").find("optimizer.lr"), std::string::npos);
  EXPECT_NE(error_of(R"({"steps": 3, "checkpoint": {"dir": "none", "every": 5}})").find("checkpoint.every"),
            std::string::npos);
  EXPECT_NE(error_of(R"({"steps": 3, "checkpoint": {"dir": "/c", "keep": -1}})").find("checkpoint.keep"),
            std::string::npos);
  EXPECT_NE(error_of(R"({"steps": 3, "data": {"synthetic": "nope"}})").find("data.synthetic"), std::string::npos);
  EXPECT_NE(error_of(R"({"steps": 3, "data": {"path": "a", "synthetic": "wikipedia"}})").find("data"), std::string::npos);
  EXPECT_NE(error_of(R"({"steps": 3, "batch_size": -2})").find("batch_size"), std::string::npos);
  EXPECT_NE(error_of(R"({"steps": 3, "name": "a b"})").find("name"), std::string::npos);
  EXPECT_NE(error_of(R"([1, 2])").find("object"), std::string::npos);
  EXPECT_NE(error_of(R"({"steps": 3,)").find("JSON"), std::string::npos);
}

TEST(JobSpec, ReadsTheShardingModeAndItsGroupSize) {
  auto plain = parse_job_spec(R"({"steps": 3})");
  ASSERT_TRUE(plain);
  EXPECT_EQ(plain->sharding, sharding_mode::replicate);
  auto zero3 = parse_job_spec(R"({"steps": 3, "sharding": "zero3"})");
  ASSERT_TRUE(zero3) << zero3.error().to_string();
  EXPECT_EQ(zero3->sharding, sharding_mode::zero3);
  auto hsdp = parse_job_spec(R"({"steps": 3, "sharding": "hsdp", "shard_group": 4})");
  ASSERT_TRUE(hsdp) << hsdp.error().to_string();
  EXPECT_EQ(hsdp->sharding, sharding_mode::hsdp);
  EXPECT_EQ(hsdp->shard_group, 4u);
  auto again = parse_job_spec(job_spec_to_json(*hsdp));
  ASSERT_TRUE(again);
  EXPECT_EQ(again->sharding, sharding_mode::hsdp);
  EXPECT_EQ(again->shard_group, 4u);
  EXPECT_NE(error_of(R"({"steps": 3, "sharding": "fsdp"})").find("sharding: 'fsdp' is not one of replicate, zero3, hsdp"),
            std::string::npos);
  EXPECT_NE(error_of(R"({"steps": 3, "sharding": "zero3", "shard_group": 2})").find("shard_group"), std::string::npos);
  EXPECT_NE(error_of(R"({"steps": 3, "shard_group": -1})").find("shard_group"), std::string::npos);
}

TEST(JobSpec, WarmupRampsTheLearningRateLinearly) {
  job_spec s;
  s.steps = 10;
  s.optimizer.lr = 1.0f;
  s.warmup = 4;
  EXPECT_FLOAT_EQ(s.lr_at(0), 0.25f);
  EXPECT_FLOAT_EQ(s.lr_at(1), 0.5f);
  EXPECT_FLOAT_EQ(s.lr_at(3), 1.0f);
  EXPECT_FLOAT_EQ(s.lr_at(9), 1.0f);
  s.warmup = 0;
  EXPECT_FLOAT_EQ(s.lr_at(0), 1.0f);
}

}  // namespace

// ---- what the cluster offers ----------------------------------------------------------------

std::vector<node_record> cluster_of(int cpus, int cudas, int lost_cpus = 0) {
  std::vector<node_record> nodes(3);
  for (int i = 0; i < cpus; ++i) nodes[0].devices.push_back({device_kind::cpu, static_cast<std::uint32_t>(i)});
  for (int i = 0; i < cudas; ++i) nodes[1].devices.push_back({device_kind::cuda, static_cast<std::uint32_t>(i)});
  for (int i = 0; i < lost_cpus; ++i) nodes[2].devices.push_back({device_kind::cpu, static_cast<std::uint32_t>(i)});
  nodes[2].state = node_state::dead;
  return nodes;
}

std::string fits_error(std::string_view json, const std::vector<node_record>& nodes) {
  auto s = parse_job_spec(json);
  EXPECT_TRUE(s) << json;
  auto r = check_job_fits(*s, nodes);
  EXPECT_FALSE(r) << json;
  return r ? std::string{} : r.error().message();
}

TEST(JobFits, ACudaJobOnACpuOnlyClusterIsRefusedNamingTheFieldThatAskedForCuda) {
  const auto cpus = cluster_of(4, 0);
  EXPECT_EQ(fits_error(R"({"steps": 1, "backend": "cuda"})", cpus),
            "backend: no cuda devices to train on; the cluster offers 4 cpu and 0 cuda devices");
  EXPECT_EQ(fits_error(R"({"steps": 1, "collectives": "nccl"})", cpus).rfind("collectives: nccl needs cuda devices; the cluster offers 4 cpu", 0), 0u);
  EXPECT_EQ(fits_error(R"({"steps": 1, "model": {"attention": "bf16"}})", cpus).rfind("model.attention:", 0), 0u);
  EXPECT_EQ(fits_error(R"({"steps": 1, "model": {"matmul": "tf32"}})", cpus).rfind("model.matmul:", 0), 0u);
  EXPECT_TRUE(check_job_fits(*parse_job_spec(R"({"steps": 1})"), cpus)) << "auto trains on the cpu devices";
}

TEST(JobFits, DeviceCountsAreCheckedAgainstTheDevicesOfTheJobsKindOnLiveNodes) {
  const auto c = cluster_of(2, 1, /*lost_cpus=*/8);
  EXPECT_EQ(fits_error(R"({"steps": 1, "backend": "cpu", "min_devices": 3})", c),
            "min_devices: 3 cpu devices wanted, but the cluster offers 2 cpu and 1 cuda devices");
  EXPECT_EQ(fits_error(R"({"steps": 1, "backend": "cpu", "strategy": "static:1000"})", c),
            "strategy: static:1000 puts every sequence on 1000 cpu devices, but the cluster offers 2 cpu and 1 cuda "
            "devices");
  EXPECT_TRUE(check_job_fits(*parse_job_spec(R"({"steps": 1, "backend": "cpu", "strategy": "static:2"})"), c));
  // auto picks cuda when there is a GPU: one device.
  EXPECT_FALSE(check_job_fits(*parse_job_spec(R"({"steps": 1, "min_devices": 2})"), c));
  EXPECT_NE(fits_error(R"({"steps": 1})", cluster_of(0, 0, 4)).find("the cluster has no devices"), std::string::npos);
}

TEST(JobFits, ACheckpointDirectoryMustBeAbsoluteAndWritable) {
  EXPECT_TRUE(check_checkpoint_dir(""));
  auto rel = check_checkpoint_dir("ckpt");
  ASSERT_FALSE(rel);
  EXPECT_EQ(rel.error().message().rfind("checkpoint.dir: 'ckpt' is relative", 0), 0u) << rel.error().message();
  const std::string dir = ::testing::TempDir() + "flexsp_ckpt_check/sub";
  EXPECT_TRUE(check_checkpoint_dir(dir)) << "created when missing";
  auto under_file = check_checkpoint_dir("/proc/version/ckpt");
  ASSERT_FALSE(under_file);
  EXPECT_EQ(under_file.error().message().rfind("checkpoint.dir: cannot create /proc/version/ckpt", 0), 0u)
      << under_file.error().message();
}

TEST(JobSpec, CheckpointsDefaultToTheClustersUnlessTurnedOff) {
  // No directory: the cluster's default (the job manager fills it in), with any interval given.
  auto s = parse_job_spec(R"({"steps": 5, "checkpoint": {"every": 2}})");
  ASSERT_TRUE(s) << s.error().to_string();
  EXPECT_TRUE(s->checkpoint_dir.empty());
  EXPECT_FALSE(s->checkpoints_off);
  EXPECT_EQ(s->checkpoint_keep, 2u);
  // "none": no checkpoints at all, and it survives the round trip through JSON.
  auto off = parse_job_spec(R"({"steps": 5, "checkpoint": {"dir": "none"}})");
  ASSERT_TRUE(off);
  EXPECT_TRUE(off->checkpoints_off);
  EXPECT_TRUE(off->checkpoint_dir.empty());
  auto again = parse_job_spec(job_spec_to_json(*off));
  ASSERT_TRUE(again) << again.error().to_string();
  EXPECT_TRUE(again->checkpoints_off);
  auto kept = parse_job_spec(R"({"steps": 5, "checkpoint": {"dir": "/c", "keep": 0}})");
  ASSERT_TRUE(kept);
  EXPECT_EQ(parse_job_spec(job_spec_to_json(*kept))->checkpoint_keep, 0u);
}

}  // namespace flexsp::actors
