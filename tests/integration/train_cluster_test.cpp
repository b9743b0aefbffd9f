// Elastic training between real processes on loopback: a job on 3 nodes x 2 CPU devices that
// loses a node to kill -9, a node that joins mid-run, and a resume from a checkpoint on another
// node count.
#include <cmath>
#include <fstream>
#include <mutex>
#include <random>
#include <set>

#include "train_common.hpp"

namespace flexsp::testing {
namespace {

TEST(TrainCluster, KillNineOfOneNodeMidRunFinishesEveryStepOnTheSurvivors) {
  process_cluster cluster{"kill"};
  ASSERT_TRUE(cluster.launch(3, "cpu:2"));
  const auto nodes = cluster.node_pids();
  ASSERT_EQ(nodes.size(), 3u);
  auto client = cluster.client();
  ASSERT_TRUE(client);
  // Layout-search plans only: the next plan is ready when a step commits, so the next step is
  // in flight when the client sees the commit and kills the node (a CBC solve could outlast a
  // step and leave the kill between steps, where no attempt needs aborting).
  auto spec = small_job(30);
  spec.milp = false;
  auto job = client->submit(spec);
  ASSERT_TRUE(job) << job.error().to_string();
  std::vector<step_record> steps;
  bool killed = false;
  auto final = job->wait([&](const std::string& line) {
    steps.push_back(parse_step(line));
    if (!killed && steps.back().step == 9) {
      ASSERT_EQ(::kill(nodes[1], SIGKILL), 0);
      killed = true;
    }
  });
  ASSERT_TRUE(final) << final.error().to_string();
  EXPECT_EQ(final->state, actors::job_state::succeeded) << final->error;
  ASSERT_EQ(steps.size(), 30u);
  for (std::size_t i = 0; i < steps.size(); ++i) EXPECT_EQ(steps[i].step, i) << "every step committed exactly once, in order";
  EXPECT_EQ(steps.front().devices, 6u);
  EXPECT_EQ(steps.back().devices, 4u) << "the job finishes on the 4 surviving devices";
  std::uint32_t retried = 0;
  for (std::size_t i = 10; i < steps.size(); ++i) retried += steps[i].retried;
  EXPECT_GE(retried, 1u) << "the step in flight at the kill was aborted and re-run";
  EXPECT_LT(steps.back().loss, steps.front().loss - 1.5) << "first " << steps.front().loss << " last " << steps.back().loss;
  EXPECT_NE(final->final_checksum, 0u) << "the scheduler checked that the surviving replicas are identical";
}

/// A prepared dataset (bytes) of long-tailed documents under `dir`, made by the CLI.
std::string prepared_corpus(const fs::path& dir) {
  fs::create_directories(dir / "text");
  std::mt19937 rng{11};
  for (int d = 0; d < 120; ++d) {
    const auto len = 20 + static_cast<std::size_t>(std::exp(std::uniform_real_distribution<>(0, 6.5)(rng)));
    std::string text;
    while (text.size() < len) text += fmt::format("word{} ", rng() % 50);
    std::ofstream{dir / "text" / fmt::format("doc{:03}.txt", d)} << text;
  }
  const auto out = dir / "prepared";
  const auto cmd = fmt::format("{} data prepare --input {} --out {} --quiet > /dev/null 2>&1", FLEXSP_CLI_PATH,
                               (dir / "text").string(), out.string());
  EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
  return out.string();
}

TEST(TrainCluster, AJobOnPreparedDataSurvivesKillNineWithTheLossesOfAFaultFreeRun) {
  // Token shards read by the head, sequences of their real lengths, a node killed mid-run: every
  // step commits once and the losses are those of the same job with no fault.
  const auto dir = fs::temp_directory_path() / fmt::format("flexsp-prepared-{}", ::getpid());
  fs::remove_all(dir);
  auto spec = small_job(12);
  spec.milp = false;
  spec.model.max_seq = 128;  // documents up to ~700 bytes: most are split into pieces
  spec.prepared.push_back({prepared_corpus(dir), 1.0});
  auto run = [&](bool kill) {
    process_cluster cluster{kill ? "prep-kill" : "prep-ref"};
    EXPECT_TRUE(cluster.launch(3, "cpu:2"));
    const auto nodes = cluster.node_pids();
    auto client = cluster.client();
    EXPECT_TRUE(client);
    std::vector<step_record> steps;
    if (!client) return steps;
    auto job = client->submit(spec);
    EXPECT_TRUE(job) << job.error().to_string();
    if (!job) return steps;
    auto final = job->wait([&](const std::string& line) {
      steps.push_back(parse_step(line));
      if (kill && steps.back().step == 4) ::kill(nodes[2], SIGKILL);
    });
    EXPECT_TRUE(final && final->state == actors::job_state::succeeded) << (final ? final->error : "");
    EXPECT_FALSE(cluster.log_lines("split into pieces").empty()) << "the job logs what it trains on";
    return steps;
  };
  const auto ref = run(false);
  const auto killed = run(true);
  ASSERT_EQ(ref.size(), 12u);
  ASSERT_EQ(killed.size(), 12u);
  for (std::size_t i = 0; i < ref.size(); ++i) {
    EXPECT_EQ(killed[i].step, i);
    EXPECT_NEAR(killed[i].loss, ref[i].loss, 1e-5 * ref[i].loss) << "step " << i;
  }
  EXPECT_EQ(killed.back().devices, 4u);
  fs::remove_all(dir);
}

TEST(TrainCluster, ALlamaJobSurvivesKillNineOfANode) {
  // The llama family (grouped-query attention) between real processes: its shape travels in the
  // join messages, and the step in flight at the kill is re-planned for the survivors.
  process_cluster cluster{"llama"};
  ASSERT_TRUE(cluster.launch(3, "cpu:2"));
  const auto nodes = cluster.node_pids();
  ASSERT_EQ(nodes.size(), 3u);
  auto client = cluster.client();
  ASSERT_TRUE(client);
  auto spec = small_job(16);
  spec.milp = false;
  ASSERT_TRUE(actors::apply_model_preset("llama-tiny", spec.model));
  spec.model.max_seq = 256;
  auto job = client->submit(spec);
  ASSERT_TRUE(job) << job.error().to_string();
  std::vector<step_record> steps;
  auto final = job->wait([&](const std::string& line) {
    steps.push_back(parse_step(line));
    if (steps.back().step == 5) {
      EXPECT_EQ(::kill(nodes[2], SIGKILL), 0);
    }
  });
  ASSERT_TRUE(final) << final.error().to_string();
  EXPECT_EQ(final->state, actors::job_state::succeeded) << final->error;
  ASSERT_EQ(steps.size(), 16u);
  for (std::size_t i = 0; i < steps.size(); ++i) EXPECT_EQ(steps[i].step, i);
  EXPECT_EQ(steps.back().devices, 4u);
  EXPECT_LT(steps.back().loss, steps.front().loss);
  EXPECT_NE(final->final_checksum, 0u);
}

TEST(TrainCluster, ANodeStartedMidRunIsUsedFromALaterStep) {
  process_cluster cluster{"join"};
  ASSERT_TRUE(cluster.launch(2, "cpu:2"));
  auto client = cluster.client();
  ASSERT_TRUE(client);
  auto job = client->submit(small_job(24));
  ASSERT_TRUE(job) << job.error().to_string();
  std::vector<step_record> steps;
  bool started = false;
  auto final = job->wait([&](const std::string& line) {
    steps.push_back(parse_step(line));
    if (!started && steps.back().step == 4) {
      started = true;
      EXPECT_TRUE(cluster.add_node("cpu:2"));
    }
  });
  ASSERT_TRUE(final) << final.error().to_string();
  EXPECT_EQ(final->state, actors::job_state::succeeded) << final->error;
  ASSERT_EQ(steps.size(), 24u);
  for (std::size_t i = 0; i < steps.size(); ++i) EXPECT_EQ(steps[i].step, i);
  EXPECT_EQ(steps.front().devices, 4u);
  EXPECT_EQ(steps.back().devices, 6u) << "the new node's devices take part";
  std::size_t first_with_six = steps.size();
  for (std::size_t i = 0; i < steps.size(); ++i)
    if (steps[i].devices == 6) {
      first_with_six = i;
      break;
    }
  EXPECT_GT(first_with_six, 4u);
  EXPECT_NE(final->final_checksum, 0u) << "the joined replicas received the state and stayed identical";
  EXPECT_LT(steps.back().loss, steps.front().loss - 1.0);
}

TEST(TrainCluster, StopAfterACheckpointAndResumeOnAnotherNodeCount) {
  const auto dir = fs::temp_directory_path() / fmt::format("flexsp-train-ckpt-{}", ::getpid());
  fs::remove_all(dir);
  auto spec = small_job(16);
  spec.checkpoint_dir = dir.string();
  spec.checkpoint_every = 5;
  std::uint64_t committed = 0;
  {
    process_cluster cluster{"ckpt1"};
    ASSERT_TRUE(cluster.launch(3, "cpu:2"));
    auto client = cluster.client();
    ASSERT_TRUE(client);
    auto job = client->submit(spec);
    ASSERT_TRUE(job) << job.error().to_string();
    for (int i = 0; i < 600; ++i) {
      auto st = job->status();
      ASSERT_TRUE(st) << st.error().to_string();
      committed = st->steps_done;
      if (committed >= 7) break;
      std::this_thread::sleep_for(100ms);
    }
    ASSERT_GE(committed, 7u);
    cluster.stop();  // the whole cluster, job included
  }
  ASSERT_TRUE(fs::exists(dir / "latest.json"));
  auto latest = nlohmann::json::parse(read_text(dir / "latest.json"));
  const auto resume = latest["step"].get<std::uint64_t>();
  EXPECT_GE(resume, 5u);
  EXPECT_EQ(resume % 5, 0u);

  process_cluster cluster{"ckpt2"};
  ASSERT_TRUE(cluster.launch(1, "cpu:2"));
  // Resubmit through the command line this time: --wait --metrics, exit status 0.
  const auto spec_file = dir / "job.json";
  std::ofstream{spec_file} << actors::job_spec_to_json(spec);
  const auto metrics_file = dir / "metrics.jsonl";
  auto r = shell(fmt::format("{} {} job submit --address {} --secret-file {} {} --wait --metrics {}", cluster.env(),
                             FLEXSP_CLI_PATH, cluster.address(), cluster.secret_file(), spec_file.string(),
                             metrics_file.string()));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  std::vector<step_record> steps;
  std::ifstream in{metrics_file};
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) steps.push_back(parse_step(line));
  ASSERT_EQ(steps.size(), 16 - resume) << r.output;
  for (std::size_t i = 0; i < steps.size(); ++i) {
    EXPECT_EQ(steps[i].step, resume + i) << "steps continue from the checkpoint";
    EXPECT_EQ(steps[i].devices, 2u);
  }
  // The loss continues where it was, not from the untrained 5.5.
  EXPECT_LT(steps.front().loss, 4.5);
  fs::remove_all(dir);
}

TEST(TrainCluster, EveryNodeKilledRewindsToTheClustersDefaultCheckpoint) {
  // The job names no checkpoint directory: the cluster checkpoints it in its state directory
  // (here every 4 steps, keeping 2 files). Both nodes are killed; new nodes carry it on from the
  // latest checkpoint instead of the job failing.
  process_cluster cluster{"defckpt"};
  ASSERT_TRUE(cluster.launch(2, "cpu:1"));
  const auto nodes = cluster.node_pids();
  ASSERT_EQ(nodes.size(), 2u);
  auto client = cluster.client();
  ASSERT_TRUE(client);
  auto spec = small_job(20);
  spec.milp = false;
  spec.checkpoint_every = 4;
  auto job = client->submit(spec);
  ASSERT_TRUE(job) << job.error().to_string();
  std::vector<step_record> steps;
  bool killed = false;
  auto final = job->wait([&](const std::string& line) {
    steps.push_back(parse_step(line));
    if (!killed && steps.back().step == 9) {
      killed = true;
      for (auto p : nodes) ::kill(p, SIGKILL);
      EXPECT_TRUE(cluster.add_node("cpu:1"));
      EXPECT_TRUE(cluster.add_node("cpu:1"));
    }
  });
  ASSERT_TRUE(final) << final.error().to_string();
  EXPECT_EQ(final->state, actors::job_state::succeeded) << final->error;
  ASSERT_FALSE(steps.empty());
  EXPECT_EQ(steps.back().step, 19u);
  const auto dir = cluster.state() / "checkpoints" / job->id();
  EXPECT_TRUE(fs::exists(dir / "latest.json")) << dir;
  std::size_t files = 0;
  for (const auto& e : fs::directory_iterator(dir)) files += e.path().extension() == ".ckpt";
  EXPECT_EQ(files, 2u) << "only the newest two checkpoint files are kept";
  // The client sees steps a little after they commit: the kill lands at step 9 or a few later.
  EXPECT_FALSE(cluster.log_lines("restarted from " + (dir / "step-").string()).empty())
      << "the job went on from a default checkpoint";
}

TEST(TrainCluster, AClientWaitingOnAJobWhoseHeadDiesIsToldTheHeadIsGone) {
  process_cluster cluster{"headgone"};
  ASSERT_TRUE(cluster.launch(1, "cpu:1"));
  auto client = cluster.client();
  ASSERT_TRUE(client);
  client->head_wait = 1500ms;
  auto job = client->submit(small_job(500));
  ASSERT_TRUE(job) << job.error().to_string();
  const auto head = cluster.head_pid();
  ASSERT_GT(head, 0);
  std::uint64_t seen = 0;
  const auto t0 = std::chrono::steady_clock::now();
  auto final = job->wait([&](const std::string&) {
    if (++seen == 2) ::kill(head, SIGKILL);
  });
  ASSERT_FALSE(final) << "the job cannot end well without its head";
  EXPECT_EQ(final.error().kind(), errc::disconnected);
  EXPECT_NE(final.error().message().find("the head at " + cluster.address() + " is gone"), std::string::npos)
      << final.error().message();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 60s);
}

