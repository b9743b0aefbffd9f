#include "flexsp/core/wire/frame.hpp"

#include <algorithm>
#include <cstring>

#include <capnp/serialize.h>

namespace flexsp::wire {

namespace {
constexpr std::uint32_t kCapnpMaxSegments = 512;

std::uint32_t load_u32(const std::byte* p) {
  std::uint32_t v;
  std::memcpy(&v, p, sizeof v);
  return v;  // the framing is little-endian; so are all hosts we build for
}
}  // namespace

expected<void> frame_limits::validate() const {
  if (max_frame_bytes < 16) return make_error(errc::invalid_argument, "max_frame_bytes {} is below 16", max_frame_bytes);
  if (max_segments == 0 || max_segments > kCapnpMaxSegments)
    return make_error(errc::invalid_argument, "max_segments {} is outside 1..{}", max_segments, kCapnpMaxSegments);
  if (traversal_limit_words == 0) return make_error(errc::invalid_argument, "traversal_limit_words is 0");
  if (nesting_limit <= 0) return make_error(errc::invalid_argument, "nesting_limit {} is not positive", nesting_limit);
  return {};
}

capnp::ReaderOptions frame_limits::reader_options() const {
  capnp::ReaderOptions options;
  options.traversalLimitInWords = traversal_limit_words;
  options.nestingLimit = nesting_limit;
  return options;
}

expected<void> frame_decoder::fail(error e) {
  failed_ = e;
  return unexpected<error>{std::move(e)};
}

std::size_t frame_decoder::partial_bytes() const noexcept { return have_; }

expected<void> frame_decoder::on_table_complete() {
  // Sizes are summed in 64 bits: 512 segments of up to 2^32-1 words cannot overflow.
  std::uint64_t words = table_bytes_ / sizeof(capnp::word);
  for (std::uint32_t i = 0; i < segments_; ++i) {
    const std::uint32_t seg = load_u32(table_ + 4 * (i + 1));
    if (i == 0 && seg == 0) return fail(error{errc::protocol, "frame's first segment is empty"});
    words += seg;
  }
  const std::uint64_t bytes = words * sizeof(capnp::word);
  if (bytes > limits_.max_frame_bytes)
    return fail(error{errc::protocol, fmt::format("frame of {} bytes exceeds the limit of {} bytes", bytes,
                                                  limits_.max_frame_bytes)});
  body_ = kj::heapArray<capnp::word>(static_cast<std::size_t>(words));
  std::memcpy(body_.begin(), table_, table_bytes_);
  stage_ = stage::body;
  return {};
}

expected<void> frame_decoder::feed(std::span<const std::byte> bytes) {
  if (failed_) return unexpected<error>{*failed_};
  while (!bytes.empty()) {
    switch (stage_) {
      case stage::header: {
        const std::size_t take = std::min<std::size_t>(8 - have_, bytes.size());
        std::memcpy(table_ + have_, bytes.data(), take);
        have_ += take;
        bytes = bytes.subspan(take);
        if (have_ < 8) break;
        const std::uint64_t count = std::uint64_t{load_u32(table_)} + 1;
        if (count > limits_.max_segments)
          return fail(error{errc::protocol, fmt::format("frame has {} segments; the limit is {}", count,
                                                        limits_.max_segments)});
        segments_ = static_cast<std::uint32_t>(count);
        table_bytes_ = ((4 * (segments_ + 1)) + 7) / 8 * 8;
        if (table_bytes_ == 8) {
          FLEXSP_TRY(on_table_complete());
        } else {
          stage_ = stage::table;
        }
        break;
      }
      case stage::table: {
        const std::size_t take = std::min(table_bytes_ - have_, bytes.size());
        std::memcpy(table_ + have_, bytes.data(), take);
        have_ += take;
        bytes = bytes.subspan(take);
        if (have_ == table_bytes_) FLEXSP_TRY(on_table_complete());
        break;
      }
      case stage::body: {
        const std::size_t total = body_.size() * sizeof(capnp::word);
        const std::size_t take = std::min(total - have_, bytes.size());
        std::memcpy(reinterpret_cast<std::byte*>(body_.begin()) + have_, bytes.data(), take);
        have_ += take;
        bytes = bytes.subspan(take);
        if (have_ == total) {
          ready_.push_back(frame{std::move(body_)});
          body_ = nullptr;
          have_ = 0;
          stage_ = stage::header;
        }
        break;
      }
    }
  }
  return {};
}

std::optional<frame> frame_decoder::next() {
  if (ready_.empty()) return std::nullopt;
  frame f = std::move(ready_.front());
  ready_.pop_front();
  return f;
}

kj::Array<capnp::word> encode_frame(capnp::MessageBuilder& message) { return capnp::messageToFlatArray(message); }

}  // namespace flexsp::wire
