#pragma once
/// \file
/// Cap'n Proto stream framing for untrusted byte streams.
///
/// A frame is Cap'n Proto's standard stream encoding: a segment table (segment count - 1, then
/// each segment's size in words, padded to a whole word) followed by the segments. The decoder
/// is fed whatever bytes arrive from a socket and produces whole frames, each in one
/// word-aligned buffer that a `capnp::FlatArrayMessageReader` reads without copying.
///
/// Every frame is treated as hostile: the segment count and the total size are checked against
/// `frame_limits` as soon as the segment table is complete and **before** the body is
/// allocated. A frame that breaks a limit puts the decoder into a failed state with an
/// `errc::protocol` error naming the limit and the value; the caller closes that connection.

#include <cstddef>
#include <cstdint>
#include <deque>
#include <optional>
#include <span>

#include <capnp/common.h>
#include <capnp/message.h>
#include <kj/array.h>

#include "flexsp/core/error.hpp"

namespace flexsp::wire {

/// Bounds applied to every inbound frame.
struct frame_limits {
  /// Largest frame accepted, segment table included (bytes). Checked before allocating.
  std::size_t max_frame_bytes = 16u << 20;
  /// Most segments one frame may have (Cap'n Proto itself allows 512).
  std::uint32_t max_segments = 64;
  /// Reader traversal limit (words): bounds the work an amplification attack can cause.
  std::uint64_t traversal_limit_words = 8u << 20;
  /// Reader nesting limit (pointer depth).
  int nesting_limit = 32;

  /// Fails with errc::invalid_argument naming a zero or out-of-range field.
  expected<void> validate() const;
  /// The reader options these limits imply.
  capnp::ReaderOptions reader_options() const;
};

/// One decoded frame: segment table and segments, contiguous and word-aligned.
struct frame {
  kj::Array<capnp::word> words;
  /// Size on the wire in bytes.
  std::size_t size_bytes() const { return words.size() * sizeof(capnp::word); }
};

/// Incremental decoder of a byte stream into frames. Not thread-safe; one per connection.
class frame_decoder {
public:
  explicit frame_decoder(frame_limits limits = {}) : limits_{limits} {}

  /// Consumes bytes. Completed frames are queued for `next()`. After an error every later call
  /// returns the same error (the stream cannot be resynchronised).
  expected<void> feed(std::span<const std::byte> bytes);

  /// The oldest completed frame, if any.
  std::optional<frame> next();

  /// Changes the size limit for frames whose segment table is not complete yet (used to hold
  /// unauthenticated peers to small frames, then lift the limit after the handshake).
  void set_max_frame_bytes(std::size_t bytes) noexcept { limits_.max_frame_bytes = bytes; }

  /// Bytes buffered towards the frame in progress.
  std::size_t partial_bytes() const noexcept;
  /// True once a limit was broken or the stream was malformed.
  bool failed() const noexcept { return failed_.has_value(); }

private:
  expected<void> fail(error e);
  expected<void> on_table_complete();

  frame_limits limits_;
  enum class stage { header, table, body } stage_ = stage::header;
  std::uint32_t segments_ = 0;
  std::size_t table_bytes_ = 0;       // whole segment table, padded
  std::size_t have_ = 0;              // bytes of the current frame received so far
  std::byte table_[8 * 257]{};        // room for the largest table `max_segments` allows (<= 512)
  kj::Array<capnp::word> body_;       // table + segments, allocated once the sizes are known
  std::deque<frame> ready_;
  std::optional<error> failed_;
};

/// Serialises a message with the stream framing into one word array.
kj::Array<capnp::word> encode_frame(capnp::MessageBuilder& message);

}  // namespace flexsp::wire