TEST(TrainCluster, AnInvalidSpecIsRejectedAtSubmitNamingTheField) {
  process_cluster cluster{"bad"};
  ASSERT_TRUE(cluster.launch(1, "cpu:1"));
  auto client = cluster.client();
  ASSERT_TRUE(client);
  auto job = client->submit_json(R"({"steps": 3, "model": {"d_model": 30, "heads": 4}})");
  ASSERT_FALSE(job);
  EXPECT_NE(job.error().message().find("model.d_model"), std::string::npos) << job.error().message();
  const auto file = cluster.state() / "bad.json";
  std::ofstream{file} << R"({"steps": 3, "strategy": "megatron"})";
  auto r = shell(fmt::format("{} {} job submit --address {} --secret-file {} {}", cluster.env(), FLEXSP_CLI_PATH,
                             cluster.address(), cluster.secret_file(), file.string()));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("strategy"), std::string::npos) << r.output;
  // Specs the cluster cannot run fail at once, naming the field and what the cluster offers.
  const auto t0 = std::chrono::steady_clock::now();
  for (const char* spec : {R"({"steps": 3, "backend": "cuda"})", R"({"steps": 3, "collectives": "nccl"})",
                           R"({"steps": 3, "min_devices": 4})", R"({"steps": 3, "strategy": "static:1000"})",
                           R"({"steps": 3, "checkpoint": {"dir": "/proc/version/ckpt"}})"}) {
    auto refused = client->submit_json(spec);
    ASSERT_FALSE(refused) << spec;
    EXPECT_EQ(refused.error().kind(), errc::invalid_argument) << refused.error().to_string();
    std::string field;  // the key besides "steps"
    const auto parsed = nlohmann::json::parse(spec);
    for (const auto& [key, _] : parsed.items())
      if (key != "steps") field = key;
    ASSERT_FALSE(field.empty());
    EXPECT_NE(refused.error().message().find(field), std::string::npos) << spec << ": " << refused.error().message();
  }
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 30s) << "refused at submit, not after the device wait";
}

}  // namespace
}  // namespace flexsp::testing
