#pragma once
// Check macros for the CUDA runtime, cuBLAS and NCCL, built on FLEXSP_CHECK_C.
#include <cuda_runtime_api.h>

#include "flexsp/core/check.hpp"

#define FLEXSP_CUDA_CHECK(call) FLEXSP_CHECK_C("cuda", cuda_rc_, call, cuda_rc_ == cudaSuccess, cuda_rc_, ::cudaGetErrorString(cuda_rc_))
