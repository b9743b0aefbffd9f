#pragma once
// Probe messages for the runtime's tests and benchmarks (schema: tests/support/probe.capnp),
// and an actor that answers them.
#include <cstdint>
#include <map>

#include "flexsp/actors/remote.hpp"
#include "flexsp/core/actor.hpp"
#include "flexsp/testing/probe.capnp.h"

namespace flexsp::testing {

/// Ask: are you there? Reply: `pong`.
struct ping {
  std::uint64_t sequence = 0;
};
struct pong {
  std::uint64_t sequence = 0;
  std::uint64_t pings = 0;
};
/// Tell: numbered 1, 2, 3, ... per sender.
struct note {
  std::uint64_t sequence = 0;
  std::uint64_t sender = 0;
};
/// Ask: counters. Reply: `probe_stats`.
struct get_stats {};
struct probe_stats {
  std::uint64_t notes = 0;
  std::uint64_t out_of_order = 0;
  std::uint64_t last_sequence = 0;
  std::uint64_t pings = 0;
};

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

namespace flexsp::actors {
template <>
struct wire_codec<testing::ping> {
  using schema = testing::schema::Ping;
  static void encode(const testing::ping& m, schema::Builder b) { b.setSequence(m.sequence); }
  static testing::ping decode(schema::Reader r) { return {r.getSequence()}; }
};
template <>
struct wire_codec<testing::pong> {
  using schema = testing::schema::Pong;
  static void encode(const testing::pong& m, schema::Builder b) {
    b.setSequence(m.sequence);
    b.setPings(m.pings);
  }
  static testing::pong decode(schema::Reader r) { return {r.getSequence(), r.getPings()}; }
};
template <>
struct wire_codec<testing::note> {
  using schema = testing::schema::Note;
  static void encode(const testing::note& m, schema::Builder b) {
    b.setSequence(m.sequence);
    b.setSender(m.sender);
  }
  static testing::note decode(schema::Reader r) { return {r.getSequence(), r.getSender()}; }
};
template <>
struct wire_codec<testing::get_stats> {
  using schema = testing::schema::GetStats;
  static void encode(const testing::get_stats&, schema::Builder) {}
  static testing::get_stats decode(schema::Reader) { return {}; }
};
template <>
struct wire_codec<testing::probe_stats> {
  using schema = testing::schema::Stats;
  static void encode(const testing::probe_stats& m, schema::Builder b) {
    b.setNotes(m.notes);
    b.setOutOfOrder(m.out_of_order);
    b.setLastSequence(m.last_sequence);
    b.setPings(m.pings);
  }
  static testing::probe_stats decode(schema::Reader r) {
    return {r.getNotes(), r.getOutOfOrder(), r.getLastSequence(), r.getPings()};
  }
};
}  // namespace flexsp::actors
