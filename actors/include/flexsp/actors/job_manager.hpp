#pragma once
/// \file
/// The job manager of the head: hosts one scheduler actor per submitted job and answers the job
/// API (`submit`, `status`, `metrics`, `logs`, `cancel`) for local callers and, through the
/// jobs actor published on the head's actor host as `jobs_actor_id`, for remote clients
/// (job_client.hpp).

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "flexsp/actors/job_spec.hpp"
#include "flexsp/actors/scheduler_actor.hpp"

namespace flexsp::actors {

class job_manager;

/// The actor id of the jobs actor at every head's address.
inline constexpr std::uint64_t jobs_actor_id = 2;

/// The remote face of the job manager, published on the head's actor host as `jobs_actor_id`.
/// Job clients reach it through a proxy (job_client.hpp).
class jobs_actor : public core::actor<jobs_actor> {
public:
  using interface = core::interface<submit_job, query_job, cancel_job, list_jobs, watch_job>;
  explicit jobs_actor(job_manager& m) : manager_{m} {}

  expected<job_info> handle(submit_job m);
  expected<job_info> handle(query_job m);
  expected<job_info> handle(cancel_job m);
  expected<job_info> handle(watch_job m);
  job_list handle(list_jobs);

private:
  job_manager& manager_;
};

class job_manager {
public:
  /// `config.host` is the head's actor host; jobs connect to `config.head`. Without
  /// `config.system` the manager runs the jobs' actors on an actor system of its own.
  explicit job_manager(scheduler_config config);
  ~job_manager();

  /// Starts a job; returns its id ("<name>-<n>"). A relative `checkpoint.dir` is made absolute
  /// against the current directory. Fails at once (errc::invalid_argument naming the field) for
  /// a spec the cluster cannot run now (check_job_fits) or an unwritable checkpoint directory.
  expected<std::shared_ptr<scheduled_job>> submit(const job_spec& spec, scheduled_job::metrics_fn on_metrics = {},
                                                    scheduled_job::log_fn on_log = {});
  /// errc::not_found for an unknown id.
  expected<std::shared_ptr<scheduled_job>> find(const std::string& id) const;
  std::vector<job_status> list() const;
  /// Cancels every job and waits for them.
  void shutdown();

  /// Publishes the remote job API on the head's actor host as `jobs_actor_id`.
  expected<void> serve();

  /// Takes back the jobs `config.store` recorded (a restarted head), under their ids: running
  /// ones continue from their last committed step, ended ones are listed. Returns how many
  /// continue. Call once, before `submit`.
  expected<std::size_t> recover();

private:
  expected<void> admit(const job_spec& spec) const;
  std::unique_ptr<core::actor_system> own_system_;
  scheduler_config config_;
  mutable std::mutex mutex_;
  std::map<std::string, std::shared_ptr<scheduled_job>> jobs_;
  std::uint64_t next_ = 1;
  std::uint64_t served_actor_ = 0;
  core::actor_ref<jobs_actor> served_;
};

}  // namespace flexsp::actors
