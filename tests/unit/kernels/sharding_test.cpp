// Sharded model states: the layout, ZeRO-3 and HSDP training against full replicas, idle rounds,
// resharding by transfer, and sharded checkpoints loaded on another shard count.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <thread>

#include "flexsp/kernels/model.hpp"
#include "flexsp/kernels/process_communicator.hpp"
#include "flexsp/kernels/sharding.hpp"

namespace flexsp::kernels {
namespace {

using namespace std::chrono_literals;

model_config tiny_llama() {
  model_config c;
  c.family = model_family::llama;
  c.layers = 3;
  c.d_model = 32;
  c.heads = 4;
  c.kv_heads = 2;
  c.vocab = 61;
  c.max_positions = 64;
  return c;
}

model_config tiny_gpt2() {
  model_config c;
  c.layers = 2;
  c.d_model = 32;
  c.heads = 4;
  c.vocab = 53;
  c.max_positions = 64;
  return c;
}

/// Runs fn(rank) on `n` threads and waits for all.
void run_ranks(int n, const std::function<void(int)>& fn) {
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) threads.emplace_back([&, r] { fn(r); });
  for (auto& t : threads) t.join();
}

std::unique_ptr<communicator> comm(const std::string& key, int rank, int size) {
  if (size == 1) return make_local_communicator();
  auto c = make_process_communicator(key, rank, size, 30s);
  EXPECT_TRUE(c.has_value()) << (c ? "" : c.error().to_string());
  return std::move(*c);
}

/// The full flat buffers (params, first, second moments) of a shard group's models.
std::vector<float> assemble(const std::vector<const model*>& shards) {
  const auto& c = shards.front()->config();
  const auto full = shard_layout::of(c).full_size();
  std::vector<float> out(3 * static_cast<std::size_t>(full), 0.0f);
  for (const auto* m : shards) {
    const auto& lay = m->shards();
    const auto n = static_cast<std::size_t>(m->size());
    std::vector<float> p(n), a(n), b(n);
    EXPECT_TRUE(m->download_params(p));
    EXPECT_TRUE(m->download_moments(a, b));
    for (std::size_t u = 0; u < lay.units(); ++u) {
      const auto r = lay.range(u, lay.index());
      for (std::int64_t e = r.begin; e < r.end; ++e) {
        const auto at = static_cast<std::size_t>(lay.local_offset(u) + e - r.begin);
        out[static_cast<std::size_t>(e)] = p[at];
        out[static_cast<std::size_t>(full + e)] = a[at];
        out[static_cast<std::size_t>(2 * full + e)] = b[at];
      }
    }
  }
  return out;
}

TEST(ShardLayout, UnitsCoverTheModelAndEveryShardKeepsItsChunk) {
  for (const auto& c : {tiny_gpt2(), tiny_llama()}) {
    const auto units = shard_units(c);
    ASSERT_EQ(units.size(), static_cast<std::size_t>(c.layers + 2));
    EXPECT_EQ(units.front().begin, 0);
    EXPECT_EQ(units.back().end, c.parameter_count());
    for (int count : {1, 2, 3, 7}) {
      std::int64_t covered = 0;
      for (int index = 0; index < count; ++index) {
        const auto lay = shard_layout::of(c, count, index);
        std::int64_t local = 0;
        for (std::size_t u = 0; u < lay.units(); ++u) {
          EXPECT_EQ(lay.local_offset(u), local);
          local += lay.chunk(u);
          covered += lay.range(u, index).size();
          EXPECT_LE(lay.range(u, index).size(), lay.chunk(u));
        }
        EXPECT_EQ(lay.local_size(), local);
      }
      EXPECT_EQ(covered, c.parameter_count()) << "count " << count;
    }
    EXPECT_EQ(shard_layout::of(c).local_size(), c.parameter_count());
  }
}

TEST(ShardLayout, ShardedModelHoldsTheMatchingChunksOfTheUnshardedOne) {
  const auto c = tiny_llama();
  auto whole = model::create(c, 7).value();
  std::vector<std::unique_ptr<model>> parts;
  for (int i = 0; i < 3; ++i)
    parts.push_back(std::make_unique<model>(model::create(std::shared_ptr<device>{make_host_device()}, c, 7, {3, i}).value()));
  EXPECT_EQ(assemble({parts[0].get(), parts[1].get(), parts[2].get()}), assemble({&whole}));
  EXPECT_LT(parts[0]->size(), whole.size() / 2);
}

/// A data-parallel run on `world` ranks: per step, round 0 gives every rank a sequence of its
/// own (a group of one), round 1 gives ranks 0 and 1 one sequence as an SP group of two while the
/// others sit idle. `shard_count` 1 replicates; else rank r keeps shard r % shard_count of a
/// group of consecutive ranks, and replicas (ranks with the same shard) all-reduce gradients.
struct run_result {
  std::vector<double> losses;
  std::vector<float> state;                 // assembled from the first shard group
  std::vector<std::uint64_t> fingerprints;  // per rank
};

run_result train(const std::string& tag, const model_config& c, int world, int shard_count, int steps, bool prefetch) {
  run_result out;
  out.losses.assign(static_cast<std::size_t>(steps), 0.0);
  out.fingerprints.assign(static_cast<std::size_t>(world), 0);
  std::vector<std::unique_ptr<model>> models(static_cast<std::size_t>(world));
  const adamw_params hyper{.lr = 3e-3f, .weight_decay = 0.1f};
  run_ranks(world, [&](int rank) {
    const int groups = world / shard_count;
    const int index = rank % shard_count, group = rank / shard_count;
    auto dev = std::shared_ptr<device>{make_host_device()};
    auto m = model::create(dev, c, 11, {shard_count, index});
    ASSERT_TRUE(m.has_value()) << m.error().to_string();
    auto world_comm = comm(tag + "/world", rank, world);
    auto shard_comm = comm(fmt::format("{}/shard{}", tag, group), index, shard_count);
    auto replica_comm = comm(fmt::format("{}/replica{}", tag, index), group, groups);
    std::unique_ptr<communicator> pair = rank < 2 ? comm(tag + "/sp01", rank, 2) : nullptr;
    forward_options opt;
    opt.shard_group = shard_count > 1 ? shard_comm.get() : nullptr;
    opt.prefetch = prefetch;
    for (int step = 0; step < steps; ++step) {
      ASSERT_TRUE(m->zero_grads());
      // Every rank builds the same batch; loss_scale = 1 / its tokens.
      std::vector<std::vector<std::int32_t>> own;
      std::int64_t tokens = 0;
      for (int r = 0; r <= world; ++r) {
        std::mt19937 rng(static_cast<unsigned>(1000 * step + r));
        const int len = 5 + static_cast<int>(rng() % 28);
        std::vector<std::int32_t> ids(static_cast<std::size_t>(len + 1));
        for (auto& v : ids) v = static_cast<std::int32_t>(rng() % static_cast<unsigned>(c.vocab));
        own.push_back(std::move(ids));
        tokens += len;
      }
      const float scale = 1.0f / static_cast<float>(tokens);
      double loss = 0;
      {
        auto local = make_local_communicator();
        const auto& mine = own[static_cast<std::size_t>(rank)];
        auto layout = ulysses_layout::make({static_cast<std::int64_t>(mine.size()) - 1}, 1, 0, c.heads).value();
        auto in = shard_inputs(layout, std::span{&mine, 1}).value();
        auto r0 = m->forward_backward(*local, layout, in, scale, opt);
        ASSERT_TRUE(r0.has_value()) << r0.error().to_string();
        loss += r0->loss_sum;
      }
      if (pair) {
        auto layout = ulysses_layout::make({static_cast<std::int64_t>(own.back().size()) - 1}, 2, rank, c.heads).value();
        auto in = shard_inputs(layout, std::span{&own.back(), 1}).value();
        auto r1 = m->forward_backward(*pair, layout, in, scale, opt);
        ASSERT_TRUE(r1.has_value()) << r1.error().to_string();
        loss += r1->loss_sum;
      } else {
        ASSERT_TRUE(m->idle_micro_batch(opt.shard_group, prefetch));
      }
      if (shard_count == 1) {
        ASSERT_TRUE(all_reduce_gradients(*world_comm, *m));
      } else if (groups > 1) {
        ASSERT_TRUE(all_reduce_gradients(*replica_comm, *m));
      }
      std::vector<float> l{static_cast<float>(loss)};
      ASSERT_TRUE(world_comm->all_reduce_sum(l));
      if (rank == 0) out.losses[static_cast<std::size_t>(step)] = l[0];
      auto norm = m->gradient_norm(opt.shard_group);
      ASSERT_TRUE(norm.has_value()) << norm.error().to_string();
      ASSERT_TRUE(m->optimizer_step(hyper, 1.0, *norm));
    }
    out.fingerprints[static_cast<std::size_t>(rank)] = m->fingerprint().value();
    models[static_cast<std::size_t>(rank)] = std::make_unique<model>(std::move(*m));
  });
  std::vector<const model*> first;
  for (int i = 0; i < shard_count; ++i) first.push_back(models[static_cast<std::size_t>(i)].get());
  out.state = assemble(first);
  return out;
}

void expect_same_training(const run_result& a, const run_result& b) {
  ASSERT_EQ(a.losses.size(), b.losses.size());
  for (std::size_t i = 0; i < a.losses.size(); ++i)
    EXPECT_NEAR(a.losses[i], b.losses[i], 1e-5 * std::abs(a.losses[i])) << "step " << i;
  ASSERT_EQ(a.state.size(), b.state.size());
  const auto n = a.state.size() / 3;
  double worst = 0;
  for (std::size_t i = 0; i < n; ++i) worst = std::max(worst, std::abs(double{a.state[i]} - b.state[i]));
  EXPECT_LT(worst, 1e-4) << "largest parameter difference";
}

TEST(ShardedTraining, Zero3OnFourDevicesMatchesReplicasOver30Steps) {
  const auto c = tiny_llama();
  const auto replicate = train("z3r", c, 4, 1, 30, true);
  const auto zero3 = train("z3s", c, 4, 4, 30, true);
  EXPECT_LT(zero3.losses.back(), zero3.losses.front());
  expect_same_training(replicate, zero3);
}

TEST(ShardedTraining, HsdpReplicasOfAShardStayBitwiseEqual) {
  const auto c = tiny_gpt2();
  const auto replicate = train("hr", c, 4, 1, 12, true);
  const auto hsdp = train("hs", c, 4, 2, 12, false);
  expect_same_training(replicate, hsdp);
  EXPECT_EQ(hsdp.fingerprints[0], hsdp.fingerprints[2]);
  EXPECT_EQ(hsdp.fingerprints[1], hsdp.fingerprints[3]);
  EXPECT_NE(hsdp.fingerprints[0], hsdp.fingerprints[1]);
}

TEST(ShardedTraining, PrefetchGivesTheSameBits) {
  const auto c = tiny_llama();
  const auto with = train("pw", c, 2, 2, 4, true);
  const auto without = train("po", c, 2, 2, 4, false);
  EXPECT_EQ(with.state, without.state);
  EXPECT_EQ(with.fingerprints, without.fingerprints);
}

TEST(ShardedTraining, ForwardWithoutItsShardGroupIsRefused) {
  const auto c = tiny_gpt2();
  auto m = model::create(std::shared_ptr<device>{make_host_device()}, c, 1, {2, 0}).value();
  auto local = make_local_communicator();
  std::vector<std::vector<std::int32_t>> seq{{1, 2, 3, 4}};
  auto r = run_micro_batch(m, *local, seq, 1.0f);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().kind(), errc::invalid_argument);
  EXPECT_FALSE(m.optimizer_step({}, 1.0).has_value());
}

