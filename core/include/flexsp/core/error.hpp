#pragma once
/// \file
/// The project's error policy.
///
/// - Functions at module boundaries return `flexsp::expected<T>` (marked [[nodiscard]]).
///   An `error` carries a kind that tells the caller what to do next, a human message
///   naming what was wrong and where, and optional context frames added on the way up.
/// - Our own bugs are caught by `FLEXSP_ASSERT` (aborts with the values involved);
///   a caller's broken precondition by `FLEXSP_EXPECTS` (throws `precondition_error`, which
///   the actor runtime turns into a failed request instead of a dead process). See check.hpp.
/// - Calls into C libraries and the OS go through the check macros of check.hpp, which
///   log the failing call with file:line and produce an `error`.
/// - Bad input from users or the network is never an assertion: it is an `error` of kind
///   `invalid_argument` (or `protocol`) with a message that names the field or byte offset.

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>

#include <fmt/format.h>

namespace flexsp {

/// What went wrong, phrased as what the caller should do about it.
enum class errc : std::uint8_t {
  failed,            ///< Generic failure; retrying the same thing will fail again.
  invalid_argument,  ///< The caller's input is wrong; the message names the field.
  not_found,         ///< A named thing (file, actor, key, node) does not exist.
  timeout,           ///< A deadline passed; the operation may be retried.
  overloaded,        ///< A queue or resource is full; back off and retry.
  disconnected,      ///< A peer or connection is gone; reconnect or re-plan.
  cancelled,         ///< The operation was aborted on purpose (shutdown, abort, cancel).
  protocol,          ///< A peer sent a malformed or unexpected message.
  io,                ///< The OS refused an I/O operation (see the message for errno).
  unimplemented,     ///< Not compiled in or not supported here; fall back.
};

/// Stable lower-case name of an error kind (`"timeout"`, `"invalid_argument"`, ...).
std::string_view to_string(errc kind) noexcept;

/// A failure: its kind, a message, and the context frames added while it propagated.
class error {
public:
  error(errc kind, std::string message) : kind_{kind}, message_{std::move(message)} {}

  errc kind() const noexcept { return kind_; }
  const std::string& message() const noexcept { return message_; }

  /// Prefixes a context frame ("while loading profile x.json: ...") and returns *this.
  error& with_context(std::string_view frame);

  /// "<kind>: <message>"
  std::string to_string() const;

  friend bool operator==(const error&, const error&) = default;

private:
  errc kind_;
  std::string message_;
};

/// Wraps an error to construct a failed `expected` (mirrors C++23 std::unexpected).
template <class E>
struct unexpected {
  E value;
};
template <class E>
unexpected(E) -> unexpected<E>;

/// Builds a failed result: `return make_error(errc::invalid_argument, "degree {} > {}", d, n);`
template <class... Args>
unexpected<error> make_error(errc kind, fmt::format_string<Args...> format, Args&&... args) {
  return unexpected<error>{error{kind, fmt::format(format, std::forward<Args>(args)...)}};
}

/// Thrown by `expected::value()` on a failed result.
class bad_expected_access : public std::runtime_error {
public:
  explicit bad_expected_access(flexsp::error e) : std::runtime_error{e.to_string()}, error_{std::move(e)} {}
  const flexsp::error& error() const noexcept { return error_; }

private:
  flexsp::error error_;
};

/// A value of type T or an `error`. A small subset of C++23 std::expected.
template <class T>
class [[nodiscard]] expected {
public:
  using value_type = T;

  template <class U = T>
    requires std::is_constructible_v<T, U&&> && (!std::is_same_v<std::remove_cvref_t<U>, expected>)
  expected(U&& value) : storage_{std::in_place_index<0>, std::forward<U>(value)} {}
  expected(unexpected<flexsp::error> e) : storage_{std::in_place_index<1>, std::move(e.value)} {}

  bool has_value() const noexcept { return storage_.index() == 0; }
  explicit operator bool() const noexcept { return has_value(); }

  T& value() & { check(); return std::get<0>(storage_); }
  const T& value() const& { check(); return std::get<0>(storage_); }
  T&& value() && { check(); return std::get<0>(std::move(storage_)); }

  T& operator*() & noexcept { return *std::get_if<0>(&storage_); }
  const T& operator*() const& noexcept { return *std::get_if<0>(&storage_); }
  T&& operator*() && noexcept { return std::move(*std::get_if<0>(&storage_)); }
  T* operator->() noexcept { return std::get_if<0>(&storage_); }
  const T* operator->() const noexcept { return std::get_if<0>(&storage_); }

  /// The error; only valid when !has_value().
  const flexsp::error& error() const& noexcept { return *std::get_if<1>(&storage_); }
  flexsp::error&& error() && noexcept { return std::move(*std::get_if<1>(&storage_)); }

  template <class U>
  T value_or(U&& fallback) const& {
    return has_value() ? **this : static_cast<T>(std::forward<U>(fallback));
  }

private:
  void check() const {
    if (!has_value()) throw bad_expected_access{*std::get_if<1>(&storage_)};
  }
  std::variant<T, flexsp::error> storage_;
};

/// Success or an `error`, with no value.
template <>
class [[nodiscard]] expected<void> {
public:
  using value_type = void;
  expected() = default;
  expected(unexpected<flexsp::error> e) : error_{std::move(e.value)} {}

  bool has_value() const noexcept { return !error_.has_value(); }
  explicit operator bool() const noexcept { return has_value(); }
  void value() const {
    if (error_) throw bad_expected_access{*error_};
  }
  const flexsp::error& error() const& noexcept { return *error_; }
  flexsp::error&& error() && noexcept { return std::move(*error_); }

private:
  std::optional<flexsp::error> error_;
};

}  // namespace flexsp

#define FLEXSP_DETAIL_CONCAT2(a, b) a##b
#define FLEXSP_DETAIL_CONCAT(a, b) FLEXSP_DETAIL_CONCAT2(a, b)

/// Propagates a failed `expected` from the enclosing function (which returns an `expected`).
#define FLEXSP_TRY(expr)                                                             \
  do {                                                                               \
    auto&& flexsp_try_result_ = (expr);                                              \
    if (!flexsp_try_result_)                                                         \
      return ::flexsp::unexpected<::flexsp::error>{std::move(flexsp_try_result_).error()}; \
  } while (0)

/// `FLEXSP_TRY_ASSIGN(auto x, f());` declares/assigns x from f()'s value or returns its error.
#define FLEXSP_TRY_ASSIGN(lhs, expr)                                                  \
  auto FLEXSP_DETAIL_CONCAT(flexsp_try_, __LINE__) = (expr);                          \
  if (!FLEXSP_DETAIL_CONCAT(flexsp_try_, __LINE__))                                   \
    return ::flexsp::unexpected<::flexsp::error>{                                     \
        std::move(FLEXSP_DETAIL_CONCAT(flexsp_try_, __LINE__)).error()};              \
  lhs = std::move(*FLEXSP_DETAIL_CONCAT(flexsp_try_, __LINE__))

template <>
struct fmt::formatter<flexsp::error> : fmt::formatter<std::string_view> {
  template <class Ctx>
  auto format(const flexsp::error& e, Ctx& ctx) const {
    return fmt::formatter<std::string_view>::format(e.to_string(), ctx);
  }
};
