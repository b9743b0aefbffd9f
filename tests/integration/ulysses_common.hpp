#pragma once
// Shared by the multi-process SP tests and their worker binary: the model, the batch, the
// device plan and a small file format for results.

#include <cstdint>
#include <cstring>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "flexsp/kernels/model.hpp"

namespace flexsp::kernels::testing {

inline const model_config kSpModel{.layers = 2, .d_model = 48, .heads = 6, .vocab = 256, .max_positions = 2048};
inline constexpr std::uint64_t kModelSeed = 2024;
inline constexpr std::uint64_t kDataSeed = 77;
/// None of these is divisible by 2, 3, 4 or 8.
inline const std::vector<std::int64_t> kSpLengths{1, 5, 100, 513, 2047};

/// The plan test: 6 devices, two micro-batches, groups of different degrees on non-contiguous
/// device sets. plan_lengths()[i] is sequence i of the global batch.
inline const std::vector<std::int64_t> kPlanLengths{1, 5, 100, 513, 2047, 300, 77};
struct plan_group {
  std::vector<int> devices;
  std::vector<std::size_t> sequences;  // indices into kPlanLengths
};
inline const std::vector<std::vector<plan_group>> kPlan{
    {{{0, 1, 2}, {4, 1}}, {{3, 4}, {3}}, {{5}, {2, 0}}},
    {{{0, 2, 4, 5}, {5}}, {{1, 3}, {6}}},
};
inline constexpr int kPlanDevices = 6;
inline const adamw_params kPlanAdam{.lr = 1e-3f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.1f};
inline constexpr double kPlanClip = 1.0;

using arrays = std::map<std::string, std::vector<float>>;

inline bool write_arrays(const std::string& path, const arrays& a) {
  std::ofstream out{path, std::ios::binary};
  for (const auto& [name, v] : a) {
    const auto len = static_cast<std::uint32_t>(name.size());
    const auto n = static_cast<std::uint64_t>(v.size());
    out.write(reinterpret_cast<const char*>(&len), 4);
    out.write(name.data(), len);
    out.write(reinterpret_cast<const char*>(&n), 8);
    out.write(reinterpret_cast<const char*>(v.data()), static_cast<std::streamsize>(n * 4));
  }
  return static_cast<bool>(out);
}

inline arrays read_arrays(const std::string& path) {
  arrays a;
  std::ifstream in{path, std::ios::binary};
  std::uint32_t len;
  while (in.read(reinterpret_cast<char*>(&len), 4)) {
    std::string name(len, '\0');
    in.read(name.data(), len);
    std::uint64_t n;
    in.read(reinterpret_cast<char*>(&n), 8);
    std::vector<float> v(n);
    in.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(n * 4));
    a.emplace(std::move(name), std::move(v));
  }
  return a;
}

}  // namespace flexsp::kernels::testing
