#include "flexsp/core/wire/envelope.hpp"

#include <kj/exception.h>

namespace flexsp::wire {

namespace {
constexpr auto kLastKind = body_kind::ACTOR;
}

expected<envelope_reader> open_envelope(inbound_message& message) {
  try {
    auto env = message.reader().getRoot<schema::Envelope>();
    if (env.getMagic() != schema::ENVELOPE_MAGIC)
      return make_error(errc::protocol, "bad envelope magic {:#010x} (expected {:#010x}): not a flexsp frame",
                        env.getMagic(), schema::ENVELOPE_MAGIC);
    if (env.getVersion() != schema::PROTOCOL_VERSION)
      return make_error(errc::protocol, "protocol version {} is not supported (this build speaks {})",
                        env.getVersion(), schema::PROTOCOL_VERSION);
    const auto kind = env.getBody().which();
    if (static_cast<std::uint16_t>(kind) > static_cast<std::uint16_t>(kLastKind))
      return make_error(errc::protocol, "unknown envelope body tag {}", static_cast<std::uint16_t>(kind));
    return env;
  } catch (const kj::Exception& e) {
    return make_error(errc::protocol, "malformed frame: {}", e.getDescription().cStr());
  }
}

envelope_builder start_envelope(capnp::MessageBuilder& message, std::uint64_t request_id) {
  auto env = message.initRoot<schema::Envelope>();
  env.setMagic(schema::ENVELOPE_MAGIC);
  env.setVersion(schema::PROTOCOL_VERSION);
  env.setRequestId(request_id);
  return env;
}

std::string body_name(body_kind kind) {
  switch (kind) {
    case body_kind::CHALLENGE: return "challenge";
    case body_kind::AUTH: return "auth";
    case body_kind::WELCOME: return "welcome";
    case body_kind::REJECT: return "reject";
    case body_kind::ACTOR: return "actor";
  }
  return "unknown(" + std::to_string(static_cast<unsigned>(kind)) + ")";
}

}  // namespace flexsp::wire