/// A trained 4-shard state (distinct params and moments) on 4 host models.
std::vector<std::unique_ptr<model>> trained_shards(const model_config& c, int count) {
  std::vector<std::unique_ptr<model>> out(static_cast<std::size_t>(count));
  run_ranks(count, [&](int rank) {
    auto m = model::create(std::shared_ptr<device>{make_host_device()}, c, 5, {count, rank}).value();
    auto shard_comm = comm(fmt::format("trained{}", count), rank, count);
    forward_options opt;
    opt.shard_group = shard_comm.get();
    for (int step = 0; step < 2; ++step) {
      ASSERT_TRUE(m.zero_grads());
      auto local = make_local_communicator();
      std::vector<std::int32_t> ids(static_cast<std::size_t>(9 + rank));
      for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<std::int32_t>((i * 7 + rank) % 50);
      auto layout = ulysses_layout::make({static_cast<std::int64_t>(ids.size()) - 1}, 1, 0, c.heads).value();
      auto in = shard_inputs(layout, std::span{&ids, 1}).value();
      ASSERT_TRUE(m.forward_backward(*local, layout, in, 0.01f, opt));
      ASSERT_TRUE(m.optimizer_step({}, 1.0, m.gradient_norm(shard_comm.get()).value()));
    }
    out[static_cast<std::size_t>(rank)] = std::make_unique<model>(std::move(m));
  });
  return out;
}

