// GPU kernels against their CPU references. Label `gpu`: skipped by the default test command,
// and each test skips itself (with the reason) when the build or the machine has no GPU.
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "flexsp/kernels/cuda_runtime.hpp"

namespace flexsp::kernels {
namespace {

TEST(AxpyCuda, MatchesTheCpuReferenceOnOddSizes) {
  const auto s = query_cuda();
  if (!s.compiled) GTEST_SKIP() << "CUDA backend not compiled in";
  if (s.devices.empty()) GTEST_SKIP() << "no GPU: " << s.reason;
  std::mt19937 rng{7};
  std::uniform_real_distribution<float> dist{-1.0f, 1.0f};
  for (std::size_t n : {1u, 255u, 257u, 1000003u}) {
    std::vector<float> x(n), y(n);
    for (auto& v : x) v = dist(rng);
    for (auto& v : y) v = dist(rng);
    auto ref = y;
    ASSERT_TRUE(axpy_cpu(0.5f, x, ref));
    auto r = axpy_cuda(0.5f, x, y);
    ASSERT_TRUE(r) << r.error().to_string();
    for (std::size_t i = 0; i < n; ++i) ASSERT_FLOAT_EQ(y[i], ref[i]) << "n=" << n << " i=" << i;
  }
}

}  // namespace
}  // namespace flexsp::kernels
