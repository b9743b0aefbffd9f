#pragma once
// The head's cluster protocol (actors/schema/cluster.capnp) inside core's envelopes: each message
// travels as an Envelope `service` body tagged with its struct's type id (private to actors/).
#include <cstdint>

#include <capnp/message.h>

#include "flexsp/actors/cluster.capnp.h"
#include "flexsp/core/wire/envelope.hpp"

namespace flexsp::actors::detail {

namespace cs = ::flexsp::actors::cluster_schema;

/// Starts an envelope carrying cluster message S; returns S's builder.
template <class S>
typename S::Builder start_cluster(capnp::MessageBuilder& msg, std::uint64_t request_id = 0) {
  auto s = wire::start_envelope(msg, request_id).getBody().initService();
  s.setTypeId(capnp::typeId<S>());
  return s.getBody().template initAs<S>();
}

/// The type id of the cluster message `env` carries; 0 when it carries none.
inline std::uint64_t cluster_type(wire::envelope_reader env) {
  return env.getBody().which() == wire::body_kind::SERVICE ? env.getBody().getService().getTypeId() : 0;
}

template <class S>
bool holds(wire::envelope_reader env) {
  return cluster_type(env) == capnp::typeId<S>();
}

/// The body of a cluster message; call after `holds<S>`.
template <class S>
typename S::Reader cluster_body(wire::envelope_reader env) {
  return env.getBody().getService().getBody().template getAs<S>();
}

}  // namespace flexsp::actors::detail
