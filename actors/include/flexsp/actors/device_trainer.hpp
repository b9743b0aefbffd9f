#pragma once
/// \file
/// The training half of a device actor: for each job it takes part in, a full model replica and
/// its optimizer state (`replica`, on the CPU or on this device's GPU; the one type a future
/// ZeRO sharding replaces), the job's communicator cache (Gloo, or NCCL on GPUs), and a worker
/// thread that runs steps. A `cuda:N` device opens GPU N on its first job and keeps it; a job
/// that cannot get it (no GPU, out of memory) is refused with the reason.
///
/// Message handlers run on the actor host's loop thread and only queue work, so a step that
/// computes for seconds never delays heartbeats or other actors. The exception is `abort`:
/// it takes effect at once (communicators of the job are aborted, so a collective blocked on a
/// dead peer returns), then every queued plan of an aborted attempt is skipped.
///
/// Replies (`grad_ready`, `step_failed`, `device_state`) are tells to the job's scheduler actor.

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "flexsp/actors/membership.hpp"
#include "flexsp/actors/remote.hpp"
#include "flexsp/actors/training_messages.hpp"
#include "flexsp/core/error.hpp"
#include "flexsp/core/net/transport.hpp"

namespace flexsp::kernels::gpu {
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
};

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

  /// Steps committed on this device over all jobs (for tests).
  std::uint64_t committed_steps() const;

  struct job;

private:
  void post(std::function<void()> work);
  void run_worker();
  expected<cluster_client*> client();
  expected<std::shared_ptr<kernels::gpu::device>> gpu();
  std::shared_ptr<job> find(const std::string& id);

  device_context context_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::function<void()>> queue_;
  bool stopping_ = false;
  std::map<std::string, std::shared_ptr<job>> jobs_;  // guarded by mutex_
  std::unique_ptr<cluster_client> client_;            // worker thread only
  std::shared_ptr<kernels::gpu::device> gpu_;         // worker thread only; opened by the first job
  std::string name_;                                  // "cuda:0", for logs
  std::uint64_t committed_ = 0;
  std::thread worker_;
};


}  // namespace flexsp::actors
