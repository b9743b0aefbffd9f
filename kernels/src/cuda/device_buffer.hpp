#pragma once
// RAII device allocation.
#include <cstddef>
#include <utility>

#include <cuda_runtime_api.h>

#include "cuda_check.hpp"

namespace flexsp::kernels::cuda {

/// Owns `count` elements of T in device memory; freed on destruction.
template <class T>
class device_buffer {
public:
  device_buffer() = default;
  static expected<device_buffer> allocate(std::size_t count) {
    device_buffer b;
    void* ptr = nullptr;
    if (count > 0) FLEXSP_CUDA_CHECK(::cudaMalloc(&ptr, count * sizeof(T)));
    b.ptr_ = static_cast<T*>(ptr);
    b.count_ = count;
    return b;
  }
  device_buffer(device_buffer&& other) noexcept
      : ptr_{std::exchange(other.ptr_, nullptr)}, count_{std::exchange(other.count_, 0)} {}
  device_buffer& operator=(device_buffer&& other) noexcept {
    if (this != &other) {
      reset();
      ptr_ = std::exchange(other.ptr_, nullptr);
      count_ = std::exchange(other.count_, 0);
    }
    return *this;
  }
  device_buffer(const device_buffer&) = delete;
  device_buffer& operator=(const device_buffer&) = delete;
  ~device_buffer() { reset(); }

  T* data() const noexcept { return ptr_; }
  std::size_t size() const noexcept { return count_; }

private:
  void reset() noexcept {
    if (ptr_ != nullptr) ::cudaFree(ptr_);  // errors on free are unrecoverable and ignored
    ptr_ = nullptr;
    count_ = 0;
  }
  T* ptr_ = nullptr;
  std::size_t count_ = 0;
};

}  // namespace flexsp::kernels::cuda
