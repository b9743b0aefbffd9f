#pragma once
/// \file
/// The envelope every flexsp frame carries (schema: core/schema/wire.capnp) and its checks.
///
/// `open_envelope` is the single entry point for inbound frames: it applies the reader limits,
/// checks the magic number and protocol version, and rejects union tags this build does not
/// know, so a frame of the wrong schema or a newer protocol is an `errc::protocol` error
/// instead of a misread message. Cap'n Proto reads lazily, so a malformed pointer can still
/// surface later as a `kj::Exception` while a handler reads fields; connection code catches
/// it around the handler and treats it the same way.

#include <capnp/message.h>
#include <capnp/serialize.h>

#include "flexsp/core/error.hpp"
#include "flexsp/core/wire/frame.hpp"
#include "flexsp/core/wire/wire.capnp.h"

namespace flexsp::wire {

using envelope_reader = schema::Envelope::Reader;
using envelope_builder = schema::Envelope::Builder;
using body_kind = schema::Envelope::Body::Which;

/// A received frame opened for reading; keeps the frame's words alive.
class inbound_message {
public:
  inbound_message(frame f, const frame_limits& limits)
      : frame_{std::move(f)}, reader_{frame_.words.asPtr(), limits.reader_options()} {}
  inbound_message(const inbound_message&) = delete;
  inbound_message& operator=(const inbound_message&) = delete;

  capnp::MessageReader& reader() { return reader_; }
  std::size_t size_bytes() const { return frame_.size_bytes(); }

private:
  frame frame_;
  capnp::FlatArrayMessageReader reader_;
};

/// Validates magic, version and body tag of an inbound message; never throws.
expected<envelope_reader> open_envelope(inbound_message& message);

/// Starts an outbound envelope in `message` with magic, version and request id set.
envelope_builder start_envelope(capnp::MessageBuilder& message, std::uint64_t request_id = 0);

/// Name of a body kind for logs ("heartbeat", "actor", ...); "unknown(N)" for others.
std::string body_name(body_kind kind);

}  // namespace flexsp::wire
