#pragma once
/// \file
/// FNV-1a, 64 bits: the checksum of checkpoint files, token shards and tokenizer models, and the
/// combination of shard fingerprints. Not cryptographic; it catches corruption and mix-ups.

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>

namespace flexsp {

struct fnv1a64 {
  std::uint64_t h = 0xcbf29ce484222325ull;
  void add(const void* data, std::size_t n) noexcept {
    const auto* p = static_cast<const unsigned char*>(data);
    for (std::size_t i = 0; i < n; ++i) {
      h ^= p[i];
      h *= 0x100000001b3ull;
    }
  }
  /// 16 lower-case hex digits.
  std::string hex() const {
    char b[17];
    std::snprintf(b, sizeof b, "%016llx", static_cast<unsigned long long>(h));
    return b;
  }
};

/// The hash of `bytes` as 16 hex digits.
inline std::string fnv1a64_hex(std::string_view bytes) {
  fnv1a64 f;
  f.add(bytes.data(), bytes.size());
  return f.hex();
}

}  // namespace flexsp
