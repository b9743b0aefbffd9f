#pragma once
/// \file
/// Assertions and check macros for calls into C libraries and the OS.
///
/// Two assertions, with distinct meanings:
/// - `FLEXSP_ASSERT(cond, fmt, args...)`: an invariant of *our own code*. On failure it logs
///   the expression, file:line and the formatted values, then aborts: the process state can no
///   longer be trusted. Use it for bugs, never for input.
/// - `FLEXSP_EXPECTS(cond, fmt, args...)`: a *caller's* precondition (an API used wrongly).
///   On failure it throws `flexsp::precondition_error` carrying the same text, so an actor
///   handler that misuses an API fails that one request instead of the process.
/// The format arguments are optional; give the values involved whenever there are any.
///
/// Check macros (the enclosing function must return `flexsp::expected<...>`):
/// - `FLEXSP_SYSCALL(call)`: a POSIX call that returns -1 and sets errno.
/// - `FLEXSP_CHECK_C(lib, var, call, ok, code, describe)`: binds the call's result to `var`,
///   tests `ok`, and reports `code` and `describe` (expressions of `var`). The building block for library
///   families (`FLEXSP_CUDA_CHECK`, `FLEXSP_NCCL_CHECK` in kernels/ are defined on it).
/// All of them log "lib call failed: <call text> -> <code> (<description>) at file:line"
/// on the "core" logger and return an `error` with the same text.

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>
#include <string_view>

#include "flexsp/core/error.hpp"

namespace flexsp {

/// Thrown by FLEXSP_EXPECTS when a caller breaks a documented precondition.
class precondition_error : public std::invalid_argument {
public:
  using std::invalid_argument::invalid_argument;
};

namespace detail {
[[noreturn]] void assert_fail(const char* expr, const char* file, int line, std::string_view msg = {});
[[noreturn]] void expects_fail(const char* expr, const char* file, int line, std::string_view msg = {});
/// Logs a failed C call and returns the error to propagate.
error c_call_failed(std::string_view lib, const char* call_text, long code, std::string_view description,
                    const char* file, int line, errc kind = errc::failed);
/// Maps an errno value to the error kind a caller can act on.
errc errno_kind(int err) noexcept;
}  // namespace detail
}  // namespace flexsp

#define FLEXSP_ASSERT(cond, ...)                                                          \
  do {                                                                                    \
    if (!(cond)) [[unlikely]]                                                             \
      ::flexsp::detail::assert_fail(#cond, __FILE__, __LINE__ __VA_OPT__(, ::fmt::format(__VA_ARGS__))); \
  } while (0)

#define FLEXSP_EXPECTS(cond, ...)                                                          \
  do {                                                                                     \
    if (!(cond)) [[unlikely]]                                                              \
      ::flexsp::detail::expects_fail(#cond, __FILE__, __LINE__ __VA_OPT__(, ::fmt::format(__VA_ARGS__))); \
  } while (0)

#define FLEXSP_CHECK_C(lib, var, call, ok, code, describe)                                    \
  do {                                                                                        \
    auto&& var = (call);                                                                      \
    if (!(ok)) [[unlikely]]                                                                   \
      return ::flexsp::unexpected<::flexsp::error>{::flexsp::detail::c_call_failed(           \
          lib, #call, static_cast<long>(code), (describe), __FILE__, __LINE__)};              \
  } while (0)

#define FLEXSP_SYSCALL(call)                                                                  \
  do {                                                                                        \
    if ((call) == -1) [[unlikely]] {                                                          \
      const int flexsp_errno_ = errno;                                                        \
      return ::flexsp::unexpected<::flexsp::error>{::flexsp::detail::c_call_failed(           \
          "posix", #call, flexsp_errno_, ::std::strerror(flexsp_errno_), __FILE__, __LINE__,  \
          ::flexsp::detail::errno_kind(flexsp_errno_))};                                      \
    }                                                                                         \
  } while (0)

