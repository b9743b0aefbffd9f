// Training jobs in an embedded cluster (head, node and job in this process; messages still cross
// loopback sockets): the plan changes speed, never the math.
#include <algorithm>
#include <fstream>
#include <mutex>
#include <random>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "flexsp/actors/embedded.hpp"
#include "flexsp/actors/job_client.hpp"
#include "flexsp/data/dataset.hpp"
#include "flexsp/kernels/device_backend.hpp"
#include "flexsp/kernels/model.hpp"

namespace flexsp::actors {
namespace {

namespace fs = std::filesystem;

job_spec tiny(std::string strategy, const fs::path& dir) {
  job_spec s;
  s.name = "equiv";
  s.steps = 2;
  s.batch_size = 16;
  s.strategy = job_strategy::parse(strategy).value();
  s.model.layers = 2;
  s.model.d_model = 32;
  s.model.heads = 4;
  s.model.max_seq = 256;
  s.optimizer.lr = 0.01f;
  s.calibrate = false;
  s.checkpoint_dir = dir.string();
  s.checkpoint_every = 1;
  return s;
}

struct run_out {
  job_status status;
  std::vector<std::string> plans;
};

run_out run_job(embedded_cluster& c, const job_spec& spec) {
  run_out out;
  auto job = c.jobs().submit(spec, [&out](const step_metrics& m) {
    std::string p;
    for (const auto& mb : m.plan) p += fmt::format("[{}]", fmt::join(mb, ","));
    out.plans.push_back(p);
  });
  EXPECT_TRUE(job) << job.error().to_string();
  if (job) out.status = (*job)->wait();
  return out;
}

TEST(TrainEmbedded, TheLlamaFamilyWithGroupedQueryAttentionTrainsAcrossNodesAndPlansAlike) {
  // LLaMA-tiny across 2 nodes x 2 devices: flexsp's plans and static:4 (every sequence in an SP
  // group of 4, above the 2 K/V heads) give the same parameters, and the replicas end identical.
  std::random_device rd;
  const auto root = fs::temp_directory_path() / fmt::format("flexsp-llama-{:x}", rd());
  auto cluster = embedded_cluster::start(2, 2);
  ASSERT_TRUE(cluster) << cluster.error().to_string();
  auto spec = [&](const char* strategy) {
    auto s = tiny(strategy, root / strategy);
    EXPECT_TRUE(apply_model_preset("llama-tiny", s.model));
    s.model.max_seq = 256;
    return s;
  };
  const auto a = run_job(**cluster, spec("flexsp"));
  const auto b = run_job(**cluster, spec("static:4"));
  ASSERT_EQ(a.status.state, job_state::succeeded) << a.status.error;
  ASSERT_EQ(b.status.state, job_state::succeeded) << b.status.error;
  EXPECT_NE(a.status.final_checksum, 0u);
  auto config = kernel_config(spec("flexsp").model);
  auto ma = kernels::model::create(config, 0).value();
  auto mb = kernels::model::create(config, 0).value();
  ASSERT_TRUE(kernels::load_checkpoint(root / "flexsp" / "step-000002.ckpt", ma));
  ASSERT_TRUE(kernels::load_checkpoint(root / "static:4" / "step-000002.ckpt", mb));
  double max_diff = 0;
  for (std::size_t i = 0; i < ma.host_params().size(); ++i)
    max_diff = std::max(max_diff, static_cast<double>(std::abs(ma.host_params()[i] - mb.host_params()[i])));
  EXPECT_LT(max_diff, 1e-5) << "the plan changes how the work is split, not the result";
  fs::remove_all(root);
}

TEST(TrainEmbedded, FlexspAndStaticPlansGiveTheSameUpdatedParameters) {
  std::random_device rd;
  const auto root = fs::temp_directory_path() / fmt::format("flexsp-equiv-{:x}", rd());
  auto cluster = embedded_cluster::start(1, 4);
  ASSERT_TRUE(cluster) << cluster.error().to_string();
  const auto a = run_job(**cluster, tiny("flexsp", root / "flexsp"));
  const auto b = run_job(**cluster, tiny("static:4", root / "static"));
  ASSERT_EQ(a.status.state, job_state::succeeded) << a.status.error;
  ASSERT_EQ(b.status.state, job_state::succeeded) << b.status.error;
  ASSERT_EQ(a.plans.size(), 2u);
  ASSERT_EQ(b.plans.size(), 2u);
  EXPECT_NE(a.plans, b.plans) << "the two strategies must plan differently for the test to mean anything";

  const kernels::model_config cfg{.layers = 2, .d_model = 32, .heads = 4, .vocab = 256, .max_positions = 256};
  auto ma = kernels::model::create(cfg, 0).value();
  auto mb = kernels::model::create(cfg, 0).value();
  ASSERT_TRUE(kernels::load_checkpoint(root / "flexsp" / "step-000002.ckpt", ma));
  ASSERT_TRUE(kernels::load_checkpoint(root / "static" / "step-000002.ckpt", mb));
  auto init = kernels::model::create(cfg, 1).value();
  double max_diff = 0, max_update = 0;
  for (std::size_t i = 0; i < ma.host_params().size(); ++i) {
    max_diff = std::max(max_diff, static_cast<double>(std::abs(ma.host_params()[i] - mb.host_params()[i])));
    max_update = std::max(max_update, static_cast<double>(std::abs(ma.host_params()[i] - init.host_params()[i])));
  }
  EXPECT_EQ(ma.steps(), 2);
  EXPECT_GT(max_update, 1e-3) << "two AdamW steps moved the parameters";
  EXPECT_LT(max_diff, 1e-4) << "flexsp and static:4 updates differ by " << max_diff;
  fs::remove_all(root);
}

TEST(TrainEmbedded, ACancelledJobStopsAndReportsIt) {
  auto cluster = embedded_cluster::start(1, 2);
  ASSERT_TRUE(cluster) << cluster.error().to_string();
  auto spec = tiny("flexsp", {});
  spec.checkpoint_dir.clear();
  spec.checkpoint_every = 0;
  spec.steps = 10000;
  std::shared_ptr<scheduled_job> job;
  auto made = (*cluster)->jobs().submit(spec, [&job](const step_metrics& m) {
    if (m.step == 2 && job) job->cancel();
  });
  ASSERT_TRUE(made);
  job = *made;
  const auto st = job->wait();
  EXPECT_EQ(st.state, job_state::cancelled);
  EXPECT_LT(st.steps_done, 100u);
}

TEST(TrainEmbedded, TheSchedulerSolvesTheCbcMilpForStepsItCannotProveOptimal) {
  auto cluster = embedded_cluster::start(1, 4);
  ASSERT_TRUE(cluster) << cluster.error().to_string();
  auto spec = tiny("flexsp", {});
  spec.checkpoint_dir.clear();
  spec.checkpoint_every = 0;
  spec.steps = 4;
  spec.milp_min_gap = 0;  // CBC on every micro-batch the layout search did not prove optimal
  int solves = 0;
  std::size_t steps = 0;
  auto job = (*cluster)->jobs().submit(spec, [&](const step_metrics& m) {
    solves += m.milp_solves;
    ++steps;
  });
  ASSERT_TRUE(job) << job.error().to_string();
  const auto st = (*job)->wait();
  ASSERT_EQ(st.state, job_state::succeeded) << st.error;
  EXPECT_EQ(steps, 4u);
  EXPECT_GT(solves, 0) << "no step's plan went through CBC";
}

TEST(TrainEmbedded, LosingEveryReplicaRestartsFromTheLatestCheckpoint) {
  std::random_device rd;
  const auto dir = fs::temp_directory_path() / fmt::format("flexsp-rewind-{:x}", rd());
  auto cluster = embedded_cluster::start(1, 2);
  ASSERT_TRUE(cluster) << cluster.error().to_string();
  auto spec = tiny("flexsp", dir);
  spec.steps = 8;
  spec.checkpoint_every = 3;
  std::mutex mutex;
  std::vector<std::uint64_t> steps;
  std::vector<std::string> logs;
  auto job = (*cluster)->jobs().submit(
      spec,
      [&](const step_metrics& m) {
        std::lock_guard lock{mutex};
        steps.push_back(m.step);
      },
      [&](const std::string& line) {
        std::lock_guard lock{mutex};
        logs.push_back(line);
      });
  ASSERT_TRUE(job) << job.error().to_string();
  // After step 5 (a checkpoint at 3), the only node goes away with both replicas; a new one comes.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds{60};
  for (;;) {
    {
      std::lock_guard lock{mutex};
      if (steps.size() >= 5) break;
    }
    ASSERT_LT(std::chrono::steady_clock::now(), deadline);
    std::this_thread::sleep_for(std::chrono::milliseconds{5});
  }
  (*cluster)->stop_node(0);
  ASSERT_TRUE((*cluster)->add_node(2));
  const auto st = (*job)->wait();
  ASSERT_EQ(st.state, job_state::succeeded) << st.error << "\n" << fmt::format("{}", fmt::join(logs, "\n"));
  EXPECT_EQ(st.steps_done, 8u);
  std::lock_guard lock{mutex};
  EXPECT_TRUE(std::any_of(logs.begin(), logs.end(), [](const std::string& l) {
    return l.find("restarted from") != std::string::npos;
  })) << fmt::format("{}", fmt::join(logs, "\n"));
  // Steps after the checkpoint ran twice; every step ran; the last is 7.
  ASSERT_FALSE(steps.empty());
  EXPECT_EQ(steps.back(), 7u);
  for (std::uint64_t s = 0; s < 8; ++s) EXPECT_NE(std::find(steps.begin(), steps.end(), s), steps.end()) << s;
  EXPECT_GT(steps.size(), 8u) << "some steps after the checkpoint were re-run";

  // The same job without the loss ends with the same parameters: the rewind lost nothing.
  auto clean = tiny("flexsp", dir / "clean");
  clean.steps = 8;
  clean.checkpoint_every = 3;
  const auto again = run_job(**cluster, clean);
  ASSERT_EQ(again.status.state, job_state::succeeded) << again.status.error;
  const kernels::model_config cfg{.layers = 2, .d_model = 32, .heads = 4, .vocab = 256, .max_positions = 256};
  auto ma = kernels::model::create(cfg, 0).value();
  auto mb = kernels::model::create(cfg, 0).value();
  ASSERT_TRUE(kernels::load_checkpoint(dir / "step-000008.ckpt", ma));
  ASSERT_TRUE(kernels::load_checkpoint(dir / "clean" / "step-000008.ckpt", mb));
  double max_diff = 0;
  for (std::size_t i = 0; i < ma.host_params().size(); ++i)
    max_diff = std::max(max_diff, static_cast<double>(std::abs(ma.host_params()[i] - mb.host_params()[i])));
  EXPECT_LT(max_diff, 1e-5) << "parameters after the rewind differ from an undisturbed run";
  EXPECT_EQ(ma.steps(), mb.steps());
  fs::remove_all(dir);
}

// A zero3 job checkpointed by 4 devices (a directory of 4 shard files) resumes on 2 devices, its
// shards cut anew on load, and ends with the parameters an undisturbed 4-device run ends with.
TEST(TrainEmbedded, AShardedCheckpointOfFourDevicesResumesOnTwo) {
  std::random_device rd;
  const auto dir = fs::temp_directory_path() / fmt::format("flexsp-shards-{:x}", rd());
  auto spec = tiny("flexsp", dir / "resumed");
  spec.sharding = sharding_mode::zero3;
  spec.steps = 3;
  spec.checkpoint_every = 3;
  {
    auto four = embedded_cluster::start(2, 2);
    ASSERT_TRUE(four) << four.error().to_string();
    const auto first = run_job(**four, spec);
    ASSERT_EQ(first.status.state, job_state::succeeded) << first.status.error;
    // The rest of this cluster's time: the reference, all 6 steps on 4 devices.
    auto whole = spec;
    whole.steps = 6;
    whole.checkpoint_dir = (dir / "reference").string();
    const auto ref = run_job(**four, whole);
    ASSERT_EQ(ref.status.state, job_state::succeeded) << ref.status.error;
  }
  for (int r = 0; r < 4; ++r)
    EXPECT_TRUE(fs::exists(dir / "resumed" / "step-000003.ckpt" / kernels::shard_file_name(4, r))) << r;
  auto two = embedded_cluster::start(1, 2);
  ASSERT_TRUE(two) << two.error().to_string();
  auto rest = spec;
  rest.steps = 6;
  const auto resumed = run_job(**two, rest);
  ASSERT_EQ(resumed.status.state, job_state::succeeded) << resumed.status.error;
  EXPECT_EQ(resumed.status.resumed_from, 3u);
  EXPECT_EQ(resumed.status.devices, 2u);
  // Both final checkpoints assembled into whole models (what `flexsp export` reads).
  const kernels::model_config cfg{.layers = 2, .d_model = 32, .heads = 4, .vocab = 256, .max_positions = 256};
  auto a = kernels::model::create(cfg, 0).value();
  auto b = kernels::model::create(cfg, 0).value();
  ASSERT_TRUE(kernels::load_checkpoint(dir / "resumed" / "step-000006.ckpt", a));
  ASSERT_TRUE(kernels::load_checkpoint(dir / "reference" / "step-000006.ckpt", b));
  EXPECT_TRUE(fs::exists(dir / "resumed" / "step-000006.ckpt" / kernels::shard_file_name(2, 1)));
  double max_diff = 0;
  for (std::size_t i = 0; i < a.host_params().size(); ++i)
    max_diff = std::max(max_diff, static_cast<double>(std::abs(a.host_params()[i] - b.host_params()[i])));
  EXPECT_LT(max_diff, 1e-5) << "resuming on 2 devices changed the training";
  EXPECT_EQ(a.steps(), 6);
  fs::remove_all(dir);
}

// Training from a prepared dataset resumes at the same documents: a job stopped after a
// checkpoint and resumed gives the losses of the uninterrupted job, step for step.
TEST(TrainEmbedded, AJobOnPreparedDataResumesAtTheSameDocuments) {
  std::random_device rd;
  const auto dir = fs::temp_directory_path() / fmt::format("flexsp-prep-resume-{:x}", rd());
  fs::create_directories(dir / "text");
  std::mt19937 rng{5};
  for (int d = 0; d < 60; ++d) {
    std::string text;
    const auto len = 10 + rng() % 400;
    while (text.size() < len) text += fmt::format("w{} ", rng() % 40);
    std::ofstream{dir / "text" / fmt::format("d{:02}.txt", d)} << text;
  }
  data::prepare_options o;
  o.inputs = {dir / "text"};
  o.out = dir / "prepared";
  auto tok = data::make_byte_tokenizer();
  ASSERT_TRUE(data::prepare(*tok, o));
  auto cluster = embedded_cluster::start(1, 2);
  ASSERT_TRUE(cluster) << cluster.error().to_string();
  auto spec = tiny("flexsp", dir / "whole");
  spec.prepared.push_back({(dir / "prepared").string(), 1.0});
  spec.model.max_seq = 64;
  spec.steps = 6;
  spec.checkpoint_every = 3;
  std::vector<double> whole, first, rest;
  auto losses = [&](const job_spec& s, std::vector<double>& out) {
    auto job = (*cluster)->jobs().submit(s, [&out](const step_metrics& m) { out.push_back(m.loss); });
    ASSERT_TRUE(job) << job.error().to_string();
    const auto st = (*job)->wait();
    ASSERT_EQ(st.state, job_state::succeeded) << st.error;
  };
  losses(spec, whole);
  auto part = spec;
  part.checkpoint_dir = (dir / "parts").string();
  part.steps = 3;
  losses(part, first);
  part.steps = 6;
  losses(part, rest);  // resumes from the step-3 checkpoint
  ASSERT_EQ(whole.size(), 6u);
  ASSERT_EQ(first.size(), 3u);
  ASSERT_EQ(rest.size(), 3u);
  for (std::size_t i = 0; i < 3; ++i) {
    EXPECT_DOUBLE_EQ(first[i], whole[i]) << "step " << i;
    EXPECT_NEAR(rest[i], whole[3 + i], 1e-6 * whole[3 + i]) << "step " << 3 + i;
  }
  fs::remove_all(dir);
}

TEST(JobClient, StepsArePushedAsTheyCommitAndTheEndAtOnce) {
  auto cluster = embedded_cluster::start(1, 2);
  ASSERT_TRUE(cluster) << cluster.error().to_string();
  auto& head = (*cluster)->head();
  auto client = job_client::connect(head.endpoint().to_string(), head.transport());
  ASSERT_TRUE(client) << client.error().to_string();
  // Queries only every 30 s: a wait that ends in time was woken by pushed updates.
  (*client)->poll_interval = std::chrono::seconds{30};
  auto spec = tiny("flexsp", {});
  spec.checkpoint_dir.clear();
  spec.checkpoint_every = 0;
  spec.steps = 6;
  auto job = (*client)->submit(spec);
  ASSERT_TRUE(job) << job.error().to_string();
  std::vector<std::uint64_t> steps;
  const auto t0 = std::chrono::steady_clock::now();
  auto final = job->wait([&](const std::string& line) {
    steps.push_back(nlohmann::json::parse(line).at("step").get<std::uint64_t>());
  });
  const auto waited = std::chrono::steady_clock::now() - t0;
  ASSERT_TRUE(final) << final.error().to_string();
  EXPECT_EQ(final->state, actors::job_state::succeeded) << final->error;
  EXPECT_EQ(steps, (std::vector<std::uint64_t>{1, 2, 3, 4, 5, 6})) << "every step once, in order";
  EXPECT_LT(waited, std::chrono::seconds{20}) << "the end was not pushed";
}

TEST(TrainEmbedded, AJobTrainsOnOneKindOfDevice) {
  auto cluster = embedded_cluster::start(1, 2);
  ASSERT_TRUE(cluster) << cluster.error().to_string();
  // A second node offers a GPU device; a cpu job leaves it alone (it never opens its GPU).
  ASSERT_TRUE((*cluster)->add_node(std::vector<device_id>{{device_kind::cuda, 0}}));
  auto spec = tiny("flexsp", {});
  spec.checkpoint_dir.clear();
  spec.checkpoint_every = 0;
  spec.backend = device_kind::cpu;
  std::vector<std::uint32_t> devices;
  std::vector<std::string> logs;
  auto job = (*cluster)->jobs().submit(
      spec, [&devices](const step_metrics& m) { devices.push_back(m.devices); },
      [&logs](const std::string& line) { logs.push_back(line); });
  ASSERT_TRUE(job) << job.error().to_string();
  const auto st = (*job)->wait();
  ASSERT_EQ(st.state, job_state::succeeded) << st.error;
  ASSERT_EQ(devices.size(), 2u);
  EXPECT_EQ(devices[0], 2u) << "only the two CPU devices train";
  EXPECT_TRUE(std::any_of(logs.begin(), logs.end(), [](const std::string& l) {
    return l.find("training on cpu devices with gloo collectives") != std::string::npos;
  })) << fmt::format("{}", fmt::join(logs, "\n"));
}

TEST(TrainEmbedded, ACudaDeviceWithoutAUsableGpuIsRefusedWithTheReason) {
  if (kernels::select_device_backend(kernels::backend_request::cuda))
    GTEST_SKIP() << "a GPU is usable here; tests/gpu trains on it";
  auto cluster = embedded_cluster::start(0, 0);
  ASSERT_TRUE(cluster) << cluster.error().to_string();
  ASSERT_TRUE((*cluster)->add_node(std::vector<device_id>{{device_kind::cuda, 0}}));
  auto spec = tiny("flexsp", {});
  spec.checkpoint_dir.clear();
  spec.checkpoint_every = 0;
  std::mutex mutex;
  std::vector<std::string> logs;
  auto made = (*cluster)->jobs().submit(spec, {}, [&](const std::string& line) {
    std::lock_guard lock{mutex};
    logs.push_back(line);
  });
  ASSERT_TRUE(made) << made.error().to_string();
  auto job = *made;
  // Once the device is refused nothing else can come: stop the job waiting for devices.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds{30};
  for (;;) {
    {
      std::lock_guard lock{mutex};
      if (std::any_of(logs.begin(), logs.end(),
                      [](const std::string& l) { return l.find("could not join") != std::string::npos; })) {
        job->cancel();
        break;
      }
    }
    ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "the cuda device was neither used nor refused";
    std::this_thread::sleep_for(std::chrono::milliseconds{20});
  }
  const auto st = job->wait();
  EXPECT_EQ(st.state, job_state::cancelled);
  std::lock_guard lock{mutex};
  const auto refusal = std::find_if(logs.begin(), logs.end(),
                                    [](const std::string& l) { return l.find("could not join") != std::string::npos; });
  ASSERT_NE(refusal, logs.end());
  EXPECT_NE(refusal->find("cuda:0: cannot open the GPU"), std::string::npos) << *refusal;
  EXPECT_TRUE(std::any_of(logs.begin(), logs.end(), [](const std::string& l) {
    return l.find("training on cuda devices with nccl collectives") != std::string::npos;
  }));
}

}  // namespace
}  // namespace flexsp::actors
