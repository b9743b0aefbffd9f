#pragma once
/// \file
/// The scheduler actor: one per job, on the head. It owns the job's data stream and planner,
/// drives every step through the two-phase commit, and keeps the job alive through membership
/// changes.
///
/// Lifecycle: discover the devices of the alive nodes (`device/<node>/<device>` names) ->
/// `join_job` on each (fresh parameters from the seed, or the latest checkpoint) -> optional
/// calibration (timing probes over every SP degree; `scheduler::fit_profile` turns them into
/// the planner's profile) -> steps -> final replica check -> `leave_job`.
///
/// One step: batch i -> plan (made while step i-1 ran, when the devices did not change) ->
/// `step_plan` to every device (tagged with step, membership epoch and attempt) -> `grad_ready`
/// from all, with equal state checksums -> `commit`. A lost node, a `step_failed` or a silent
/// device aborts the attempt everywhere (`abort`), and the same batch is re-planned for the
/// devices left and re-run, so a step is committed exactly once. A joining node's devices get
/// `join_job` at the next step boundary and receive the replica state by broadcast from a live
/// replica as the first part of their first step. A checksum mismatch fails the job.
///
/// The actor's handlers only queue; the job runs on its own thread (planning and waiting must
/// not hold the actor host's loop thread).

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <variant>
#include <vector>

#include "flexsp/actors/job_spec.hpp"
#include "flexsp/actors/membership.hpp"
#include "flexsp/actors/remote.hpp"
#include "flexsp/actors/training_messages.hpp"
#include "flexsp/core/net/transport.hpp"

namespace flexsp::actors {

/// What happened in one committed step.
struct step_metrics {
  std::uint64_t step = 0;             ///< 0-based
  std::uint64_t epoch = 0;            ///< membership epoch of the committed attempt
  std::uint32_t devices = 0;
  double loss = 0;                    ///< mean token loss of the batch (nats)
  std::uint64_t tokens = 0;
  std::uint32_t sequences = 0;
  std::vector<std::vector<int>> plan; ///< per micro-batch, the degrees of its groups
  std::string strategy;
  double solve_ms = 0;                ///< planner time for this batch
  int milp_solves = 0;                ///< CBC solves in this batch's plan
  double milp_gap = 0;                ///< largest gap CBC reported against its own bound
  double predicted_ms = 0;            ///< the cost model's step time
  double step_ms = 0;                 ///< plan sent -> commit sent, committed attempt
  double compute_ms = 0;              ///< max over devices of forward/backward time
  double comm_ms = 0;                 ///< max over devices of gradient all-reduce and state sync
  double overhead_ms = 0;             ///< scheduler time on the critical path (planning not hidden, messaging, commit)
  double group_error = 0;             ///< mean |predicted - measured| / measured over the step's groups
  /// Per group: micro-batch, degree, predicted ms, measured ms (the slowest member's forward/backward).
  struct group_time {
    std::uint32_t micro_batch = 0;
    int degree = 0;
    double predicted_ms = 0;
    double measured_ms = 0;
  };
  std::vector<group_time> groups;
  std::uint32_t retried = 0;          ///< aborted attempts of this step
  double recovery_ms = 0;             ///< first abort of this step -> commit (0 when not retried)
  std::int64_t committed_at_ms = 0;   ///< wall clock (Unix ms) when Commit was sent
  std::string to_json() const;
};

enum class job_state : std::uint8_t { pending, running, succeeded, failed, cancelled };
std::string_view to_string(job_state s) noexcept;

struct job_status {
  std::string id;
  std::string name;
  job_state state = job_state::pending;
  std::uint64_t steps_done = 0;   ///< committed steps (including those before a resume)
  std::uint64_t steps_total = 0;
  std::uint64_t resumed_from = 0; ///< first step run by this job (after a checkpoint)
  std::uint32_t devices = 0;
  double first_loss = 0;
  double last_loss = 0;
  std::string error;
  std::string calibration;        ///< the fitted profile, JSON ("" when not calibrated)
  std::uint64_t final_checksum = 0;
  bool terminal() const { return state == job_state::succeeded || state == job_state::failed || state == job_state::cancelled; }
};

/// Where the scheduler runs.
struct scheduler_config {
  net::endpoint head;
  net::transport_config transport;
  std::shared_ptr<actor_host> host;  ///< the head process's actor host
  /// How long to wait for `min_devices` devices at the start and after losing all of them.
  std::chrono::milliseconds device_wait{60'000};
};

class scheduler_actor : public std::enable_shared_from_this<scheduler_actor> {
public:
  using metrics_fn = std::function<void(const step_metrics&)>;
  using log_fn = std::function<void(const std::string&)>;

  /// Spawns the actor into `config.host` and starts the job's thread.
  static std::shared_ptr<scheduler_actor> start(std::string job_id, job_spec spec, scheduler_config config,
                                                metrics_fn on_metrics = {}, log_fn on_log = {});
  ~scheduler_actor();

  // Actor messages from devices (any thread; they only queue).
  void handle(grad_ready m);
  void handle(step_failed m);
  void handle(device_state m);

  /// Asks the job to stop after aborting the step in flight. Thread-safe.
  void cancel();
  /// Blocks until the job ended; returns its final status.
  job_status wait();
  job_status status() const;
  const std::string& id() const { return id_; }
  /// From now on, tells `subscriber` a job_update for every committed step and one at the end
  /// (at once when the job already ended). Thread-safe.
  void watch(remote_address subscriber);
  /// Metrics lines (JSON) of committed steps from `from` on, and log lines.
  std::vector<std::string> metrics_since(std::size_t from) const;
  std::vector<std::string> logs() const;

  struct runner;

private:
  scheduler_actor(std::string id, job_spec spec, scheduler_config config, metrics_fn m, log_fn l);
  void push(std::function<void(runner&)> event);
  /// Tells every watcher `update`; forgets watchers that can no longer be reached.
  void notify_watchers(const job_update& update);

  std::string id_;
  job_spec spec_;
  scheduler_config config_;
  metrics_fn on_metrics_;
  log_fn on_log_;
  std::uint64_t actor_id_ = 0;

  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<std::function<void(runner&)>> inbox_;
  bool cancel_requested_ = false;
  job_status status_;
  std::vector<std::string> metrics_;
  std::vector<std::string> logs_;
  std::vector<remote_address> watchers_;
  std::thread thread_;

  friend struct runner;
};

}  // namespace flexsp::actors
