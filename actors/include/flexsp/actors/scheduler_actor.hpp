#pragma once
/// \file
/// A job on the head: its scheduler actor, the worker that does its blocking work, and the
/// handle the job manager keeps.
///
/// - `scheduler_actor` (an actor of the head's `core::actor_system`) runs the job's
///   `job_controller` (job_controller.hpp: every decision of the job, a deterministic state
///   machine): it feeds it events (device replies arriving through the actor host, membership
///   changes, timers, the worker's answers) and carries out its commands (messages to devices,
///   timers, work for the worker, metrics and logs for the handle). It never blocks.
/// - `job_worker` (spawned `blocking`): connects to the head and subscribes to membership,
///   loads the job's data, plans batches (the CBC MILP may take its whole time limit), looks up
///   device actors, reads and writes the checkpoint index.
/// - `scheduled_job`: what callers hold: status, metrics and log lines, watchers, cancel, wait.
///   With a state store it records the job there (state_store.hpp): its spec and status, and
///   each committed step's metrics line, appended before any device applies the commit (the
///   line is the commit's record: a restarted head continues after the last one).

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "flexsp/actors/data_source.hpp"
#include "flexsp/actors/job_controller.hpp"
#include "flexsp/actors/job_spec.hpp"
#include "flexsp/actors/remote.hpp"
#include "flexsp/actors/state_store.hpp"
#include "flexsp/actors/training_messages.hpp"
#include "flexsp/core/actor.hpp"
#include "flexsp/core/actor_system.hpp"
#include "flexsp/core/net/transport.hpp"

namespace flexsp::actors {

/// Where a job's actors run.
struct scheduler_config {
  net::endpoint head;
  net::transport_config transport;
  std::shared_ptr<actor_host> host;      ///< the head process's actor host (devices reach the scheduler here)
  core::actor_system* system = nullptr;  ///< runs the scheduler actors and their workers
  std::shared_ptr<state_store> store;    ///< where jobs are recorded; none when null
  /// Where a job that names no checkpoint directory checkpoints (`<root>/<job id>`), every
  /// `default_checkpoint_every` steps unless it says; empty: such a job has none. Devices
  /// write there, so every node must reach it at this path (one host, or a shared file system).
  std::string default_checkpoint_root;
  std::uint32_t default_checkpoint_every = 50;
};

/// A job as a state store recorded it.
struct job_record {
  job_spec spec;
  job_status status;
  std::vector<std::string> metrics;  ///< one JSON line per committed step
  std::vector<std::string> logs;     ///< each "UTC-time text"
  std::vector<std::string> events;   ///< JSON lines, as scheduled_job::events
  std::uint64_t incarnation = 0;     ///< heads that took it back so far
  /// What a head taking it back continues from (derived from the last metrics line).
  recovered_progress progress() const;
};

/// Every job `store` recorded, by id; a record that cannot be read is skipped with a warning.
expected<std::map<std::string, job_record>> load_job_records(state_store& store);

class scheduler_actor;
class job_worker;
class device_actor;
class update_sink;

/// The scheduler actor's first message: where devices reach it.
struct begin_job {
  remote_address self;
};
/// From the worker: it connected, subscribed and loaded the data.
struct job_ready {
  job_started started;
  std::shared_ptr<const batch_source> data;
};
/// From the worker: the job cannot start.
struct job_start_failed {
  std::string reason;
};

/// A submitted job as its callers see it. Thread-safe.
class scheduled_job : public std::enable_shared_from_this<scheduled_job> {
public:
  using metrics_fn = std::function<void(const step_metrics&)>;
  using log_fn = std::function<void(const std::string&)>;

  /// Spawns the job's scheduler actor into `config.system` and makes it reachable in
  /// `config.host`. `on_metrics` and `on_log` run on the scheduler actor's thread.
  static std::shared_ptr<scheduled_job> start(std::string job_id, job_spec spec, scheduler_config config,
                                           metrics_fn on_metrics = {}, log_fn on_log = {});
  /// Takes back a recorded job: an ended one is only listed; a running one starts again from
  /// its last recorded step (job_started::recovered).
  static std::shared_ptr<scheduled_job> resume(std::string job_id, job_record record, scheduler_config config);

