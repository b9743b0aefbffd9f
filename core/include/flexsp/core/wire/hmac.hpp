#pragma once
/// \file
/// SHA-256 and HMAC-SHA256 (FIPS 180-4, RFC 2104) for the cluster's challenge-response join,
/// plus a constant-time comparison and a source of random nonces. Small and self-contained so
/// that the core library needs no crypto dependency; tested against the FIPS and RFC 4231
/// vectors.

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "flexsp/core/error.hpp"

namespace flexsp::wire {

using digest = std::array<std::uint8_t, 32>;

/// Incremental SHA-256.
class sha256 {
public:
  sha256();
  void update(std::span<const std::uint8_t> data);
  void update(std::string_view data);
  /// Finishes the hash; the object must not be updated afterwards.
  digest finish();

private:
  void block(const std::uint8_t* p);
  std::array<std::uint32_t, 8> h_;
  std::array<std::uint8_t, 64> buf_{};
  std::size_t buf_len_ = 0;
  std::uint64_t total_ = 0;
};

/// HMAC-SHA256 of the concatenation of `parts` under `key`.
digest hmac_sha256(std::span<const std::uint8_t> key, std::span<const std::span<const std::uint8_t>> parts);

/// Compares two byte strings in time independent of where they differ.
bool constant_time_equal(std::span<const std::uint8_t> a, std::span<const std::uint8_t> b) noexcept;

/// Fills `out` with bytes from the OS's cryptographic random source (getrandom).
expected<void> random_bytes(std::span<std::uint8_t> out);

/// Lower-case hex of a byte string.
std::string to_hex(std::span<const std::uint8_t> bytes);

}  // namespace flexsp::wire
