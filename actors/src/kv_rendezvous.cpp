#include "flexsp/actors/kv_rendezvous.hpp"

#include <algorithm>

namespace flexsp::actors {

namespace {
constexpr std::chrono::milliseconds kSlice{100};
}

expected<void> kv_rendezvous_store::set(std::string_view key, std::span<const char> value) {
  return client_.kv_set(full_key(key), std::string{value.begin(), value.end()});
}

expected<std::vector<char>> kv_rendezvous_store::get(std::string_view key, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  const std::string k = full_key(key);
  for (;;) {
    if (cancelled_ && cancelled_()) return make_error(errc::cancelled, "rendezvous on '{}' cancelled", k);
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return make_error(errc::timeout, "key '{}' did not appear within {} ms", k, timeout.count());
    auto r = client_.kv_wait(k, std::clamp(left, std::chrono::milliseconds{1}, kSlice));
    if (r) return std::vector<char>{r->begin(), r->end()};
    if (r.error().kind() != errc::timeout) return unexpected<error>{r.error()};
  }
}

expected<void> kv_rendezvous_store::wait(std::span<const std::string> keys, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (const auto& key : keys) {
    const auto left = std::max(std::chrono::milliseconds{1}, std::chrono::duration_cast<std::chrono::milliseconds>(
                                                                  deadline - std::chrono::steady_clock::now()));
    FLEXSP_TRY(get(key, left));
  }
  return {};
}

}  // namespace flexsp::actors
