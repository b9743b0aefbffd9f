#include "flexsp/kernels/tensor.hpp"

#include <gtest/gtest.h>

namespace flexsp::kernels {
namespace {

TEST(Tensor, IsZeroInitialisedWithItsShape) {
  tensor t{{2, 3}};
  EXPECT_EQ(t.numel(), 6);
  EXPECT_EQ(t.dim(1), 3);
  for (float v : t.span()) EXPECT_EQ(v, 0.0f);
}

TEST(TensorView, IndexesRowsAndElements) {
  tensor t{{2, 3}, {0, 1, 2, 3, 4, 5}};
  auto v = t.view();
  EXPECT_EQ(v.at({1, 2}), 5.0f);
  EXPECT_EQ(v[1].at({0}), 3.0f);
  auto r = v.rows(1, 2);
  EXPECT_EQ(r.dim(0), 1);
  EXPECT_EQ(r.at({0, 1}), 4.0f);
  EXPECT_TRUE(v.contiguous());
}

TEST(TensorView, StridedViewSelectsAColumn) {
  tensor t{{3, 2}, {0, 1, 2, 3, 4, 5}};
  tensor_view col{t.data() + 1, {3}, {2}};
  EXPECT_FALSE(col.contiguous());
  EXPECT_EQ(col.at({2}), 5.0f);
  EXPECT_THROW((void)col.span(), precondition_error);
}

TEST(TensorView, ReshapeKeepsElementsAndRejectsOtherCounts) {
  tensor t{{2, 3}, {0, 1, 2, 3, 4, 5}};
  auto r = t.view().reshape({3, 2});
  EXPECT_EQ(r.at({2, 1}), 5.0f);
  EXPECT_THROW((void)t.view().reshape({4}), precondition_error);
  EXPECT_THROW((void)t.view().at({2, 0}), precondition_error);
}

}  // namespace
}  // namespace flexsp::kernels
