#pragma once
// cuBLAS and NCCL are loaded at run time (dlopen) rather than linked: the binaries then start
// on machines where these libraries are missing or come in another major version (PyTorch's
// wheels carry libcublas.so.12 and libnccl.so.2), and report the GPU path as unavailable
// instead of failing to load. Only the entry points used here are resolved.
#include <string>

#include <cublas_api.h>
#include <nccl.h>

#include "flexsp/core/error.hpp"

namespace flexsp::kernels::cuda {

struct cublas_api {
  cublasStatus_t (*create)(cublasHandle_t*);
  cublasStatus_t (*destroy)(cublasHandle_t);
  cublasStatus_t (*set_stream)(cublasHandle_t, cudaStream_t);
  cublasStatus_t (*set_math_mode)(cublasHandle_t, cublasMath_t);
  cublasStatus_t (*get_version)(cublasHandle_t, int*);
  cublasStatus_t (*gemm_ex)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const void*,
                            const void*, cudaDataType, int, const void*, cudaDataType, int, const void*, void*,
                            cudaDataType, int, cublasComputeType_t, cublasGemmAlgo_t);
  std::string library;  ///< the file that was loaded
};

/// NCCL version the code needs at run time: non-blocking ncclCommInitRankConfig with
/// ncclConfig_t fields up to splitShare, ncclCommFinalize, ncclCommGetAsyncError (2.18.0).
inline constexpr int kNcclMinVersion = 21800;

struct nccl_api {
  ncclResult_t (*get_version)(int*);
  ncclResult_t (*get_unique_id)(ncclUniqueId*);
  ncclResult_t (*comm_init_rank_config)(ncclComm_t*, int, ncclUniqueId, int, ncclConfig_t*);
  ncclResult_t (*comm_finalize)(ncclComm_t);
  ncclResult_t (*comm_destroy)(ncclComm_t);
  ncclResult_t (*comm_abort)(ncclComm_t);
  ncclResult_t (*comm_get_async_error)(ncclComm_t, ncclResult_t*);
  const char* (*get_last_error)(ncclComm_t);
  ncclResult_t (*all_reduce)(const void*, void*, size_t, ncclDataType_t, ncclRedOp_t, ncclComm_t, cudaStream_t);
  ncclResult_t (*all_gather)(const void*, void*, size_t, ncclDataType_t, ncclComm_t, cudaStream_t);
  ncclResult_t (*reduce_scatter)(const void*, void*, size_t, ncclDataType_t, ncclRedOp_t, ncclComm_t, cudaStream_t);
  ncclResult_t (*broadcast)(const void*, void*, size_t, ncclDataType_t, int, ncclComm_t, cudaStream_t);
  ncclResult_t (*send)(const void*, size_t, ncclDataType_t, int, ncclComm_t, cudaStream_t);
  ncclResult_t (*recv)(void*, size_t, ncclDataType_t, int, ncclComm_t, cudaStream_t);
  ncclResult_t (*group_start)();
  ncclResult_t (*group_end)();
  int version = 0;      ///< NCCL_VERSION_CODE of the loaded library (e.g. 22809)
  std::string library;  ///< the file that was loaded
};

/// Loads cuBLAS on first use (cached for the process: dlopen handles are process-wide anyway).
/// errc::unimplemented naming the files tried and dlerror().
expected<const cublas_api*> load_cublas();
/// Loads NCCL on first use. errc::unimplemented when missing or older than kNcclMinVersion.
expected<const nccl_api*> load_nccl();

}  // namespace flexsp::kernels::cuda
