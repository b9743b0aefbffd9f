#pragma once
// Entry points of the CUDA target, called only from cuda_backend.cpp.
#include <memory>
#include <span>
#include <string>

#include "flexsp/kernels/cuda_runtime.hpp"
#include "flexsp/kernels/gpu.hpp"
#include "flexsp/kernels/nccl_collectives.hpp"

namespace flexsp::kernels::cuda {
cuda_status query();
expected<void> axpy(float a, std::span<const float> x, std::span<float> y);
expected<std::unique_ptr<gpu::device>> open_device(int index);
nccl_status query_nccl();
expected<std::unique_ptr<communicator>> make_nccl_communicator(rendezvous_store& store, std::string group_key, int rank,
                                                               int size, int cuda_device, const nccl_options& options);
}  // namespace flexsp::kernels::cuda
