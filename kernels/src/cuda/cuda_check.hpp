#pragma once
// Check macros for the CUDA runtime, cuBLAS and NCCL, built on FLEXSP_CHECK_C: a failed call
// is logged with its text and file:line and returned as an error from the enclosing function
// (which returns flexsp::expected).
#include <cuda_runtime_api.h>

#include "flexsp/core/check.hpp"

namespace flexsp::kernels::cuda {
/// Names of cuBLAS and NCCL status codes (ours, so that they work without the library loaded).
const char* cublas_status_name(int status) noexcept;
const char* nccl_result_name(int result) noexcept;
}  // namespace flexsp::kernels::cuda

#define FLEXSP_CUDA_CHECK(call) FLEXSP_CHECK_C("cuda", cuda_rc_, call, cuda_rc_ == cudaSuccess, cuda_rc_, ::cudaGetErrorString(cuda_rc_))

#define FLEXSP_CUBLAS_CHECK(call)                                                                              \
  FLEXSP_CHECK_C("cublas", cublas_rc_, call, static_cast<int>(cublas_rc_) == 0, static_cast<int>(cublas_rc_), \
                 ::flexsp::kernels::cuda::cublas_status_name(static_cast<int>(cublas_rc_)))

// ncclInProgress (7) is not a failure for non-blocking communicators; callers that issue
// work on one poll ncclCommGetAsyncError afterwards.
#define FLEXSP_NCCL_CHECK(call)                                                                                 \
  FLEXSP_CHECK_C("nccl", nccl_rc_, call, static_cast<int>(nccl_rc_) == 0 || static_cast<int>(nccl_rc_) == 7,  \
                 static_cast<int>(nccl_rc_), ::flexsp::kernels::cuda::nccl_result_name(static_cast<int>(nccl_rc_)))
