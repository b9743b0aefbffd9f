// Writes what the PyTorch oracle (scripts/oracle_check.py) compares against: a model of one
// family as a Hugging Face directory, a packed batch, and this build's loss and per-parameter
// gradients on it (the gradients under Hugging Face names, through the same export).
//
//   flexsp_oracle_dump gpt2|llama OUT_DIR
//
// OUT_DIR/model (config.json + model.safetensors), OUT_DIR/grads/model.safetensors,
// OUT_DIR/batch.json ({"sequences": [[ids...], ...], "loss_sum": ...}).
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include <nlohmann/json.hpp>

#include "flexsp/kernels/data.hpp"
#include "flexsp/kernels/hf_interchange.hpp"
#include "flexsp/kernels/model.hpp"

using namespace flexsp;
using namespace flexsp::kernels;

int main(int argc, char** argv) {
  if (argc != 3 || (std::string{argv[1]} != "gpt2" && std::string{argv[1]} != "llama")) {
    std::fprintf(stderr, "usage: %s gpt2|llama OUT_DIR\n", argv[0]);
    return 2;
  }
  const bool llama = std::string{argv[1]} == "llama";
  const std::filesystem::path out = argv[2];
  model_config c;
  if (llama)
    c = {.family = model_family::llama, .layers = 2, .d_model = 32, .heads = 4, .vocab = 64, .max_positions = 128,
         .kv_heads = 2, .ffn = 48, .rope_theta = 10000.0f, .norm_eps = 1e-5f};
  else
    c = {.layers = 2, .d_model = 32, .heads = 4, .vocab = 64, .max_positions = 128};
  auto m = model::create(c, 11);
  if (!m) {
    std::fprintf(stderr, "%s\n", m.error().to_string().c_str());
    return 1;
  }
  // Away from the initial values, so that every gradient is well above rounding noise.
  std::mt19937 rng{7};
  std::normal_distribution<float> dist{0.0f, 0.05f};
  for (auto& p : m->host_params()) p += dist(rng);
  const std::vector<std::int64_t> lengths{17, 40, 5, 29};
  const auto sequences = synthetic_sequences(lengths, 3, c.vocab);
  auto layout = ulysses_layout::make(lengths, 1, 0, c.heads).value();
  auto in = shard_inputs(layout, sequences).value();
  (void)m->zero_grads();
  auto r = m->forward_backward(in, lengths, 1.0f);  // gradients of the summed token losses
  if (!r) {
    std::fprintf(stderr, "%s\n", r.error().to_string().c_str());
    return 1;
  }
  for (const auto& [dir, values] : {std::pair{out / "model", m->host_params()}, std::pair{out / "grads", m->host_grads()}})
    if (auto w = export_hugging_face(c, values, dir, st_dtype::f32); !w) {
      std::fprintf(stderr, "%s\n", w.error().to_string().c_str());
      return 1;
    }
  nlohmann::json j{{"sequences", sequences}, {"loss_sum", r->loss_sum}, {"family", argv[1]}};
  std::ofstream{out / "batch.json"} << j.dump() << "\n";
  std::printf("%s: loss sum %.6f over %zu sequences written to %s\n", argv[1], r->loss_sum, sequences.size(),
              out.string().c_str());
  return 0;
}
