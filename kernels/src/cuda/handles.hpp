#pragma once
// RAII owners of CUDA streams and events (device memory: device_buffer.hpp).
#include <utility>

#include <cuda_runtime_api.h>

#include "cuda_check.hpp"

namespace flexsp::kernels::cuda {

/// A non-blocking stream of the current device; destroyed with its owner.
class stream {
public:
  stream() = default;
  static expected<stream> create() {
    stream s;
    FLEXSP_CUDA_CHECK(::cudaStreamCreateWithFlags(&s.handle_, cudaStreamNonBlocking));
    return s;
  }
  stream(stream&& other) noexcept : handle_{std::exchange(other.handle_, nullptr)} {}
  stream& operator=(stream&& other) noexcept {
    if (this != &other) {
      reset();
      handle_ = std::exchange(other.handle_, nullptr);
    }
    return *this;
  }
  stream(const stream&) = delete;
  stream& operator=(const stream&) = delete;
  ~stream() { reset(); }
  cudaStream_t get() const noexcept { return handle_; }

private:
  void reset() noexcept {
    if (handle_ != nullptr) ::cudaStreamDestroy(handle_);  // nothing useful to do on failure
    handle_ = nullptr;
  }
  cudaStream_t handle_ = nullptr;
};

/// A CUDA event with timing enabled.
class event {
public:
  event() = default;
  static expected<event> create() {
    event e;
    FLEXSP_CUDA_CHECK(::cudaEventCreate(&e.handle_));
    return e;
  }
  event(event&& other) noexcept : handle_{std::exchange(other.handle_, nullptr)} {}
  event& operator=(event&& other) noexcept {
    if (this != &other) {
      reset();
      handle_ = std::exchange(other.handle_, nullptr);
    }
    return *this;
  }
  event(const event&) = delete;
  event& operator=(const event&) = delete;
  ~event() { reset(); }
  cudaEvent_t get() const noexcept { return handle_; }

private:
  void reset() noexcept {
    if (handle_ != nullptr) ::cudaEventDestroy(handle_);
    handle_ = nullptr;
  }
  cudaEvent_t handle_ = nullptr;
};

}  // namespace flexsp::kernels::cuda
