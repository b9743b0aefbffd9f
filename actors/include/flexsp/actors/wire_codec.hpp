#pragma once
/// \file
/// How a C++ message type crosses processes: `wire_codec<T>` maps it to a Cap'n Proto struct,
/// whose type id tags the payload. Schemas declare the messages once: capnpc-flexsp
/// (tools/capnpc_flexsp) generates each schema struct's C++ type and its codec into
/// `<schema>.msg.hpp`.

#include <cstdint>

#include <capnp/any.h>
#include <capnp/generated-header-support.h>

namespace flexsp::actors {

/// Maps a C++ message type to its Cap'n Proto struct. Specialise per type (see file doc).
template <class T>
struct wire_codec;

/// A type with a `wire_codec`.
template <class T>
concept wire_message = requires { typename wire_codec<T>::schema; };

/// Cap'n Proto type id of T's wire struct; tags payloads.
template <wire_message T>
std::uint64_t wire_type_id() {
  return capnp::typeId<typename wire_codec<T>::schema>();
}

}  // namespace flexsp::actors
