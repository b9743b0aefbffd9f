#pragma once
/// \file
/// The unit a mailbox holds: an intrusive node with a type-erased payload.
///
/// A message is created by the sender with the receiver's handler already bound (a function
/// pointer chosen at compile time from the receiver's type and the payload's type), so a local
/// delivery needs no lookup and no second allocation. Every message exposes its payload and the
/// stable name of the payload's type; a transport that crosses processes can key its serialisers
/// on that name.

#include <cstdint>
#include <memory>
#include <string_view>

#include "flexsp/core/error.hpp"

namespace flexsp::core {

class actor_base;
struct message;

/// What a message can do; one static instance per (receiver type, payload type, kind).
struct message_vtable {
  /// Runs the bound handler on the receiving actor. May throw (the runtime catches).
  void (*invoke)(actor_base& self, message& msg);
  /// Deletes the message.
  void (*destroy)(message* msg) noexcept;
  /// Called when the message will never be handled (dead actor, full mailbox, discarded):
  /// fails an attached reply with `why`. May be null.
  void (*fail)(message& msg, const error& why) noexcept;
  /// Payload type name, e.g. "flexsp::core::down_msg".
  std::string_view type_name;
  /// The payload object (of the type named by `type_name`), or null for runtime control
  /// messages. A transport serialises through this and `type_name`.
  const void* (*payload)(const message& msg) noexcept;
};

/// An intrusive mailbox node. Owned through `message_ptr`.
struct message {
  explicit message(const message_vtable* vt, bool system = false) noexcept : vtable{vt}, is_system{system} {}
  message* next = nullptr;
  const message_vtable* vtable;
  /// Runtime messages (start, stop, down, replies) bypass mailbox bounds.
  bool is_system;
};

struct message_deleter {
  void operator()(message* m) const noexcept { m->vtable->destroy(m); }
};
using message_ptr = std::unique_ptr<message, message_deleter>;

/// The compiler's name for T, e.g. `type_name<int>() == "int"`. Stable for one compiler.
template <class T>
constexpr std::string_view type_name() noexcept {
  std::string_view p = __PRETTY_FUNCTION__;
  const auto start = p.find("T = ") + 4;
  const auto end = p.find_first_of(";]", start);
  return p.substr(start, end - start);
}

namespace detail {
/// Builds the vtable for a concrete message type M (derived from `message`) whose static
/// `invoke` runs the handler and whose optional `fail(const error&)` fails a reply.
template <class M>
struct vtable_for {
  static void destroy(message* m) noexcept { delete static_cast<M*>(m); }
  static void fail(message& m, const error& why) noexcept {
    if constexpr (requires(M& x) { x.fail(why); }) static_cast<M&>(m).fail(why);
  }
  static const void* payload(const message& m) noexcept {
    if constexpr (requires(const M& x) { x.payload; })
      return &static_cast<const M&>(m).payload;
    else
      return nullptr;
  }
  static constexpr message_vtable value{&M::invoke, &destroy, &fail, M::payload_name(), &payload};
};
}  // namespace detail

}  // namespace flexsp::core
