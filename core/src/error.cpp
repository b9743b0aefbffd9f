#include "flexsp/core/error.hpp"

#include <cerrno>
#include <cstdio>
#include <cstdlib>

#include "flexsp/core/check.hpp"
#include "flexsp/core/log.hpp"

namespace flexsp {

std::string_view to_string(errc kind) noexcept {
  switch (kind) {
    case errc::failed: return "failed";
    case errc::invalid_argument: return "invalid_argument";
    case errc::not_found: return "not_found";
    case errc::timeout: return "timeout";
    case errc::overloaded: return "overloaded";
    case errc::disconnected: return "disconnected";
    case errc::cancelled: return "cancelled";
    case errc::protocol: return "protocol";
    case errc::io: return "io";
    case errc::unimplemented: return "unimplemented";
  }
  return "unknown";
}

error& error::with_context(std::string_view frame) {
  message_ = fmt::format("{}: {}", frame, message_);
  return *this;
}

std::string error::to_string() const { return fmt::format("{}: {}", flexsp::to_string(kind_), message_); }

namespace detail {

void assert_fail(const char* expr, const char* file, int line, std::string_view msg) {
  // Write to stderr directly as well: the logger itself may be what is broken.
  std::fprintf(stderr, "flexsp: internal error: assertion `%s` failed at %s:%d%s%.*s\n", expr, file, line,
               msg.empty() ? "" : ": ", static_cast<int>(msg.size()), msg.data());
  std::fflush(stderr);
  std::abort();
}

void expects_fail(const char* expr, const char* file, int line, std::string_view msg) {
  throw precondition_error{
      fmt::format("precondition `{}` violated at {}:{}{}{}", expr, file, line, msg.empty() ? "" : ": ", msg)};
}

error c_call_failed(std::string_view lib, const char* call_text, long code, std::string_view description,
                    const char* file, int line, errc kind) {
  auto text = fmt::format("{} call failed: {} -> {} ({}) at {}:{}", lib, call_text, code, description, file, line);
  log::get("core")->error("{}", text);
  return error{kind, std::move(text)};
}

errc errno_kind(int err) noexcept {
  switch (err) {
    case ENOENT: return errc::not_found;
    case ETIMEDOUT: return errc::timeout;
    case EAGAIN: return errc::overloaded;
    case ECONNREFUSED:
    case ECONNRESET:
    case EPIPE:
    case ENOTCONN:
    case EHOSTUNREACH:
    case ENETUNREACH: return errc::disconnected;
    case EINVAL: return errc::invalid_argument;
    case EINTR:
    case ECANCELED: return errc::cancelled;
    default: return errc::io;
  }
}

}  // namespace detail
}  // namespace flexsp