TEST(ShardTransfer, FourShardsBecomeTwoReplicatedPairsBitForBit) {
  const auto c = tiny_llama();
  auto old = trained_shards(c, 4);
  const auto before = assemble({old[0].get(), old[1].get(), old[2].get(), old[3].get()});
  std::vector<std::unique_ptr<model>> fresh(4);
  run_ranks(4, [&](int rank) {
    auto world = comm("transfer42", rank, 4);
    auto target = model::create(std::shared_ptr<device>{make_host_device()}, c, 0, {2, rank % 2}, true).value();
    const int sources[4] = {0, 1, 2, 3};
    auto r = transfer_shards(*world, sources, old[static_cast<std::size_t>(rank)].get(), target);
    ASSERT_TRUE(r.has_value()) << r.error().to_string();
    EXPECT_EQ(target.steps(), 2);
    fresh[static_cast<std::size_t>(rank)] = std::make_unique<model>(std::move(target));
  });
  EXPECT_EQ(assemble({fresh[0].get(), fresh[1].get()}), before);
  EXPECT_EQ(assemble({fresh[2].get(), fresh[3].get()}), before);
}

TEST(ShardTransfer, AJoiningDeviceReceivesItsShardFromTheHolders) {
  // Two holders of a 2-shard state and a newcomer: afterwards three shards of three.
  const auto c = tiny_gpt2();
  auto old = trained_shards(c, 2);
  const auto before = assemble({old[0].get(), old[1].get()});
  std::vector<std::unique_ptr<model>> fresh(3);
  run_ranks(3, [&](int rank) {
    auto world = comm("transfer23", rank, 3);
    auto target = model::create(std::shared_ptr<device>{make_host_device()}, c, 0, {3, rank}, true).value();
    const int sources[2] = {0, 1};
    const model* held = rank < 2 ? old[static_cast<std::size_t>(rank)].get() : nullptr;
    ASSERT_TRUE(transfer_shards(*world, sources, held, target));
    fresh[static_cast<std::size_t>(rank)] = std::make_unique<model>(std::move(target));
  });
  EXPECT_EQ(assemble({fresh[0].get(), fresh[1].get(), fresh[2].get()}), before);
}

