#pragma once
/// \file
/// The device actor: one per device of a node (`cpu:N` computes on the CPU, `cuda:N` on GPU N).
/// Training messages go to its `device_trainer`. It also answers pings with its device and node,
/// and counts the notes it receives, checking each sender's sequence numbers for order (the
/// cross-process ordering guarantee is tested through it).

#include <cstdint>
#include <map>
#include <string>

#include "flexsp/actors/membership.hpp"
#include "flexsp/actors/remote.hpp"
#include "flexsp/actors/device.capnp.h"
#include "flexsp/actors/device_trainer.hpp"
#include "flexsp/core/actor.hpp"

namespace flexsp::actors {

/// Ask: "are you there?". Reply: `pong`.
struct ping {
  std::uint64_t sequence = 0;
};
struct pong {
  std::uint64_t sequence = 0;
  std::string device;
  std::uint64_t node_id = 0;
  std::uint64_t pings = 0;
};
/// Tell: numbered 1, 2, 3, ... per sender.
struct note {
  std::uint64_t sequence = 0;
  std::uint64_t sender = 0;
};
/// Ask: counters. Reply: `device_stats`.
struct get_stats {};
struct device_stats {
  std::uint64_t notes = 0;
  std::uint64_t out_of_order = 0;
  std::uint64_t last_sequence = 0;
  std::uint64_t pings = 0;
};

template <>
struct wire_codec<ping> {
  using schema = schema::Ping;
  static void encode(const ping& m, schema::Builder b) { b.setSequence(m.sequence); }
  static ping decode(schema::Reader r) { return {r.getSequence()}; }
};
template <>
struct wire_codec<pong> {
  using schema = schema::Pong;
  static void encode(const pong& m, schema::Builder b) {
    b.setSequence(m.sequence);
    b.setDevice(m.device);
    b.setNodeId(m.node_id);
    b.setPings(m.pings);
  }
  static pong decode(schema::Reader r) { return {r.getSequence(), r.getDevice().cStr(), r.getNodeId(), r.getPings()}; }
};
template <>
struct wire_codec<note> {
  using schema = schema::Note;
  static void encode(const note& m, schema::Builder b) {
    b.setSequence(m.sequence);
    b.setSender(m.sender);
  }
  static note decode(schema::Reader r) { return {r.getSequence(), r.getSender()}; }
};
template <>
struct wire_codec<get_stats> {
  using schema = schema::GetStats;
  static void encode(const get_stats&, schema::Builder) {}
  static get_stats decode(schema::Reader) { return {}; }
};
template <>
struct wire_codec<device_stats> {
  using schema = schema::Stats;
  static void encode(const device_stats& m, schema::Builder b) {
    b.setNotes(m.notes);
    b.setOutOfOrder(m.out_of_order);
    b.setLastSequence(m.last_sequence);
    b.setPings(m.pings);
  }
  static device_stats decode(schema::Reader r) {
    return {r.getNotes(), r.getOutOfOrder(), r.getLastSequence(), r.getPings()};
  }
};

/// Sets the node id a device reports (the node learns it when it registers).
struct set_node_id {
  std::uint64_t node_id = 0;
};

/// The device actor, an actor of its node's actor system published on the node's actor host.
/// Training messages go to its trainer: `abort_attempts` takes effect at once, the rest queue
/// for the trainer's worker (a blocking actor), so a step that computes for seconds never
/// delays this actor.
class device_actor : public core::actor<device_actor> {
public:
  using interface = core::interface<ping, note, get_stats, join_job, step_plan, commit_step, abort_attempts, save_state,
                                    query_state, leave_job, set_node_id>;

  device_actor(device_id device, std::uint64_t node_id, std::shared_ptr<device_trainer> trainer)
      : device_{std::move(device)}, node_id_{node_id}, trainer_{std::move(trainer)} {}

  pong handle(ping m) { return {m.sequence, device_.to_string(), node_id_, ++pings_}; }
  void handle(note m) {
    ++notes_;
    auto& last = last_by_sender_[m.sender];
    if (m.sequence != last + 1) ++out_of_order_;
    last = m.sequence;
    last_sequence_ = m.sequence;
  }
  device_stats handle(get_stats) { return {notes_, out_of_order_, last_sequence_, pings_}; }
  void handle(set_node_id m) { node_id_ = m.node_id; }

  void handle(join_job m) { trainer_->handle(std::move(m)); }
  void handle(step_plan m) { trainer_->handle(std::move(m)); }
  void handle(commit_step m) { trainer_->handle(std::move(m)); }
  void handle(abort_attempts m) { trainer_->handle(std::move(m)); }
  void handle(save_state m) { trainer_->handle(std::move(m)); }
  void handle(query_state m) { trainer_->handle(std::move(m)); }
  void handle(leave_job m) { trainer_->handle(std::move(m)); }

private:
  device_id device_;
  std::uint64_t node_id_;
  std::uint64_t pings_ = 0;
  std::uint64_t notes_ = 0;
  std::uint64_t out_of_order_ = 0;
  std::uint64_t last_sequence_ = 0;
  std::map<std::uint64_t, std::uint64_t> last_by_sender_;
  std::shared_ptr<device_trainer> trainer_;
};

}  // namespace flexsp::actors
