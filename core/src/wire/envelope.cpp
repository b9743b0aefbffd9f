#include "flexsp/core/wire/envelope.hpp"

#include <kj/exception.h>

namespace flexsp::wire {

namespace {
constexpr auto kLastKind = body_kind::SHUTDOWN;
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
    case body_kind::REGISTER_NODE: return "register_node";
    case body_kind::REGISTERED: return "registered";
    case body_kind::HEARTBEAT: return "heartbeat";
    case body_kind::REMOVED: return "removed";
    case body_kind::STATUS_REQUEST: return "status_request";
    case body_kind::STATUS: return "status";
    case body_kind::SUBSCRIBE: return "subscribe";
    case body_kind::SUBSCRIBED: return "subscribed";
    case body_kind::MEMBERSHIP_EVENT: return "membership_event";
    case body_kind::KV_SET: return "kv_set";
    case body_kind::KV_GET: return "kv_get";
    case body_kind::KV_REPLY: return "kv_reply";
    case body_kind::NAME_REGISTER: return "name_register";
    case body_kind::NAME_LOOKUP: return "name_lookup";
    case body_kind::NAME_REPLY: return "name_reply";
    case body_kind::ACK: return "ack";
    case body_kind::ERROR: return "error";
    case body_kind::ACTOR: return "actor";
    case body_kind::SHUTDOWN: return "shutdown";
  }
  return "unknown(" + std::to_string(static_cast<unsigned>(kind)) + ")";
}

}  // namespace flexsp::wire
