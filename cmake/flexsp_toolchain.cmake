# Compiler launcher, warnings, sanitizers, and the CUDA switch.

find_program(FLEXSP_CCACHE ccache)
if(FLEXSP_CCACHE)
  set(CMAKE_C_COMPILER_LAUNCHER ${FLEXSP_CCACHE})
  set(CMAKE_CXX_COMPILER_LAUNCHER ${FLEXSP_CCACHE})
  set(CMAKE_CUDA_COMPILER_LAUNCHER ${FLEXSP_CCACHE})
endif()

# Warnings apply to our C++ only (never to nvcc's host passes or to third-party headers,
# which come in as SYSTEM includes through imported targets).
set(FLEXSP_CXX_WARNINGS -Wall -Wextra)
if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU" AND CMAKE_CXX_COMPILER_VERSION VERSION_GREATER_EQUAL 12
   AND CMAKE_CXX_COMPILER_VERSION VERSION_LESS 13)
  # gcc 12 reports impossible overlaps in inlined std::string copies at -O3 (gcc bug 105329),
  # which would fail -Werror Release builds on code that is fine.
  list(APPEND FLEXSP_CXX_WARNINGS -Wno-restrict)
endif()
if(FLEXSP_WERROR)
  list(APPEND FLEXSP_CXX_WARNINGS -Werror)
endif()

set(FLEXSP_SANITIZER_FLAGS "")
if(FLEXSP_SANITIZE_THREAD)
  set(FLEXSP_SANITIZER_FLAGS -fsanitize=thread)
elseif(FLEXSP_SANITIZE_ADDRESS)
  set(FLEXSP_SANITIZER_FLAGS -fsanitize=address,undefined -fno-omit-frame-pointer)
endif()
if(FLEXSP_SANITIZER_FLAGS)
  foreach(flag IN LISTS FLEXSP_SANITIZER_FLAGS)
    add_compile_options($<$<COMPILE_LANGUAGE:CXX>:${flag}>)
  endforeach()
  if(FLEXSP_SANITIZE_THREAD AND CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
    # gcc warns that TSan cannot see std::atomic_thread_fence (used inside Asio); the warning
    # is about the tool's coverage, not our code, and would otherwise fail -Werror builds.
    add_compile_options($<$<COMPILE_LANGUAGE:CXX>:-Wno-tsan>)
  endif()
  add_link_options(${FLEXSP_SANITIZER_FLAGS})
endif()

# CUDA: AUTO turns on when a CUDA compiler is found.
set(FLEXSP_HAVE_CUDA OFF)
if(NOT FLEXSP_ENABLE_CUDA STREQUAL "OFF")
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      set(CMAKE_CUDA_ARCHITECTURES 80 90)
    endif()
    enable_language(CUDA)
    # CMake 3.25 does not know nvcc's C++20 flag (nvcc >= 12 accepts it); teach it.
    set(CMAKE_CUDA20_STANDARD_COMPILE_OPTION "-std=c++20")
    set(CMAKE_CUDA20_EXTENSION_COMPILE_OPTION "-std=c++20")
    set(CMAKE_CUDA_STANDARD 20)
    set(FLEXSP_HAVE_CUDA ON)
  elseif(FLEXSP_ENABLE_CUDA STREQUAL "ON")
    message(FATAL_ERROR "FLEXSP_ENABLE_CUDA=ON but no CUDA compiler was found (set CMAKE_CUDA_COMPILER)")
  else()
    message(STATUS "flexsp: no CUDA compiler found; building the CPU backend only")
  endif()
endif()
