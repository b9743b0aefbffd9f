#pragma once
/// \file
/// A small fp32 tensor for the CPU device: an owning, contiguous `tensor` and a non-owning
/// `tensor_view` (pointer, shape and element strides). Kernels take views; models own tensors.
/// Shapes are in elements; the last dimension is the fastest varying one.

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <span>
#include <string>
#include <vector>

#include "flexsp/core/check.hpp"

namespace flexsp::kernels {

/// A tensor shape: up to any rank, each extent >= 0.
using shape_t = std::vector<std::int64_t>;

/// Number of elements of a shape (1 for rank 0).
std::int64_t numel_of(const shape_t& shape) noexcept;

/// "[2, 3, 4]"
std::string to_string(const shape_t& shape);

/// A non-owning view of fp32 elements with a shape and element strides. Views never outlive
/// the storage they point into; copying a view copies the pointer, not the data.
class tensor_view {
public:
  tensor_view() = default;
  /// Contiguous view of `shape` at `data`.
  tensor_view(float* data, shape_t shape);
  /// Strided view; `strides` are in elements and have the rank of `shape`.
  tensor_view(float* data, shape_t shape, shape_t strides);

  float* data() const noexcept { return data_; }
  const shape_t& shape() const noexcept { return shape_; }
  const shape_t& strides() const noexcept { return strides_; }
  std::size_t rank() const noexcept { return shape_.size(); }
  std::int64_t dim(std::size_t i) const { FLEXSP_EXPECTS(i < shape_.size(), "dim {} of rank {}", i, shape_.size()); return shape_[i]; }
  std::int64_t numel() const noexcept { return numel_of(shape_); }
  /// True when the elements are densely packed in row-major order.
  bool contiguous() const noexcept;
  /// The elements of a contiguous view. Precondition: contiguous().
  std::span<float> span() const;
  /// Element at a multi-index (bounds-checked precondition).
  float& at(std::initializer_list<std::int64_t> index) const;
  /// The sub-view of index `i` along dimension 0 (rank drops by one).
  tensor_view operator[](std::int64_t i) const;
  /// Rows [begin, end) along dimension 0.
  tensor_view rows(std::int64_t begin, std::int64_t end) const;
  /// Reinterprets a contiguous view with another shape of the same element count.
  tensor_view reshape(shape_t shape) const;

private:
  float* data_ = nullptr;
  shape_t shape_;
  shape_t strides_;
};

/// An owning, contiguous, zero-initialised fp32 tensor.
class tensor {
public:
  tensor() = default;
  explicit tensor(shape_t shape);
  tensor(shape_t shape, std::vector<float> values);

  float* data() noexcept { return values_.data(); }
  const float* data() const noexcept { return values_.data(); }
  const shape_t& shape() const noexcept { return shape_; }
  std::int64_t dim(std::size_t i) const { FLEXSP_EXPECTS(i < shape_.size(), "dim {} of rank {}", i, shape_.size()); return shape_[i]; }
  std::int64_t numel() const noexcept { return static_cast<std::int64_t>(values_.size()); }
  std::span<float> span() noexcept { return values_; }
  std::span<const float> span() const noexcept { return values_; }
  tensor_view view() noexcept { return tensor_view{values_.data(), shape_}; }
  /// Changes the shape, reallocating and zero-filling when the element count changes.
  void resize(shape_t shape);
  void fill(float value) noexcept;

private:
  shape_t shape_;
  std::vector<float> values_;
};

}  // namespace flexsp::kernels
