// Safetensors files and Hugging Face model directories: round trips, and files that are wrong.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include <nlohmann/json.hpp>

#include "flexsp/kernels/hf_interchange.hpp"
#include "flexsp/kernels/model.hpp"
#include "flexsp/kernels/safetensors.hpp"

namespace flexsp::kernels {
namespace {

namespace fs = std::filesystem;

struct temp_dir {
  fs::path path = fs::temp_directory_path() / ("flexsp-interchange-" + std::to_string(::getpid()) + "-" +
                                                std::to_string(std::chrono::steady_clock::now().time_since_epoch().count()));
  temp_dir() { fs::create_directories(path); }
  ~temp_dir() { fs::remove_all(path); }
};

st_file sample_file() {
  st_file f;
  f.tensors["a.weight"] = {{2, 3}, {1.0f, -2.5f, 3.25f, 0.0f, 1e-3f, -7.0f}};
  f.tensors["b"] = {{4}, {0.1f, 0.2f, 0.3f, 1e30f}};
  f.tensors["scalarish"] = {{1, 1}, {42.0f}};
  f.metadata["format"] = "pt";
  return f;
}

TEST(Safetensors, Fp32RoundTripsBitForBitWithMetadata) {
  temp_dir d;
  const auto path = d.path / "m.safetensors";
  ASSERT_TRUE(write_safetensors(path, sample_file(), st_dtype::f32));
  auto back = read_safetensors(path);
  ASSERT_TRUE(back) << back.error().to_string();
  for (const auto& [name, t] : sample_file().tensors) {
    ASSERT_EQ(back->tensors.count(name), 1u) << name;
    EXPECT_EQ(back->tensors.at(name).shape, t.shape);
    EXPECT_EQ(back->tensors.at(name).values, t.values) << name;
  }
  EXPECT_EQ(back->metadata.at("format"), "pt");
  // The header is 8-byte aligned JSON, as the specification recommends.
  std::ifstream in{path, std::ios::binary};
  std::uint64_t n = 0;
  in.read(reinterpret_cast<char*>(&n), 8);
  EXPECT_EQ(n % 8, 0u);
}

TEST(Safetensors, Bf16RoundsToNearestEvenAndWidensExactly) {
  temp_dir d;
  const auto path = d.path / "m.safetensors";
  st_file f;
  f.tensors["t"] = {{4}, {1.0f, 1.00390625f /* a tie: stays 1 */, 1.01171875f /* a tie: rounds up to even */, -3.0f}};
  ASSERT_TRUE(write_safetensors(path, f, st_dtype::bf16));
  auto back = read_safetensors(path);
  ASSERT_TRUE(back);
  EXPECT_EQ(back->tensors.at("t").stored, st_dtype::bf16);
  EXPECT_EQ(back->tensors.at("t").values, (std::vector<float>{1.0f, 1.0f, 1.015625f, -3.0f}));
  std::uint64_t header = 0;
  {
    std::ifstream in{path, std::ios::binary};
    in.read(reinterpret_cast<char*>(&header), 8);
  }
  EXPECT_EQ(fs::file_size(path) - 8 - header, 8u) << "two bytes per value";
}

TEST(Safetensors, ReadsF16) {
  temp_dir d;
  const auto path = d.path / "h.safetensors";
  const std::string header = R"({"x":{"dtype":"F16","shape":[3],"data_offsets":[0,6]}})";
  std::string file(8, '\0');
  const std::uint64_t n = header.size();
  std::memcpy(file.data(), &n, 8);
  file += header;
  for (std::uint16_t h : {std::uint16_t{0x3c00} /* 1 */, std::uint16_t{0xc000} /* -2 */, std::uint16_t{0x0001}})
    file.append(reinterpret_cast<const char*>(&h), 2);
  std::ofstream{path, std::ios::binary} << file;
  auto back = read_safetensors(path);
  ASSERT_TRUE(back) << back.error().to_string();
  EXPECT_EQ(back->tensors.at("x").values[0], 1.0f);
  EXPECT_EQ(back->tensors.at("x").values[1], -2.0f);
  EXPECT_EQ(back->tensors.at("x").values[2], std::ldexp(1.0f, -24));
}

TEST(Safetensors, MalformedFilesAreRefusedNamingTheProblem) {
  temp_dir d;
  auto write = [&](const std::string& header, std::size_t data_bytes) {
    const auto path = d.path / "bad.safetensors";
    std::string file(8, '\0');
    const std::uint64_t n = header.size();
    std::memcpy(file.data(), &n, 8);
    file += header;
    file.append(data_bytes, '\0');
    std::ofstream{path, std::ios::binary | std::ios::trunc} << file;
    return path;
  };
  auto message = [&](const fs::path& p) {
    auto r = read_safetensors(p);
    EXPECT_FALSE(r);
    return r ? std::string{} : r.error().message();
  };
  EXPECT_NE(message(write(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 4)).find("spans bytes"),
            std::string::npos);
  EXPECT_NE(message(write(R"({"x":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8)).find("spans bytes"),
            std::string::npos);
  EXPECT_NE(message(write(R"({"x":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}})", 8)).find("dtype I64"),
            std::string::npos);
  EXPECT_NE(message(write(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                          R"("y":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                          12))
                .find("overlap"),
            std::string::npos);
  EXPECT_NE(message(write("not json at all", 0)).find("not a JSON object"), std::string::npos);
  EXPECT_NE(message(write(R"({"x":{"dtype":"F32"}})", 0)).find("lacks"), std::string::npos);
  std::ofstream{d.path / "short.safetensors"} << "abc";
  EXPECT_NE(message(d.path / "short.safetensors").find("shorter"), std::string::npos);
  EXPECT_EQ(read_safetensors(d.path / "absent.safetensors").error().kind(), errc::not_found);
}

void expect_round_trip(const model_config& config) {
  temp_dir d;
  auto m = model::create(config, 3).value();
  // Not the initial values only: every element different.
  std::mt19937 rng{5};
  std::normal_distribution<float> dist{0.0f, 0.1f};
  for (auto& p : m.host_params()) p += dist(rng);
  ASSERT_TRUE(export_hugging_face(config, m.host_params(), d.path, st_dtype::f32));
  auto back = import_hugging_face(d.path);
  ASSERT_TRUE(back) << back.error().to_string();
  EXPECT_EQ(back->config, config);
  const std::vector<float> mine(m.host_params().begin(), m.host_params().end());
  EXPECT_EQ(back->params, mine) << "bit for bit";
}

TEST(HuggingFace, Gpt2ExportsAndImportsBitForBit) {
  expect_round_trip({.layers = 2, .d_model = 24, .heads = 3, .vocab = 50, .max_positions = 64});
}

TEST(HuggingFace, LlamaWithGroupedQueryAttentionExportsAndImportsBitForBit) {
  expect_round_trip({.family = model_family::llama, .layers = 2, .d_model = 32, .heads = 4, .vocab = 50,
                     .max_positions = 64, .kv_heads = 2, .ffn = 48, .rope_theta = 500000.0f, .norm_eps = 1e-6f});
}

TEST(HuggingFace, TheLayoutsAreTheirs) {
  temp_dir d;
  const model_config c{.family = model_family::llama, .layers = 1, .d_model = 16, .heads = 4, .vocab = 30,
                       .max_positions = 32, .kv_heads = 1, .ffn = 24};
  auto m = model::create(c, 1).value();
  ASSERT_TRUE(export_hugging_face(c, m.host_params(), d.path, st_dtype::f32));
  auto f = read_safetensors(d.path / "model.safetensors").value();
  EXPECT_EQ(f.tensors.at("model.layers.0.self_attn.q_proj.weight").shape, (std::vector<std::int64_t>{16, 16}));
  EXPECT_EQ(f.tensors.at("model.layers.0.self_attn.k_proj.weight").shape, (std::vector<std::int64_t>{4, 16}));
  EXPECT_EQ(f.tensors.at("model.layers.0.mlp.gate_proj.weight").shape, (std::vector<std::int64_t>{24, 16}));
  EXPECT_EQ(f.tensors.at("model.layers.0.mlp.down_proj.weight").shape, (std::vector<std::int64_t>{16, 24}));
  EXPECT_EQ(f.tensors.at("lm_head.weight").shape, (std::vector<std::int64_t>{30, 16}));
  // q_proj row o, column i is our w_qkv[i][o] (transposed).
  const auto w = m.find("h0.attn.w_qkv").value();
  const float ours = m.host_params()[static_cast<std::size_t>(w.offset + 5 * w.shape[1] + 3)];
  EXPECT_EQ(f.tensors.at("model.layers.0.self_attn.q_proj.weight").values[3 * 16 + 5], ours);
  std::ifstream in{d.path / "config.json"};
  auto j = nlohmann::json::parse(in);
  EXPECT_EQ(j["architectures"][0], "LlamaForCausalLM");
  EXPECT_EQ(j["num_key_value_heads"], 1);
  EXPECT_EQ(j["rms_norm_eps"].get<double>(), 1e-5);
}

TEST(HuggingFace, WhatCannotBeTrainedHereIsRefused) {
  temp_dir d;
  const model_config c{.layers = 1, .d_model = 8, .heads = 2, .vocab = 20, .max_positions = 16};
  auto m = model::create(c, 1).value();
  ASSERT_TRUE(export_hugging_face(c, m.host_params(), d.path, st_dtype::f32));
  auto edit = [&](const char* key, nlohmann::json value) {
    std::ifstream in{d.path / "config.json"};
    auto j = nlohmann::json::parse(in);
    j[key] = value;
    std::ofstream{d.path / "config.json", std::ios::trunc} << j.dump();
  };
  edit("activation_function", "relu");
  auto r = import_hugging_face(d.path);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("activation_function"), std::string::npos);
  edit("activation_function", "gelu_new");
  edit("model_type", "mistral");
  EXPECT_NE(import_hugging_face(d.path).error().message().find("model_type 'mistral'"), std::string::npos);
  edit("model_type", "gpt2");
  edit("n_embd", 10);  // the tensors no longer fit
  EXPECT_FALSE(import_hugging_face(d.path));
  EXPECT_EQ(import_hugging_face(d.path / "nowhere").error().kind(), errc::not_found);
}

TEST(Checkpoint, HoldsItsModelConfiguration) {
  temp_dir d;
  const model_config c{.family = model_family::llama, .layers = 1, .d_model = 16, .heads = 4, .vocab = 30,
                       .max_positions = 32, .kv_heads = 2, .ffn = 24, .rope_theta = 1e6f};
  auto m = model::create(c, 1).value();
  ASSERT_TRUE(save_checkpoint(d.path / "c.ckpt", m));
  auto back = read_checkpoint_config(d.path / "c.ckpt");
  ASSERT_TRUE(back) << back.error().to_string();
  EXPECT_EQ(*back, c);
  auto other = c;
  other.kv_heads = 4;
  auto wrong = model::create(other, 1).value();
  auto refused = load_checkpoint(d.path / "c.ckpt", wrong);
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.error().message().find("kv_heads"), std::string::npos);
}

}  // namespace
}  // namespace flexsp::kernels
