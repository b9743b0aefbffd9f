#pragma once
/// \file
/// The CUDA device (device.hpp's interface on a GPU: device memory, one stream, the CUDA
/// kernels and cuBLAS). This header is plain C++ and compiles in a build without CUDA;
/// `open_device` then fails with errc::unimplemented.

#include <memory>

#include "flexsp/kernels/device.hpp"

namespace flexsp::kernels::gpu {

using kernels::attention_backward_args;
using kernels::attention_forward_args;
using kernels::buffer;
using kernels::device;
using kernels::dtype;
using kernels::gemm_args;
using kernels::gemm_math;
using kernels::kMaxAttentionHeadDim;

/// Opens CUDA device `index`: creates its stream and cuBLAS handle. errc::unimplemented when
/// CUDA is not compiled in or cuBLAS cannot be loaded; errc::not_found when there is no such
/// GPU (the message says why: no driver, no device).
expected<std::unique_ptr<device>> open_device(int index);

}  // namespace flexsp::kernels::gpu
