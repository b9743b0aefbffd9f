#pragma once
// UTF-8 validation shared by the tokenizers and the dataset readers.

#include <cstdint>
#include <string_view>

namespace flexsp::data {

/// The offset of the first byte that does not start or continue a valid UTF-8 sequence
/// (overlong forms, surrogates and code points past U+10FFFF are invalid), or -1.
inline std::int64_t invalid_utf8_at(std::string_view s) noexcept {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const std::size_t n = s.size();
  std::size_t i = 0;
  while (i < n) {
    const unsigned char c = p[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    std::size_t len = 0;
    std::uint32_t cp = 0, min = 0;
    if ((c & 0xe0) == 0xc0) {
      len = 2, cp = c & 0x1fu, min = 0x80;
    } else if ((c & 0xf0) == 0xe0) {
      len = 3, cp = c & 0x0fu, min = 0x800;
    } else if ((c & 0xf8) == 0xf0) {
      len = 4, cp = c & 0x07u, min = 0x10000;
    } else {
      return static_cast<std::int64_t>(i);
    }
    if (i + len > n) return static_cast<std::int64_t>(i);
    for (std::size_t k = 1; k < len; ++k) {
      if ((p[i + k] & 0xc0) != 0x80) return static_cast<std::int64_t>(i);
      cp = (cp << 6) | (p[i + k] & 0x3fu);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return static_cast<std::int64_t>(i);
    i += len;
  }
  return -1;
}

}  // namespace flexsp::data
