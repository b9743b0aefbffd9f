#include "flexsp/kernels/cuda_runtime.hpp"

#include <vector>

#include <gtest/gtest.h>

namespace flexsp::kernels {
namespace {

TEST(AxpyCpu, ComputesAXPlusY) {
  std::vector<float> x{1, 2, 3}, y{10, 20, 30};
  ASSERT_TRUE(axpy_cpu(2.0f, x, y));
  EXPECT_EQ(y, (std::vector<float>{12, 24, 36}));
}

TEST(AxpyCpu, RejectsMismatchedSizes) {
  std::vector<float> x{1, 2}, y{1};
  auto r = axpy_cpu(1.0f, x, y);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().kind(), errc::invalid_argument);
}

TEST(CudaStatus, ExplainsWhyThereAreNoDevices) {
  const auto s = query_cuda();
  if (s.devices.empty()) {
    EXPECT_FALSE(s.reason.empty());
  }
  if (!s.compiled) {
    EXPECT_EQ(axpy_cuda(1.0f, {}, {}).error().kind(), errc::unimplemented);
  }
}

TEST(AxpyCuda, FailsCleanlyWithoutAGpu) {
  const auto s = query_cuda();
  if (!s.compiled || !s.devices.empty()) GTEST_SKIP() << "needs a CUDA build on a machine without a GPU";
  std::vector<float> x{1}, y{1};
  auto r = axpy_cuda(1.0f, x, y);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().kind(), errc::not_found);
}

}  // namespace
}  // namespace flexsp::kernels
