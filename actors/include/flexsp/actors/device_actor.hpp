#pragma once
/// \file
/// The device actor: one per device of a node (`cpu:N` computes on the CPU, `cuda:N` on GPU N).
/// Training messages go to its `device_trainer`; `describe_device` (device.capnp) says what it
/// is and which jobs it holds.

#include <cstdint>
#include <vector>
#include <string>

#include "flexsp/actors/membership.hpp"
#include "flexsp/actors/remote.hpp"
#include "flexsp/actors/device.msg.hpp"
#include "flexsp/actors/device_trainer.hpp"
#include "flexsp/core/actor.hpp"

namespace flexsp::actors {

/// Sets the node id a device reports (the node learns it when it registers).
struct set_node_id {
  std::uint64_t node_id = 0;
};
/// From the node actor: the node's membership ended; abandon the attempt in flight.
struct membership_ended {};

/// The device actor, an actor of its node's actor system published on the node's actor host.
/// Training messages go to its trainer: `abort_attempts` takes effect at once, the rest queue
/// for the trainer's worker (a blocking actor), so a step that computes for seconds never
/// delays this actor.
class device_actor : public core::actor<device_actor> {
public:
  using interface = core::interface<describe_device, join_job, step_plan, commit_step, abort_attempts, save_state,
                                    query_state, leave_job, set_node_id, membership_ended>;

  device_actor(device_id device, std::uint64_t node_id, std::shared_ptr<device_trainer> trainer)
      : device_{std::move(device)}, node_id_{node_id}, trainer_{std::move(trainer)} {}

  device_info handle(describe_device) { return {device_.to_string(), node_id_, device_.description, trainer_->jobs()}; }
  void handle(set_node_id m) { node_id_ = m.node_id; }
  void handle(membership_ended) { trainer_->abort_in_flight(); }

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
  std::shared_ptr<device_trainer> trainer_;
};

}  // namespace flexsp::actors
