// libFuzzer entry point: arbitrary bytes through the frame decoder and the envelope checks,
// fed in two chunks split at the first byte's value so that incremental decoding is covered.
#include <cstddef>
#include <cstdint>
#include <span>

#include <kj/exception.h>

#include "flexsp/core/wire/envelope.hpp"
#include "flexsp/core/wire/frame.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  flexsp::wire::frame_limits limits;
  limits.max_frame_bytes = 1 << 16;
  limits.traversal_limit_words = 1 << 14;
  flexsp::wire::frame_decoder decoder{limits};
  const auto bytes = std::as_bytes(std::span{data, size});
  const std::size_t split = size == 0 ? 0 : data[0] % (size + 1);
  if (decoder.feed(bytes.first(split)) && decoder.feed(bytes.subspan(split))) {
  }
  while (auto f = decoder.next()) {
    try {
      flexsp::wire::inbound_message msg{std::move(*f), limits};
      auto env = flexsp::wire::open_envelope(msg);
      if (env) (void)msg.reader().getRoot<flexsp::wire::schema::Envelope>().totalSize();
    } catch (const kj::Exception&) {
      // Malformed content is reported as an exception by lazy reads: the expected outcome.
    }
  }
  return 0;
}