TEST(ShardTransfer, ASourceThatHoldsAnotherShardIsRefused) {
  const auto c = tiny_gpt2();
  auto held = model::create(std::shared_ptr<device>{make_host_device()}, c, 1, {2, 1}).value();
  auto target = model::create(std::shared_ptr<device>{make_host_device()}, c, 1, {2, 0}, true).value();
  auto local = make_local_communicator();
  const int sources[2] = {0, 0};
  auto r = transfer_shards(*local, sources, &held, target);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().kind(), errc::invalid_argument);
}

class ShardedCheckpoint : public ::testing::Test {
protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           fmt::format("flexsp-shard-ckpt-{}-{}", ::getpid(), ::testing::UnitTest::GetInstance()->random_seed());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::filesystem::path dir_;
};

TEST_F(ShardedCheckpoint, WrittenByFourLoadsOnOneAndOnThree) {
  const auto c = tiny_llama();
  auto old = trained_shards(c, 4);
  const auto before = assemble({old[0].get(), old[1].get(), old[2].get(), old[3].get()});
  for (int r = 0; r < 4; ++r) ASSERT_TRUE(save_checkpoint(dir_ / shard_file_name(4, r), *old[static_cast<std::size_t>(r)]));
  EXPECT_EQ(read_checkpoint_config(dir_).value(), c);
  auto whole = model::create(c, 99).value();
  ASSERT_TRUE(load_checkpoint(dir_, whole));
  EXPECT_EQ(assemble({&whole}), before);
  EXPECT_EQ(whole.steps(), 2);
  std::vector<std::unique_ptr<model>> three;
  for (int r = 0; r < 3; ++r) {
    three.push_back(std::make_unique<model>(
        model::create(std::shared_ptr<device>{make_host_device()}, c, 99, {3, r}, true).value()));
    ASSERT_TRUE(load_checkpoint(dir_, *three.back()));
  }
  EXPECT_EQ(assemble({three[0].get(), three[1].get(), three[2].get()}), before);
  // An unsharded checkpoint loads into shards too.
  ASSERT_TRUE(save_checkpoint(dir_ / "whole.ckpt", whole));
  auto half = model::create(std::shared_ptr<device>{make_host_device()}, c, 99, {2, 1}, true).value();
  ASSERT_TRUE(load_checkpoint(dir_ / "whole.ckpt", half));
  auto other = model::create(std::shared_ptr<device>{make_host_device()}, c, 99, {2, 0}, true).value();
  ASSERT_TRUE(load_checkpoint(dir_ / "whole.ckpt", other));
  EXPECT_EQ(assemble({&other, &half}), before);
}

