#pragma once
/// \file
/// The training half of a device actor: for each job it takes part in, a full model replica and
/// its optimizer state (`replica`, on the CPU or on this device's GPU; the one type a future
/// ZeRO sharding replaces), the job's communicator cache (Gloo, or NCCL on GPUs), and a worker
/// thread that runs steps. A `cuda:N` device opens GPU N on its first job and keeps it; a job
/// that cannot get it (no GPU, out of memory) is refused with the reason.
///
/// The device actor calls the handlers; they only queue work for the trainer's worker, a
/// blocking actor of the node's actor system, so a step that computes for seconds never delays
/// the device actor or anything else. The exception is `abort`: it takes effect at once
/// (communicators of the job are aborted, so a collective blocked on a dead peer returns), then
/// every queued plan of an aborted attempt is skipped. Aborted communicators are torn down by a
/// second blocking actor (tearing down may wait for a rendezvous in progress).
///
/// Replies (`grad_ready`, `step_failed`, `device_state`) are tells to the job's scheduler actor,
/// through a proxy of it.

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "flexsp/actors/membership.hpp"
#include "flexsp/actors/remote.hpp"
#include "flexsp/actors/training_messages.hpp"
#include "flexsp/core/actor_system.hpp"
#include "flexsp/core/error.hpp"
#include "flexsp/core/net/transport.hpp"

namespace flexsp::kernels {
class device;
}

namespace flexsp::actors {

class cluster_client;

/// What a device needs to reach the cluster: the head (for the rendezvous KV store) and its own
/// actor host (to answer the scheduler).
struct device_context {
  net::endpoint head;
  net::transport_config transport;
  std::weak_ptr<actor_host> host;
  device_id device;  ///< cpu:3 runs on the CPU, cuda:0 on GPU 0
  core::actor_system* system = nullptr;  ///< runs the trainer's blocking workers
};

class work_queue;

class device_trainer {
public:
  explicit device_trainer(device_context context);
  ~device_trainer();
  device_trainer(const device_trainer&) = delete;
  device_trainer& operator=(const device_trainer&) = delete;

  void handle(join_job m);
  void handle(step_plan m);
  void handle(commit_step m);
  void handle(abort_attempts m);
  void handle(save_state m);
  void handle(query_state m);
  void handle(leave_job m);
  /// The node's membership ended: every attempt planned so far (running or queued) belongs to a
  /// world that no longer includes this device. Abandons them at once (blocked collectives and
  /// group setups return), keeping every replica at its last committed step.
  void abort_in_flight();

  /// Ids of the jobs this device holds a replica for.
  std::vector<std::string> jobs() const;

  struct job;

private:
  void post(std::function<void()> work);
  expected<cluster_client*> client();
  /// The compute device of this device actor: the host device for `cpu:N`, the GPU for
  /// `cuda:N` (opened by the first job).
  expected<std::shared_ptr<kernels::device>> compute_device();
  std::shared_ptr<job> find(const std::string& id);

  device_context context_;
  mutable std::mutex mutex_;
  std::map<std::string, std::shared_ptr<job>> jobs_;  // guarded by mutex_
  std::unique_ptr<cluster_client> client_;            // worker only
  std::shared_ptr<kernels::device> device_;           // worker only; opened by the first job
  std::string name_;                                  // "cuda:0", for logs
  core::actor_ref<work_queue> worker_;                // runs steps, joins, saves
  core::actor_ref<work_queue> retirer_;               // tears down aborted communicators
};


}  // namespace flexsp::actors
