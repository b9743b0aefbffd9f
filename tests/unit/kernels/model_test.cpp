#include "flexsp/kernels/model.hpp"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include "flexsp/kernels/data.hpp"
#include "flexsp/kernels/ops.hpp"
#include "flexsp/kernels/gloo_communicator.hpp"

namespace flexsp::kernels {
namespace {

const model_config kSmall{.layers = 2, .d_model = 24, .heads = 3, .vocab = 256, .max_positions = 256};

TEST(Fingerprint, SeesEveryBitAndComposesOverConcatenation) {
  std::vector<float> a(1000);
  for (std::size_t i = 0; i < a.size(); ++i) a[i] = std::sin(static_cast<float>(i));
  const auto h = fingerprint(a);
  // Any single flipped bit anywhere changes it.
  for (std::size_t i : {std::size_t{0}, std::size_t{499}, std::size_t{999}})
    for (int bit : {0, 17, 31}) {
      auto b = a;
      std::uint32_t u;
      std::memcpy(&u, &b[i], 4);
      u ^= 1u << bit;
      std::memcpy(&b[i], &u, 4);
      EXPECT_NE(fingerprint(b), h) << i << " " << bit;
    }
  // Swapping two different elements changes it (positions are salted in).
  auto swapped = a;
  std::swap(swapped[3], swapped[700]);
  EXPECT_NE(fingerprint(swapped), h);
  // +0 and -0 compare equal as floats but are different bits.
  std::vector<float> zeros{0.0f}, negative{-0.0f};
  EXPECT_NE(fingerprint(zeros), fingerprint(negative));
  // Parts with continued positions sum to the whole.
  const std::span<const float> s{a};
  EXPECT_EQ(fingerprint(s.first(300)) + fingerprint(s.subspan(300), 300), h);
  EXPECT_EQ(fingerprint(std::span<const float>{}), 0u);
}

TEST(CpuMathThreads, CpuDevicesShareTheCores) {
  if (std::getenv("FLEXSP_CPU_THREADS") || std::getenv("OPENBLAS_NUM_THREADS"))
    GTEST_SKIP() << "the thread count is fixed by the environment";
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  EXPECT_EQ(add_cpu_devices(4 * cores), 1) << "more devices than cores: one GEMM thread each";
  EXPECT_EQ(cpu_math_threads(), 1);
  EXPECT_EQ(add_cpu_devices(-4 * cores), cores) << "no devices left: every core";
  EXPECT_EQ(add_cpu_devices(1), cores);
  EXPECT_EQ(add_cpu_devices(-1), cores);
}

// Large products are split over the shared worker pool: several devices multiplying at once
// (threads of one process) each get the same bits as a product on its own, and a forked child
// (which has none of the parent's workers) still computes.
TEST(CpuMathThreads, ConcurrentProductsOnTheSharedPoolMatchASoloProduct) {
  const std::int64_t m = 700, n = 300, k = 200;
  std::vector<float> a(static_cast<std::size_t>(m * k)), b(static_cast<std::size_t>(k * n));
  for (std::size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>((i * 7919) % 101) / 50.0f - 1.0f;
  for (std::size_t i = 0; i < b.size(); ++i) b[i] = static_cast<float>((i * 104729) % 97) / 48.0f - 1.0f;
  auto product = [&] {
    std::vector<float> c(static_cast<std::size_t>(m * n));
    gemm(false, false, m, n, k, 1.0f, a.data(), k, b.data(), n, 0.0f, c.data(), n);
    return c;
  };
  const auto solo = product();
  std::vector<std::vector<float>> results(6);
  {
    std::vector<std::jthread> devices;
    for (auto& r : results) devices.emplace_back([&] { r = product(); });
  }
  for (const auto& r : results) EXPECT_EQ(r, solo);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) ::_exit(product() == solo ? 0 : 1);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

TEST(GptConfig, NamesTheBadField) {
  model_config c = kSmall;
  c.heads = 5;
  auto r = c.validate();
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("heads"), std::string::npos);
  EXPECT_FALSE(model::create(c, 1));
}

TEST(GptModel, SameSeedGivesIdenticalParameters) {
  auto a = model::create(kSmall, 42).value(), b = model::create(kSmall, 42).value(),
       c = model::create(kSmall, 43).value();
  EXPECT_TRUE(std::equal(a.host_params().begin(), a.host_params().end(), b.host_params().begin()));
  EXPECT_FALSE(std::equal(a.host_params().begin(), a.host_params().end(), c.host_params().begin()));
  EXPECT_EQ(static_cast<std::int64_t>(a.host_params().size()), kSmall.parameter_count());
  EXPECT_EQ(a.find("h1.ln2.g").value().shape, (shape_t{24}));
  EXPECT_EQ(a.find("nope").error().kind(), errc::not_found);
}

TEST(GptModel, InitialLossIsNearLogVocab) {
  auto m = model::create(kSmall, 1).value();
  const std::vector<std::int64_t> lengths{50, 70};
  auto seqs = synthetic_sequences(lengths, 3);
  auto layout = ulysses_layout::make(lengths, 1, 0, kSmall.heads).value();
  auto in = shard_inputs(layout, seqs).value();
  auto comm = make_local_communicator();
  auto r = m.forward_backward(*comm, layout, in, 1.0f / 120, {.backward = false}).value();
  EXPECT_NEAR(r.loss_sum / 120, std::log(256.0), 0.1);
}

TEST(GptModel, RejectsSequencesLongerThanMaxPositions) {
  auto m = model::create(kSmall, 1).value();
  const std::vector<std::int64_t> lengths{300};
  auto layout = ulysses_layout::make(lengths, 1, 0, kSmall.heads).value();
  auto in = shard_inputs(layout, synthetic_sequences(lengths, 1)).value();
  auto comm = make_local_communicator();
  auto r = m.forward_backward(*comm, layout, in, 1.0f);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().kind(), errc::invalid_argument);
}

TEST(Checkpoint, RoundTripsParametersAndOptimizerStateAndDetectsCorruption) {
  const auto path = std::filesystem::temp_directory_path() / ("flexsp_ckpt_" + std::to_string(::getpid()));
  auto m = model::create(kSmall, 5).value();
  for (auto& g : m.host_grads()) g = 0.01f;
  m.optimizer_step({}, 1.0).value();
  ASSERT_TRUE(save_checkpoint(path, m));
  auto m2 = model::create(kSmall, 6).value();
  ASSERT_TRUE(load_checkpoint(path, m2));
  EXPECT_TRUE(std::equal(m.host_params().begin(), m.host_params().end(), m2.host_params().begin()));
  EXPECT_TRUE(std::equal(m.host_second_moments().begin(), m.host_second_moments().end(), m2.host_second_moments().begin()));
  EXPECT_EQ(m2.steps(), 1);

  model_config other = kSmall;
  other.layers = 1;
  auto m3 = model::create(other, 1).value();
  auto mismatch = load_checkpoint(path, m3);
  ASSERT_FALSE(mismatch);
  EXPECT_NE(mismatch.error().message().find("layers"), std::string::npos);

  {
    std::fstream f{path, std::ios::in | std::ios::out | std::ios::binary};
    f.seekp(100);
    f.put('\x7f');
  }
  auto corrupt = load_checkpoint(path, m2);
  ASSERT_FALSE(corrupt);
  EXPECT_NE(corrupt.error().message().find("checksum"), std::string::npos);
  std::filesystem::resize_file(path, 60);
  EXPECT_FALSE(load_checkpoint(path, m2));
  EXPECT_EQ(load_checkpoint(path.string() + ".absent", m2).error().kind(), errc::not_found);
  std::filesystem::remove(path);
}

double rel_err(std::span<const float> a, std::span<const float> b) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    num += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    den += static_cast<double>(b[i]) * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

// The quick in-process version of the SP equivalence check (threads); the multi-process one
// with more degrees lives in the integration suite.
TEST(UlyssesSp, ThreadedGroupOfThreeMatchesOneDevice) {
  const std::vector<std::int64_t> lengths{1, 5, 100};
  const int d = 3;
  auto seqs = synthetic_sequences(lengths, 11);
  const float scale = 1.0f / 106;
  auto ref = model::create(kSmall, 9).value();
  auto l1 = ulysses_layout::make(lengths, 1, 0, kSmall.heads).value();
  auto local = make_local_communicator();
  auto ref_out = ref.forward_backward(*local, l1, shard_inputs(l1, seqs).value(), scale).value();

  memory_store store;
  std::vector<std::thread> threads;
  std::vector<double> losses(d);
  std::vector<std::vector<float>> grads(d);
  for (int r = 0; r < d; ++r)
    threads.emplace_back([&, r] {
      auto comm = make_gloo_communicator(store, "sp3", r, d, gloo_options{}).value();
      auto m = model::create(kSmall, 9).value();
      auto l = ulysses_layout::make(lengths, d, r, kSmall.heads).value();
      auto out = m.forward_backward(*comm, l, shard_inputs(l, seqs).value(), scale).value();
      losses[r] = out.loss_sum;
      ASSERT_TRUE(all_reduce_gradients(*comm, m));
      grads[r].assign(m.host_grads().begin(), m.host_grads().end());
    });
  for (auto& t : threads) t.join();
  EXPECT_NEAR(losses[0] + losses[1] + losses[2], ref_out.loss_sum, 1e-4 * ref_out.loss_sum);
  for (int r = 0; r < d; ++r) EXPECT_LE(rel_err(grads[r], ref.host_grads()), 1e-4);
}

/// Runs `cfg` on an SP group of `degree` threads and on one device: returns the largest
/// relative error of the loss and of the summed gradients.
std::size_t sz(int v) { return static_cast<std::size_t>(v); }

std::pair<double, double> sp_against_one_device(const model_config& cfg, int degree) {
  const std::vector<std::int64_t> lengths{1, 5, 37, 100, 3};
  auto seqs = synthetic_sequences(lengths, 11, cfg.vocab);
  const float scale = 1.0f / 146;
  auto ref = model::create(cfg, 9).value();
  auto l1 = ulysses_layout::make(lengths, 1, 0, cfg.heads).value();
  auto local = make_local_communicator();
  auto ref_out = ref.forward_backward(*local, l1, shard_inputs(l1, seqs).value(), scale).value();
  memory_store store;
  std::vector<std::thread> threads;
  std::vector<double> losses(sz(degree));
  std::vector<std::vector<float>> grads(sz(degree));
  for (int r = 0; r < degree; ++r)
    threads.emplace_back([&, r] {
      auto comm = degree == 1 ? make_local_communicator()
                              : make_gloo_communicator(store, "sp", r, degree, gloo_options{}).value();
      auto m = model::create(cfg, 9).value();
      auto l = ulysses_layout::make(lengths, degree, r, cfg.heads).value();
      auto out = m.forward_backward(*comm, l, shard_inputs(l, seqs).value(), scale).value();
      losses[sz(r)] = out.loss_sum;
      ASSERT_TRUE(all_reduce_gradients(*comm, m));
      grads[sz(r)].assign(m.host_grads().begin(), m.host_grads().end());
    });
  for (auto& t : threads) t.join();
  double loss = 0, worst = 0;
  for (double l : losses) loss += l;
  for (const auto& g : grads) worst = std::max(worst, rel_err(g, ref.host_grads()));
  return {std::abs(loss - ref_out.loss_sum) / std::abs(ref_out.loss_sum), worst};
}

// The memory model: model::footprint names every byte a micro-batch makes the device allocate
// (the ledger's high-water mark), for both families, GQA, and SP groups of one to three.
TEST(MemoryModel, FootprintMatchesTheDeviceLedgerByteForByte) {
  model_config llama = kSmall;
  llama.family = model_family::llama;
  llama.kv_heads = 1;
  const std::vector<std::int64_t> lengths{1, 5, 37, 100, 3};
  for (const auto& cfg : {kSmall, llama})
    for (int degree : {1, 2, 3}) {
      SCOPED_TRACE(testing::Message() << to_string(cfg.family) << " degree " << degree);
      auto seqs = synthetic_sequences(lengths, 11, cfg.vocab);
      memory_store store;
      std::vector<std::thread> threads;
      std::vector<std::uint64_t> measured(sz(degree)), predicted(sz(degree)), states(sz(degree));
      for (int r = 0; r < degree; ++r)
        threads.emplace_back([&, r] {
          auto comm = degree == 1 ? make_local_communicator()
                                  : make_gloo_communicator(store, "mem", r, degree, gloo_options{}).value();
          auto m = model::create(cfg, 9).value();
          states[sz(r)] = m.dev().memory().in_use;
          auto l = ulysses_layout::make(lengths, degree, r, cfg.heads).value();
          predicted[sz(r)] = m.footprint(l).value().total();
          ASSERT_TRUE(m.forward_backward(*comm, l, shard_inputs(l, seqs).value(), 1.0f / 146));
          measured[sz(r)] = m.dev().memory().peak;
          EXPECT_EQ(m.footprint(l).value().states, states[sz(r)]);
        });
      for (auto& t : threads) t.join();
      for (int r = 0; r < degree; ++r) EXPECT_EQ(measured[sz(r)], predicted[sz(r)]) << "rank " << r;
    }
}

// A host device's capacity is the host's memory shared by the CPU devices of the process,
// unless a node set a figure per device (flexsp start --cpu-memory-gb).
TEST(MemoryModel, HostCapacityIsSharedOrSetPerDevice) {
  auto dev = std::shared_ptr<device>{make_host_device()};
  const auto shared = dev->memory().capacity;
  EXPECT_GT(shared, 0u);
  set_cpu_device_memory(3ull << 30);
  EXPECT_EQ(dev->memory().capacity, 3ull << 30);
  set_cpu_device_memory(0);
  EXPECT_EQ(dev->memory().capacity, shared);
  auto b = dev->allocate(1000).value();
  EXPECT_EQ(dev->memory().in_use, 1000u);
  b.reset();
  EXPECT_EQ(dev->memory().in_use, 0u);
  EXPECT_EQ(dev->memory().peak, 1000u);
}

// The planner's linear model (fixed + per_token * tokens / degree) against the exact
// footprint of long sequences: within 5%.
TEST(MemoryModel, PlannerEstimateIsWithinFivePercentOfTheFootprint) {
  model_config llama = kSmall;
  llama.family = model_family::llama;
  llama.kv_heads = 1;
  llama.max_positions = 1 << 15;
  model_config gpt = kSmall;
  gpt.max_positions = 1 << 15;
  for (const auto& cfg : {gpt, llama})
    for (int degree : {1, 2, 4})
      for (std::int64_t tokens : {2000, 6000, 20000}) {
        auto m = model::create(cfg, 1).value();
        const auto est = estimate_memory(cfg, degree, 1);
        auto l = ulysses_layout::make({tokens}, degree, 0, cfg.heads).value();
        const double exact = static_cast<double>(m.footprint(l).value().total());
        const double linear = est.fixed + est.per_token * static_cast<double>(tokens) / degree;
        EXPECT_NEAR(linear / exact, 1.0, 0.05)
            << to_string(cfg.family) << " degree " << degree << " tokens " << tokens;
      }
}

// The limits users of DeepSpeed-Ulysses hit most: an SP degree above the K/V heads (they are
// repeated for the exchange and their gradients summed back) and heads the degree does not
// divide (uneven head shares, ranks without heads). Every degree 1..8.
TEST(UlyssesSp, GroupedQueryAttentionAtEveryDegreeMatchesOneDevice) {
  const model_config gqa{.family = model_family::llama, .layers = 2, .d_model = 48, .heads = 6, .vocab = 97,
                         .max_positions = 256, .kv_heads = 2, .ffn = 64};
  auto mqa = gqa;
  mqa.kv_heads = 1;  // multi-query
  auto uneven = gqa;
  uneven.heads = 3;  // head_dim 16; no degree but 1 and 3 divides it
  uneven.kv_heads = 1;
  for (const auto& [name, cfg] : {std::pair{"gqa 6/2", gqa}, std::pair{"mqa 6/1", mqa}, std::pair{"uneven 3/1", uneven}})
    for (int degree = 1; degree <= 8; ++degree) {
      const auto [loss_err, grad_err] = sp_against_one_device(cfg, degree);
      EXPECT_LE(loss_err, 1e-5) << name << " at degree " << degree;
      EXPECT_LE(grad_err, 1e-5) << name << " at degree " << degree;
    }
}

TEST(TrainingState, BroadcastGivesAJoiningReplicaTheSameParametersAndMoments) {
  memory_store store;
  std::vector<std::vector<float>> params(2), second(2);
  std::vector<std::int64_t> steps(2);
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r)
    threads.emplace_back([&, r] {
      auto comm = make_gloo_communicator(store, "join", r, 2, gloo_options{}).value();
      auto m = model::create(kSmall, r == 0 ? 1 : 2).value();
      if (r == 0) {
        const std::vector<std::vector<std::int32_t>> seqs = synthetic_sequences(std::vector<std::int64_t>{20, 7}, 4);
        auto local = make_local_communicator();
        ASSERT_TRUE(run_micro_batch(m, *local, seqs, 1.0f / 27));
        m.optimizer_step({}, 1.0).value();
      }
      ASSERT_TRUE(broadcast_training_state(*comm, 0, m));
      params[r].assign(m.host_params().begin(), m.host_params().end());
      second[r].assign(m.host_second_moments().begin(), m.host_second_moments().end());
      steps[r] = m.steps();
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(params[0], params[1]);
  EXPECT_EQ(second[0], second[1]);
  EXPECT_EQ(steps[1], 1);
}

}  // namespace
}  // namespace flexsp::kernels
