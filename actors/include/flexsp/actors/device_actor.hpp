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

/// The placeholder device actor. Its handlers run on its host's loop thread.
class device_actor {
public:
  device_actor(device_id device, std::uint64_t node_id) : device_{std::move(device)}, node_id_{node_id} {}

  pong handle(ping m) { return {m.sequence, device_.to_string(), node_id_, ++pings_}; }
  void handle(note m) {
    ++notes_;
    auto& last = last_by_sender_[m.sender];
    if (m.sequence != last + 1) ++out_of_order_;
    last = m.sequence;
    last_sequence_ = m.sequence;
  }
  device_stats handle(get_stats) { return {notes_, out_of_order_, last_sequence_, pings_}; }

  // Training messages go to the device's trainer (device_trainer.hpp); without one they are dropped.
  void handle(join_job m) { if (trainer_) trainer_->handle(std::move(m)); }
  void handle(step_plan m) { if (trainer_) trainer_->handle(std::move(m)); }
  void handle(commit_step m) { if (trainer_) trainer_->handle(std::move(m)); }
  void handle(abort_attempts m) { if (trainer_) trainer_->handle(std::move(m)); }
  void handle(save_state m) { if (trainer_) trainer_->handle(std::move(m)); }
  void handle(query_state m) { if (trainer_) trainer_->handle(std::move(m)); }
  void handle(leave_job m) { if (trainer_) trainer_->handle(std::move(m)); }

  /// Spawns one into `host`; returns its id there.
  static std::uint64_t spawn(actor_host& host, device_id device, std::uint64_t node_id) {
    return spawn(host, std::make_shared<device_actor>(std::move(device), node_id));
  }
  /// Makes `actor` reachable in `host` with every message type it handles.
  static std::uint64_t spawn(actor_host& host, std::shared_ptr<device_actor> actor) {
    return host.spawn<device_actor, ping, note, get_stats, join_job, step_plan, commit_step, abort_attempts, save_state,
                      query_state, leave_job>(std::move(actor));
  }

  /// Gives the device its trainer (the node does, once its actor host runs).
  void attach_trainer(std::shared_ptr<device_trainer> t) { trainer_ = std::move(t); }

  void set_node_id(std::uint64_t id) { node_id_ = id; }

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
