# Every third-party dependency is found here, once. All are Debian packages except the
# CUDA toolkit with NCCL (under /usr/local/cuda).

find_package(Threads REQUIRED)
find_package(PkgConfig REQUIRED)

# Asio (standalone, header-only): no CMake config in Debian, so find the header.
find_path(ASIO_INCLUDE_DIR asio.hpp REQUIRED)
if(NOT TARGET flexsp_dep::asio)
  add_library(flexsp_dep::asio INTERFACE IMPORTED)
  target_include_directories(flexsp_dep::asio SYSTEM INTERFACE ${ASIO_INCLUDE_DIR})
  target_compile_definitions(flexsp_dep::asio INTERFACE ASIO_STANDALONE ASIO_NO_DEPRECATED)
  target_link_libraries(flexsp_dep::asio INTERFACE Threads::Threads)
endif()

find_package(CapnProto CONFIG REQUIRED)          # CapnProto::capnp, capnp_generate_cpp()
find_package(spdlog CONFIG REQUIRED)             # spdlog::spdlog (with fmt)
find_package(nlohmann_json CONFIG REQUIRED)      # nlohmann_json::nlohmann_json
find_package(CLI11 CONFIG REQUIRED)              # CLI11::CLI11
find_package(Gloo CONFIG REQUIRED)               # gloo
pkg_check_modules(CBC REQUIRED IMPORTED_TARGET cbc)   # PkgConfig::CBC
find_package(ZLIB REQUIRED)                      # ZLIB::ZLIB (gzip datasets)
pkg_check_modules(ZSTD REQUIRED IMPORTED_TARGET libzstd)  # PkgConfig::ZSTD (zstd-compressed text)
pkg_check_modules(SENTENCEPIECE REQUIRED IMPORTED_TARGET sentencepiece)  # PkgConfig::SENTENCEPIECE (tokenizers)
pkg_check_modules(HTTPLIB REQUIRED IMPORTED_TARGET cpp-httplib)  # PkgConfig::HTTPLIB (the head's HTTP endpoint)
pkg_check_modules(HIREDIS REQUIRED IMPORTED_TARGET hiredis)  # PkgConfig::HIREDIS (the Redis state store)

set(BLA_VENDOR OpenBLAS)
find_package(BLAS REQUIRED)
find_path(OPENBLAS_CBLAS_INCLUDE_DIR cblas.h PATH_SUFFIXES openblas openblas-pthread REQUIRED)
if(NOT TARGET flexsp_dep::openblas)
  add_library(flexsp_dep::openblas INTERFACE IMPORTED)
  target_include_directories(flexsp_dep::openblas SYSTEM INTERFACE ${OPENBLAS_CBLAS_INCLUDE_DIR})
  target_link_libraries(flexsp_dep::openblas INTERFACE ${BLAS_LIBRARIES})
endif()

if(FLEXSP_BUILD_TESTS OR FLEXSP_BUILD_BENCHMARKS)
  find_package(GTest REQUIRED)
  include(GoogleTest)
endif()
if(FLEXSP_BUILD_BENCHMARKS)
  find_package(benchmark CONFIG REQUIRED)
  find_package(CAF COMPONENTS core io QUIET)    # side-by-side runtime benchmarks only
  if(NOT CAF_FOUND)
    find_library(CAF_CORE_LIBRARY caf_core)
    find_library(CAF_IO_LIBRARY caf_io)
    find_path(CAF_INCLUDE_DIR caf/all.hpp)
    if(CAF_CORE_LIBRARY AND CAF_IO_LIBRARY AND CAF_INCLUDE_DIR)
      set(CAF_FOUND ON)
      add_library(flexsp_dep::caf INTERFACE IMPORTED)
      target_include_directories(flexsp_dep::caf SYSTEM INTERFACE ${CAF_INCLUDE_DIR})
      target_link_libraries(flexsp_dep::caf INTERFACE ${CAF_CORE_LIBRARY} ${CAF_IO_LIBRARY} Threads::Threads)
    endif()
  endif()
  message(STATUS "flexsp: CAF for side-by-side benchmarks: ${CAF_FOUND}")
endif()

if(FLEXSP_HAVE_CUDA)
  find_package(CUDAToolkit REQUIRED)             # CUDA::cudart, CUDA::cublas, CUDA::cublasLt
  find_path(NCCL_INCLUDE_DIR nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS} /usr/local/cuda/include)
  find_library(NCCL_LIBRARY nccl HINTS ${CUDAToolkit_LIBRARY_DIR} /usr/local/cuda/lib64)
  if(NCCL_INCLUDE_DIR AND NCCL_LIBRARY)
    add_library(flexsp_dep::nccl INTERFACE IMPORTED)
    target_include_directories(flexsp_dep::nccl SYSTEM INTERFACE ${NCCL_INCLUDE_DIR})
    target_link_libraries(flexsp_dep::nccl INTERFACE ${NCCL_LIBRARY})
    set(FLEXSP_HAVE_NCCL ON)
  else()
    set(FLEXSP_HAVE_NCCL OFF)
    message(STATUS "flexsp: NCCL not found; the NCCL collective backend is not built")
  endif()
endif()
