#pragma once
// Probe messages for the runtime's tests and benchmarks (declared in tests/support/probe.capnp:
// ping, pong, note, get_stats, probe_stats), and an actor that answers them.
#include <cstdint>
#include <map>

#include "flexsp/actors/remote.hpp"
#include "flexsp/core/actor.hpp"
#include "flexsp/testing/probe.msg.hpp"

namespace flexsp::testing {

/// Answers pings and counts notes, checking each sender's order.
class probe_actor : public core::actor<probe_actor> {
public:
  using interface = core::interface<ping, note, get_stats>;
  pong handle(ping m) { return {m.sequence, ++pings_}; }
  void handle(note m) {
    ++notes_;
    auto& last = last_by_sender_[m.sender];
    if (m.sequence != last + 1) ++out_of_order_;
    last = m.sequence;
    last_sequence_ = m.sequence;
  }
  probe_stats handle(get_stats) { return {notes_, out_of_order_, last_sequence_, pings_}; }

private:
  std::uint64_t pings_ = 0, notes_ = 0, out_of_order_ = 0, last_sequence_ = 0;
  std::map<std::uint64_t, std::uint64_t> last_by_sender_;
};

}  // namespace flexsp::testing
