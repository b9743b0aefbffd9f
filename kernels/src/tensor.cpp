#include "flexsp/kernels/tensor.hpp"

#include <algorithm>
#include <utility>

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace flexsp::kernels {

std::int64_t numel_of(const shape_t& shape) noexcept {
  std::int64_t n = 1;
  for (auto e : shape) n *= e;
  return n;
}

std::string to_string(const shape_t& shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

namespace {
shape_t contiguous_strides(const shape_t& shape) {
  shape_t strides(shape.size());
  std::int64_t s = 1;
  for (std::size_t i = shape.size(); i-- > 0;) {
    strides[i] = s;
    s *= shape[i];
  }
  return strides;
}
}  // namespace

tensor_view::tensor_view(float* data, shape_t shape)
    : data_{data}, shape_{std::move(shape)}, strides_{contiguous_strides(shape_)} {
  for (auto e : shape_) FLEXSP_EXPECTS(e >= 0, "negative extent in shape {}", to_string(shape_));
}

tensor_view::tensor_view(float* data, shape_t shape, shape_t strides)
    : data_{data}, shape_{std::move(shape)}, strides_{std::move(strides)} {
  FLEXSP_EXPECTS(shape_.size() == strides_.size(), "shape {} and strides {} differ in rank", to_string(shape_),
                 to_string(strides_));
}

bool tensor_view::contiguous() const noexcept { return strides_ == contiguous_strides(shape_); }

std::span<float> tensor_view::span() const {
  FLEXSP_EXPECTS(contiguous(), "span() of a strided view {} / {}", to_string(shape_), to_string(strides_));
  return {data_, static_cast<std::size_t>(numel())};
}

float& tensor_view::at(std::initializer_list<std::int64_t> index) const {
  FLEXSP_EXPECTS(index.size() == shape_.size(), "index of rank {} into shape {}", index.size(), to_string(shape_));
  std::int64_t off = 0;
  std::size_t d = 0;
  for (auto i : index) {
    FLEXSP_EXPECTS(i >= 0 && i < shape_[d], "index {} out of range in dim {} of {}", i, d, to_string(shape_));
    off += i * strides_[d++];
  }
  return data_[off];
}

tensor_view tensor_view::operator[](std::int64_t i) const {
  FLEXSP_EXPECTS(!shape_.empty() && i >= 0 && i < shape_[0], "row {} of shape {}", i, to_string(shape_));
  return tensor_view{data_ + i * strides_[0], shape_t(shape_.begin() + 1, shape_.end()),
                     shape_t(strides_.begin() + 1, strides_.end())};
}

tensor_view tensor_view::rows(std::int64_t begin, std::int64_t end) const {
  FLEXSP_EXPECTS(!shape_.empty() && 0 <= begin && begin <= end && end <= shape_[0], "rows [{}, {}) of shape {}", begin,
                 end, to_string(shape_));
  shape_t s = shape_;
  s[0] = end - begin;
  return tensor_view{data_ + begin * strides_[0], std::move(s), strides_};
}

tensor_view tensor_view::reshape(shape_t shape) const {
  FLEXSP_EXPECTS(contiguous() && numel_of(shape) == numel(), "reshape {} to {}", to_string(shape_), to_string(shape));
  return tensor_view{data_, std::move(shape)};
}

tensor::tensor(shape_t shape) : shape_{std::move(shape)} {
  for (auto e : shape_) FLEXSP_EXPECTS(e >= 0, "negative extent in shape {}", to_string(shape_));
  values_.assign(static_cast<std::size_t>(numel_of(shape_)), 0.0f);
}

tensor::tensor(shape_t shape, std::vector<float> values) : shape_{std::move(shape)}, values_{std::move(values)} {
  FLEXSP_EXPECTS(numel_of(shape_) == static_cast<std::int64_t>(values_.size()), "shape {} with {} values",
                 to_string(shape_), values_.size());
}

void tensor::resize(shape_t shape) {
  const auto n = static_cast<std::size_t>(numel_of(shape));
  shape_ = std::move(shape);
  if (n != values_.size()) values_.assign(n, 0.0f);
}

void tensor::fill(float value) noexcept { std::fill(values_.begin(), values_.end(), value); }

}  // namespace flexsp::kernels