  /// Asks the job to stop after aborting the step in flight; no-op once it ended.
  void cancel();
  /// Blocks until the job ended; returns its final status.
  job_status wait();
  job_status status() const;
  const std::string& id() const { return id_; }
  /// From now on, tells `subscriber` a job_update for every committed step and one at the end
  /// (at once when the job already ended).
  void watch(remote_address subscriber);
  /// Metrics lines (JSON) of committed steps from `from` on, and log lines.
  std::vector<std::string> metrics_since(std::size_t from) const;
  /// The latest metrics line ("" before the first commit).
  std::string last_metrics() const;
  std::vector<std::string> logs() const;
  /// The job's typed events (job_event) as JSON lines: time_ms (wall clock), kind, step (steps
  /// committed when it happened), detail. Recorded in the state store with the logs.
  std::vector<std::string> events() const;
  /// The spec the job was submitted with.
  const job_spec& spec() const { return spec_; }

private:
  friend class scheduler_actor;
  scheduled_job(std::string id, job_spec spec, scheduler_config config, metrics_fn m, log_fn l);
  // Called by the scheduler actor.
  void update(const job_status& s);
  void add_log(const std::string& line);
  void add_event(const job_event& e);
  void add_metrics(const step_metrics& m);
  void finish(job_state state, const std::string& message);
  void notify_watchers(const job_update& update);
  /// Writes the job's record (spec and status) to the store, if any. Under `mutex_`.
  void save_locked();
  void keep(expected<void> written, std::string_view what);
  void launch();

  std::string id_;
  job_spec spec_;
  scheduler_config config_;
  metrics_fn on_metrics_;
  log_fn on_log_;

  mutable std::mutex mutex_;
  std::condition_variable changed_;
  job_status status_;
  std::vector<std::string> metrics_;
  std::vector<std::string> logs_;
  std::vector<std::string> events_;
  std::vector<core::actor_ref<update_sink>> watchers_;  // proxies of job clients' sinks
  core::actor_ref<scheduler_actor> actor_;  // reset when the job ends
  std::uint64_t incarnation_ = 0;
  std::optional<recovered_progress> recovered_;
  bool store_failing_ = false;
};

/// The job's scheduler actor (see the file comment). Devices reach it through a proxy
/// (`actor_host::proxy<scheduler_actor>`), with the three replies of the step protocol.
class scheduler_actor : public core::actor<scheduler_actor> {
public:
  using interface = core::interface<grad_ready, step_failed, device_state,  // from devices
                                    begin_job, job_ready, job_start_failed, cancel_requested, membership_event,
                                    devices_found, devices_missing, plan_ready, index_written, timer_fired>;

  explicit scheduler_actor(std::shared_ptr<scheduled_job> job);
  ~scheduler_actor() override;

  void handle(begin_job m);
  void handle(job_ready m);
  void handle(job_start_failed m);
  void handle(cancel_requested m);
  void handle(grad_ready m) { feed(m); }
  void handle(step_failed m) { feed(m); }
  void handle(device_state m) { feed(m); }
  void handle(membership_event m) { feed(m); }
  void handle(devices_found m) { feed(m); }
  void handle(devices_missing m) { feed(m); }
  void handle(plan_ready m) { feed(m); }
  void handle(index_written m) { feed(m); }
  void handle(timer_fired m) { feed(m); }

  /// A device's proxy went down: its process is gone or cannot be reached.
  void on_down(const core::down_msg& m) override;
  void on_stop(core::exit_reason reason) override;

private:
  template <class E>
  void feed(const E& e) {
    if (!controller_) return;
    controller_->on(e);
    drain();
  }
  void drain();
  /// Ends the job and stops this actor.
  void end(job_state state, const std::string& message);
  /// Ends the job: the worker stops, devices no longer reach this actor, the handle is told.
  void release(job_state state, const std::string& message);
  core::actor_ref<device_actor> device_ref(std::uint32_t device, const remote_address& where);

  std::shared_ptr<scheduled_job> job_;
  std::uint64_t published_ = 0;
  core::actor_ref<job_worker> worker_;
  std::shared_ptr<const batch_source> data_;
  std::optional<job_controller> controller_;
  remote_address self_address_;
  /// Proxies of the job's devices (monitored: a proxy that goes down is a device lost).
  std::map<std::uint32_t, core::actor_ref<device_actor>> devices_;
  bool cancel_pending_ = false;
  bool ended_ = false;
};

}  // namespace flexsp::actors