TEST_F(ShardedCheckpoint, AMissingOrCorruptShardIsAClearError) {
  const auto c = tiny_gpt2();
  auto old = trained_shards(c, 2);
  ASSERT_TRUE(save_checkpoint(dir_ / shard_file_name(2, 0), *old[0]));
  auto whole = model::create(c, 1).value();
  auto missing = load_checkpoint(dir_, whole);
  ASSERT_FALSE(missing.has_value());
  EXPECT_NE(missing.error().message().find("shard 1 of 2 is missing"), std::string::npos) << missing.error().message();
  // A shard file alone is not a model.
  auto alone = load_checkpoint(dir_ / shard_file_name(2, 0), whole);
  ASSERT_FALSE(alone.has_value());
  EXPECT_NE(alone.error().message().find("load the directory"), std::string::npos) << alone.error().message();
  ASSERT_TRUE(save_checkpoint(dir_ / shard_file_name(2, 1), *old[1]));
  {
    std::fstream f{dir_ / shard_file_name(2, 1), std::ios::in | std::ios::out | std::ios::binary};
    f.seekp(200);
    f.put('\x7f');
  }
  auto corrupt = load_checkpoint(dir_, whole);
  ASSERT_FALSE(corrupt.has_value());
  EXPECT_NE(corrupt.error().message().find("checksum mismatch"), std::string::npos) << corrupt.error().message();
}

TEST(ShardedMemory, FootprintMatchesTheLedgerOfAShardedStep) {
  const auto c = tiny_llama();
  run_ranks(2, [&](int rank) {
    auto dev = std::shared_ptr<device>{make_host_device()};
    auto m = model::create(dev, c, 3, {2, rank}).value();
    auto shard_comm = comm("ledger", rank, 2);
    auto layout = ulysses_layout::make({40}, 1, 0, c.heads).value();
    const auto predicted = m.footprint(layout).value();
    std::vector<std::int32_t> ids(41, 3);
    auto in = shard_inputs(layout, std::span{&ids, 1}).value();
    auto local = make_local_communicator();
    forward_options opt;
    opt.shard_group = shard_comm.get();
    ASSERT_TRUE(m.forward_backward(*local, layout, in, 1.0f, opt));
    EXPECT_EQ(dev->peak_memory(), predicted.total());
    EXPECT_EQ(predicted.states, 16u * static_cast<std::uint64_t>(m.size()));
  });
}

}  // namespace
}  // namespace flexsp::kernels
