#pragma once
/// \file
/// Which compute backend a device actor uses: CUDA when this build has it and a GPU is
/// present, the CPU otherwise. One call at start-up; the choice and its reason go to the log
/// and to `flexsp status` / `flexsp info`.

#include <string>
#include <string_view>

#include "flexsp/core/error.hpp"

namespace flexsp::kernels {

/// What the user asked for (`--backend auto|cpu|cuda`).
enum class backend_request : unsigned char { automatic, cpu, cuda };

/// The backend a device runs.
enum class backend_kind : unsigned char { cpu, cuda };

/// "cpu" / "cuda"
std::string_view to_string(backend_kind kind) noexcept;

/// Parses "auto", "cpu" or "cuda" (errc::invalid_argument names the bad value).
expected<backend_request> parse_backend_request(std::string_view text);

/// The chosen backend and why.
struct backend_choice {
  backend_kind kind = backend_kind::cpu;
  int gpu_count = 0;     ///< visible CUDA devices (0 on the CPU path)
  /// One line for logs and status, e.g. "cuda: 8 x NVIDIA H100 80GB HBM3, CUDA runtime 13.0,
  /// driver 13.0, NCCL 2.28.9" or "cpu: no GPU (CUDA backend not compiled in)".
  std::string reason;
};

/// Picks the backend for `requested`: automatic -> CUDA when compiled in, a GPU is visible and
/// cuBLAS loads, otherwise CPU (never fails); cpu -> CPU; cuda -> CUDA or errc::unimplemented
/// (not compiled in / cuBLAS missing) or errc::not_found (no GPU), with the reason.
expected<backend_choice> select_device_backend(backend_request requested);

}  // namespace flexsp::kernels
