// Training a small model on the prose bundled in kernels/data for a few dozen steps, with
// two-way Ulysses SP over Gloo threads plus data parallelism, lowers the loss clearly.
#include <cmath>
#include <numeric>
#include <thread>

#include <gtest/gtest.h>

#include "flexsp/kernels/data.hpp"
#include "flexsp/kernels/gloo_communicator.hpp"
#include "flexsp/kernels/model.hpp"

namespace flexsp::kernels {
namespace {

using namespace std::chrono_literals;

TEST(Training, LossFallsClearlyOnRealTextWithinFortySteps) {
  auto docs = load_text_documents(FLEXSP_SOURCE_DIR "/kernels/data/prose");
  ASSERT_TRUE(docs) << docs.error().to_string();
  ASSERT_GE(docs->size(), 3u);
  const auto corpus = tokenize_corpus(*docs);
  ASSERT_GT(corpus.size(), 4000u);
  const model_config cfg{.layers = 2, .d_model = 64, .heads = 4, .vocab = 256, .max_positions = 256};
  constexpr int kSteps = 40;
  constexpr int kDegree = 2;
  // Held-out evaluation batch: fixed windows, never trained on by index (same corpus).
  const std::vector<std::int64_t> eval_lengths{128, 128, 128, 128};
  auto eval_seqs = sample_sequences(corpus, eval_lengths, 999).value();

  memory_store store;
  std::vector<double> first(kDegree), last(kDegree), eval_before(kDegree), eval_after(kDegree);
  std::vector<std::thread> threads;
  for (int r = 0; r < kDegree; ++r) {
    threads.emplace_back([&, r] {
      auto comm = make_gloo_communicator(store, "train", r, kDegree, gloo_options{.timeout = 60s}).value();
      auto mdl = model::create(cfg, 1).value();
      auto eval = [&] {
        auto layout = ulysses_layout::make(eval_lengths, kDegree, r, cfg.heads).value();
        auto res = mdl.forward_backward(*comm, layout, shard_inputs(layout, eval_seqs).value(), 1.0f, {.backward = false}).value();
        std::vector<float> sum{static_cast<float>(res.loss_sum)};
        EXPECT_TRUE(comm->all_reduce_sum(sum));
        return sum[0] / 512.0;
      };
      eval_before[r] = eval();
      for (int step = 0; step < kSteps; ++step) {
        // Variable lengths, none divisible by the degree.
        const std::vector<std::int64_t> lengths{97, 161, 33, 255};
        auto seqs = sample_sequences(corpus, lengths, 100 + step).value();
        auto layout = ulysses_layout::make(lengths, kDegree, r, cfg.heads).value();
        ASSERT_TRUE(mdl.zero_grads());
        auto res = mdl.forward_backward(*comm, layout, shard_inputs(layout, seqs).value(), 1.0f / 546).value();
        ASSERT_TRUE(all_reduce_gradients(*comm, mdl));
        std::vector<float> loss{static_cast<float>(res.loss_sum)};
        ASSERT_TRUE(comm->all_reduce_sum(loss));
        if (step == 0) first[r] = loss[0] / 546;
        if (step == kSteps - 1) last[r] = loss[0] / 546;
        mdl.optimizer_step(adamw_params{.lr = 3e-3f, .weight_decay = 0.0f}, 1.0).value();
      }
      eval_after[r] = eval();
    });
  }
  for (auto& t : threads) t.join();
  RecordProperty("first_loss", std::to_string(first[0]));
  RecordProperty("last_loss", std::to_string(last[0]));
  std::printf("training loss %.3f -> %.3f, eval %.3f -> %.3f nats/token\n", first[0], last[0], eval_before[0],
              eval_after[0]);
  EXPECT_NEAR(first[0], std::log(256.0), 0.3);
  EXPECT_LT(last[0], first[0] - 1.5);
  EXPECT_LT(eval_after[0], eval_before[0] - 1.5);
  EXPECT_EQ(eval_after[0], eval_after[1]);  // both replicas hold the same parameters
}

}  // namespace
}  // namespace flexsp::kernels
