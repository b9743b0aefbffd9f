#include "libraries.hpp"

#include <dlfcn.h>

#include <initializer_list>
#include <mutex>

#include "cuda_check.hpp"

namespace flexsp::kernels::cuda {

const char* cublas_status_name(int status) noexcept {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    default: return "unknown cuBLAS status";
  }
}

const char* nccl_result_name(int result) noexcept {
  switch (result) {
    case ncclSuccess: return "ncclSuccess";
    case ncclUnhandledCudaError: return "ncclUnhandledCudaError (a CUDA call inside NCCL failed)";
    case ncclSystemError: return "ncclSystemError (a system call or network operation failed)";
    case ncclInternalError: return "ncclInternalError";
    case ncclInvalidArgument: return "ncclInvalidArgument";
    case ncclInvalidUsage: return "ncclInvalidUsage";
    case ncclRemoteError: return "ncclRemoteError (a peer failed or closed its connection)";
    case ncclInProgress: return "ncclInProgress";
    default: return "unknown NCCL result";
  }
}

namespace {

struct loaded_library {
  void* handle = nullptr;
  std::string name;
  std::string tried;
};

loaded_library open_first(std::initializer_list<const char*> names) {
  loaded_library lib;
  for (const char* name : names) {
    if (void* h = ::dlopen(name, RTLD_NOW | RTLD_LOCAL)) {
      lib.handle = h;
      lib.name = name;
      return lib;
    }
    const char* why = ::dlerror();
    lib.tried += fmt::format("{}{} ({})", lib.tried.empty() ? "" : ", ", name, why ? why : "not found");
  }
  return lib;
}

// Resolves `symbol` into `fn`; collects the names that are missing.
template <class Fn>
void resolve(void* handle, const char* symbol, Fn& fn, std::string& missing) {
  fn = reinterpret_cast<Fn>(::dlsym(handle, symbol));
  if (fn == nullptr) missing += fmt::format("{}{}", missing.empty() ? "" : ", ", symbol);
}

expected<cublas_api> do_load_cublas() {
  const auto lib = open_first({"libcublas.so.13", "libcublas.so.12", "libcublas.so"});
  if (lib.handle == nullptr)
    return make_error(errc::unimplemented, "cuBLAS cannot be loaded: tried {}", lib.tried);
  cublas_api api{};
  std::string missing;
  resolve(lib.handle, "cublasCreate_v2", api.create, missing);
  resolve(lib.handle, "cublasDestroy_v2", api.destroy, missing);
  resolve(lib.handle, "cublasSetStream_v2", api.set_stream, missing);
  resolve(lib.handle, "cublasSetMathMode", api.set_math_mode, missing);
  resolve(lib.handle, "cublasGetVersion_v2", api.get_version, missing);
  resolve(lib.handle, "cublasGemmEx", api.gemm_ex, missing);
  if (!missing.empty())
    return make_error(errc::unimplemented, "{} lacks the symbols {}", lib.name, missing);
  api.library = lib.name;
  return api;
}

expected<nccl_api> do_load_nccl() {
  const auto lib = open_first({"libnccl.so.2", "libnccl.so"});
  if (lib.handle == nullptr) return make_error(errc::unimplemented, "NCCL cannot be loaded: tried {}", lib.tried);
  nccl_api api{};
  std::string missing;
  resolve(lib.handle, "ncclGetVersion", api.get_version, missing);
  resolve(lib.handle, "ncclGetUniqueId", api.get_unique_id, missing);
  resolve(lib.handle, "ncclCommInitRankConfig", api.comm_init_rank_config, missing);
  resolve(lib.handle, "ncclCommFinalize", api.comm_finalize, missing);
  resolve(lib.handle, "ncclCommDestroy", api.comm_destroy, missing);
  resolve(lib.handle, "ncclCommAbort", api.comm_abort, missing);
  resolve(lib.handle, "ncclCommGetAsyncError", api.comm_get_async_error, missing);
  resolve(lib.handle, "ncclGetLastError", api.get_last_error, missing);
  resolve(lib.handle, "ncclAllReduce", api.all_reduce, missing);
  resolve(lib.handle, "ncclAllGather", api.all_gather, missing);
  resolve(lib.handle, "ncclReduceScatter", api.reduce_scatter, missing);
  resolve(lib.handle, "ncclBroadcast", api.broadcast, missing);
  resolve(lib.handle, "ncclSend", api.send, missing);
  resolve(lib.handle, "ncclRecv", api.recv, missing);
  resolve(lib.handle, "ncclGroupStart", api.group_start, missing);
  resolve(lib.handle, "ncclGroupEnd", api.group_end, missing);
  if (!missing.empty())
    return make_error(errc::unimplemented, "{} lacks the symbols {} (NCCL >= {}.{} is required)", lib.name, missing,
                      kNcclMinVersion / 10000, kNcclMinVersion / 100 % 100);
  FLEXSP_NCCL_CHECK(api.get_version(&api.version));
  if (api.version < kNcclMinVersion)
    return make_error(errc::unimplemented, "{} is NCCL {}.{}.{}; this build needs NCCL >= {}.{}", lib.name,
                      api.version / 10000, api.version / 100 % 100, api.version % 100, kNcclMinVersion / 10000,
                      kNcclMinVersion / 100 % 100);
  api.library = lib.name;
  return api;
}

}  // namespace

expected<const cublas_api*> load_cublas() {
  static std::once_flag once;
  static expected<cublas_api> loaded = make_error(errc::failed, "not loaded");
  std::call_once(once, [] { loaded = do_load_cublas(); });
  if (!loaded) return unexpected<error>{loaded.error()};
  return &*loaded;
}

expected<const nccl_api*> load_nccl() {
  static std::once_flag once;
  static expected<nccl_api> loaded = make_error(errc::failed, "not loaded");
  std::call_once(once, [] { loaded = do_load_nccl(); });
  if (!loaded) return unexpected<error>{loaded.error()};
  return &*loaded;
}

}  // namespace flexsp::kernels::cuda
