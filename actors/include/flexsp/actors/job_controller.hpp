#pragma once
/// \file
/// The job controller: everything a job's scheduler decides, as a deterministic state machine.
///
/// Events go in (`on(...)`): the membership snapshot and changes, device replies (`grad_ready`,
/// `step_failed`, `device_state`), timers, plans and lookups that the shell made, a cancel.
/// Commands come out (`take_commands()`): messages to devices, plan requests, device lookups,
/// checkpoint index writes, timers to start, metrics and log lines, the job's end. There are no
/// threads, sockets, files or wall-clock reads inside: time comes from the `core::clock` given
/// at construction (a `core::manual_clock` in tests), so every fault scenario is a unit test.
/// The scheduler actor (scheduler_actor.hpp) is the shell that runs it on the actor runtime.
///
/// The job's life: wait for `min_devices` devices of the job's backend (join each: fresh
/// parameters from the seed, or the latest checkpoint) -> calibration probes (optional) ->
/// steps -> final replica check -> `leave_job` to every device.
///
/// One step: batch i -> plan (asked for while step i-1 runs, used when the devices did not
/// change) -> `step_plan` to every device, tagged with step, epoch and attempt -> `grad_ready`
/// from all with equal checksums -> `commit_step`. A lost member, a `step_failed`, a failed send
/// or a device silent past `fault.device_timeout_ms` aborts the attempt everywhere; the same
/// batch is re-planned for the devices left and re-run, so a step is committed exactly once. A
/// failure with no membership change first waits up to `fault.membership_grace_ms` for the head
/// to report a loss (the collective usually failed because a node died), and each step gets
/// `fault.max_retries` aborted attempts. Devices of a joining node get `join_job` at the next
/// step boundary and the replica state from a live replica in their first step. When no device
/// holds the state any more, every device loads the latest checkpoint and the steps after it run
/// again (no checkpoint: the job fails). Diverged replica checksums fail the job.

#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <variant>
#include <vector>

#include "flexsp/actors/data_source.hpp"
#include "flexsp/actors/job_spec.hpp"
#include "flexsp/actors/membership.hpp"
#include "flexsp/actors/remote.hpp"
#include "flexsp/actors/step_protocol.hpp"
#include "flexsp/actors/training_messages.hpp"
#include "flexsp/core/clock.hpp"
#include "flexsp/scheduler/fit.hpp"
#include "flexsp/scheduler/plan.hpp"
#include "flexsp/scheduler/profile.hpp"

namespace flexsp::actors {

/// What happened in one committed step.
struct step_metrics {
  std::uint64_t step = 0;             ///< 0-based; the JSON line says step + 1 (the N-th step, as consoles count)
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
  double step_ms = 0;                 ///< plan sent -> commit sent, committed attempt (+ planning not hidden)
  double compute_ms = 0;              ///< max over devices of forward/backward time
  double comm_ms = 0;                 ///< max over devices of gradient all-reduce and state sync
  double overhead_ms = 0;             ///< scheduler time on the critical path (planning not hidden, messaging, commit)
  double group_error = 0;             ///< mean |predicted - measured| / measured over the step's groups
  double peak_memory_mb = 0;          ///< max over devices of their allocations at their highest (MiB)
  double predicted_memory_mb = 0;     ///< max over the plan's groups of the planner's memory per device (MiB)
  double state_mb = 0;                ///< max over devices of the model states each keeps (MiB; sharding divides them)
  double shard_comm_ms = 0;           ///< sharded: max over devices of gathers waited for and reduce-scatters
  /// Per group: micro-batch, degree, predicted ms, measured ms (the slowest member's forward/backward).
  struct group_time {
    std::uint32_t micro_batch = 0;
    int degree = 0;
    double predicted_ms = 0;
    double measured_ms = 0;
  };
  std::vector<group_time> groups;
  std::uint64_t state_checksum = 0;   ///< the replicas' checksum of the state this step started from
  std::uint32_t retried = 0;          ///< aborted attempts of this step
  double recovery_ms = 0;             ///< first abort of this step -> commit (0 when not retried)
  std::int64_t committed_at_ms = 0;   ///< wall clock (Unix ms) when the step was committed; stamped by the shell
  std::string to_json() const;
};

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
  std::uint64_t final_checksum = 0;  ///< the replicas' state checksum, set when the job succeeded
  std::uint64_t aborted_attempts = 0;  ///< step attempts aborted and re-planned, over the whole job
  std::uint64_t recovered_steps = 0;   ///< steps committed after at least one aborted attempt
  bool terminal() const { return is_terminal(state); }
};

/// A checkpoint the job can resume from (one line of `<dir>/latest.json`).
struct checkpoint_point {
  std::uint64_t step = 0;  ///< steps done when it was written; the data position
  std::string file;        ///< absolute path of the checkpoint file
  std::uint64_t seed = 0;
  std::uint64_t checksum = 0;
};

/// Reads `<dir>/latest.json`: nullopt when there is none, errc::invalid_argument when it is
/// unreadable or was written with another seed.
expected<std::optional<checkpoint_point>> read_checkpoint_index(const std::string& dir, std::uint64_t seed);
/// Writes `<dir>/latest.json` atomically (temporary file + rename) for `point`, naming `job`.
expected<void> write_checkpoint_index(const std::string& dir, const checkpoint_point& point, const std::string& job);

// ---- events ----------------------------------------------------------------------------------

/// What a restarted head's state store recorded of a job that was running.
struct recovered_progress {
  std::uint64_t steps_done = 0;          ///< committed steps (the last recorded step + 1)
  std::uint64_t resumed_from = 0;
  double first_loss = 0;
  double last_loss = 0;
  std::uint64_t aborted_attempts = 0;
  /// The replicas' checksum of the state the last committed step started from (0: unknown).
  std::uint64_t last_step_checksum = 0;
  /// How many heads have taken the job back (1 the first time): the attempts and communicator
  /// epochs of this run start above those of every earlier run.
  std::uint64_t incarnation = 1;
};

/// The job's start: the membership it starts from and the checkpoint to resume from.
struct job_started {
  std::uint64_t epoch = 0;
  std::vector<node_record> nodes;            ///< alive nodes
  std::optional<checkpoint_point> resume;
  /// Set when a restarted head takes the job back: it continues from the devices that still
  /// hold the state of its last committed step (from `resume` when none does).
  std::optional<recovered_progress> recovered;
};
/// Answer to `lookup_devices`: the actor of every requested device of `node`.
struct devices_found {
  std::uint64_t node = 0;
  std::vector<std::pair<std::string, remote_address>> devices;  ///< device name ("cpu:0") -> actor
};
/// Answer to `lookup_devices` when some device actor is not registered (yet).
struct devices_missing {
  std::uint64_t node = 0;
  std::string reason;
};
/// Answer to `request_plan`.
struct plan_ready {
  std::uint64_t request = 0;
  expected<scheduler::plan> plan;
};
/// Answer to `write_index`: empty `error` when the index now names the checkpoint.
struct index_written {
  std::uint64_t step = 0;
  std::string error;
};
/// A timer started with `start_timer`.
struct timer_fired {
  std::uint64_t id = 0;
};
/// A message to a device could not be sent (its connection is known to be down).
struct send_failed {
  std::uint32_t device = 0;
  std::string reason;
};
struct cancel_requested {};
/// A device's actor cannot be reached any more (its connection was lost or its process is
/// gone): it leaves the job at once; while its node is a member it is looked up again and
/// rejoins at a later step boundary.
struct device_down {
  std::uint32_t device = 0;
  std::string reason;
};

// ---- commands --------------------------------------------------------------------------------

using device_message = std::variant<join_job, step_plan, commit_step, abort_attempts, save_state, query_state, leave_job>;

/// Send `message` to job device `device` (report a failed send as `send_failed`).
struct send_to_device {
  std::uint32_t device = 0;
  remote_address address;
  device_message message;
};
/// Look up the actors of `devices` of `node` (names `device/<node>/<device>`); answer with
/// `devices_found` or `devices_missing`.
struct lookup_devices {
  std::uint64_t node = 0;
  std::vector<std::string> devices;
};
/// Plan `lengths` for `devices` devices; answer with `plan_ready`. The planner may be kept
/// between requests while (devices, devices_per_node, strategy, profile_version) stay equal.
struct request_plan {
  std::uint64_t request = 0;
  std::uint64_t step = 0;
  std::vector<std::int64_t> lengths;
  int devices = 0;
  int devices_per_node = 1;
  std::string strategy;
  scheduler::profile profile;
  std::uint64_t profile_version = 0;
  double time_limit_ms = 0;
  bool milp = true;
  double milp_min_gap = 0;
};
/// Write the checkpoint index; answer with `index_written`.
struct write_index {
  checkpoint_point point;
};
/// Send `timer_fired{id}` after `delay`.
struct start_timer {
  std::uint64_t id = 0;
  core::duration delay{};
};
struct publish_metrics {
  step_metrics metrics;
};
struct log_line {
  std::string text;
};
/// Something that happened to the job, typed for tools (the log line says it in words):
/// node_lost, attempt_aborted, devices_joined, rewind, state_lost, checkpoint, finished.
struct job_event {
  std::string kind;
  std::uint64_t step = 0;  ///< steps committed when it happened
  std::string detail;
};
/// The job ended; no command follows.
struct job_finished {
  job_state state = job_state::succeeded;
  std::string message;
};

using job_command = std::variant<send_to_device, lookup_devices, request_plan, write_index, start_timer, publish_metrics,
                                 log_line, job_event, job_finished>;

/// Where the controller runs.
struct controller_config {
  std::string job_id;
  /// The scheduler actor's address, for the devices' replies.
  remote_address self;
};

class job_controller {
public:
  /// `data` gives batch i as a pure function of i; `clock` is read for timings and deadlines.
  job_controller(controller_config config, job_spec spec, const batch_source& data, const core::clock& clock);

  void on(const job_started& e);
  void on(const membership_event& e);
  void on(const devices_found& e);
  void on(const devices_missing& e);
  void on(const plan_ready& e);
  void on(const index_written& e);
  void on(const timer_fired& e);
  void on(const send_failed& e);
  void on(const grad_ready& e);
  void on(const step_failed& e);
  void on(const device_state& e);
  void on(const cancel_requested& e);
  void on(const device_down& e);

  /// Commands produced since the last call, in order.
  std::vector<job_command> take_commands();

  const job_status& status() const noexcept { return status_; }
  /// The job's device set (ascending job device indices).
  std::vector<std::uint32_t> world() const;

private:
  enum class phase : std::uint8_t {
    created, gathering, calibrating, planning, running, grace, checkpointing, verifying, done,
  };
  struct device {
    std::uint64_t node = 0;
    device_id id;  ///< cpu:3, cuda:0 on its node
    remote_address address;
    bool synced = false;  ///< holds the job's replica state
    /// What its join reply said it holds: optimizer steps applied and the state's checksum (a
    /// device of a node that was lost and came back may still hold the committed state).
    std::optional<std::pair<std::uint64_t, std::uint64_t>> held;
    std::uint64_t memory = 0;  ///< bytes it may use, from its join reply (0: not reported)
    /// Sharded jobs: the shard (count, index) it keeps while synced; count 0 while synced means
    /// it holds its recipe (the seed or a checkpoint) and can cut any shard from it.
    std::pair<int, int> shard{0, 0};
  };
  struct prepared_plan {
    std::vector<std::uint32_t> world;
    std::uint64_t step = 0;
    std::uint64_t profile_version = 0;
    scheduler::plan plan;
  };
  struct outstanding_plan {
    std::uint64_t request = 0;
    std::vector<std::uint32_t> world;
    std::uint64_t step = 0;
    std::uint64_t profile_version = 0;
  };
  /// The attempt in flight.
  struct attempt_state {
    scheduler::plan plan;
    training_batch batch;
    std::vector<std::uint32_t> world;
    bool calibration = false;
    bool need_sync = false;
    core::time_point started{};
    double solve_ms = 0;
    double exposed_plan_ms = 0;
    std::uint64_t silence_timer = 0;
    core::time_point last_progress{};  ///< dispatch or the latest report
    shard_assignment shards;           ///< sharded jobs: who keeps which shard in this attempt
  };

  // helpers
  void emit(job_command c) { out_.push_back(std::move(c)); }
  void log(std::string line);
  void event(std::string kind, std::string detail) { emit(job_event{std::move(kind), step_, std::move(detail)}); }
  void send(std::uint32_t device, device_message m);
  std::uint64_t timer(core::duration delay);
  double ms_since(core::time_point t) const;
  void fail(std::string reason);
  void finish(job_state state, std::string message);
  /// The checkpoint being saved failed: logs it and drops it; fails the job (true) when too
  /// many failed in a row.
  bool checkpoint_failed(const std::string& why);
  bool sharded() const { return spec_.sharding != sharding_mode::replicate; }
  /// Devices the planner sees sharing the model states (scheduler::profile::state_shards).
  int state_shards(const std::vector<std::uint32_t>& w) const;

  // devices and membership
  void resolve_backend();
  void request_lookups();
  void send_joins(const std::vector<std::uint32_t>& fresh, const std::string& resume_from);
  void drop_device(std::uint32_t d);
  /// Job device `d`, a member or a joiner; null when it is neither.
  device* find_device(std::uint32_t d);
  void lose_node(std::uint64_t node, const std::string& reason, std::uint64_t epoch);
  bool joins_pending() const { return !joins_.empty(); }

  // the driver: called after every event; issues commands until the job must wait
  void advance();
  void gathering_done();
  void rewind_to_checkpoint();
  /// Every replica was lost: adopts devices that came back holding the last committed state
  /// (their node was falsely suspected, or partitioned). False when none did.
  bool adopt_returned_replicas();
  void step_boundary();
  void dispatch(scheduler::plan p, training_batch b, bool calibration, double solve_ms, double exposed_plan_ms);
  void attempt_failed(std::string reason, bool membership_changed);
  void abort_attempt();
  void committed();
  void next_step();
  void start_verify();
  void finish_verify();

  // planning
  int devices_per_node() const;
  std::string strategy_for(int n) const;
  void ask_plan(std::uint64_t step, const std::vector<std::uint32_t>& w, bool needed_now);
  scheduler::profile initial_profile() const;
  /// The memory limit of a plan over `w`: the spec's, else the smallest capacity its devices
  /// reported, else the initial profile's nominal one.
  double memory_limit_gb(const std::vector<std::uint32_t>& w) const;

  // calibration
  void start_calibration();
  void calibration_result(const std::vector<std::uint32_t>& w, const std::map<std::uint32_t, grad_ready>& reports);
  void refit();

  controller_config config_;
  job_spec spec_;
  const batch_source& data_;
  const core::clock& clock_;
  std::vector<job_command> out_;
  job_status status_;
  phase phase_ = phase::created;

  std::map<std::uint32_t, device> devices_;          // members of the job
  std::map<std::uint32_t, device> joiners_;          // found, joining at the next step boundary
  std::map<std::uint64_t, std::vector<device_id>> pending_nodes_;  // joined, devices not yet found
  std::set<std::uint64_t> looking_up_;               // lookups in flight
  std::set<std::uint64_t> lost_nodes_;
  std::uint32_t next_device_ = 0;
  std::optional<device_kind> backend_;  ///< decided when the first devices are offered
  collective_library collectives_ = collective_library::gloo;
  std::uint64_t epoch_ = 0;

  std::map<std::uint64_t, std::uint32_t> joins_;     // join tag -> device
  std::uint64_t join_timer_ = 0;
  bool rewinding_ = false;
  core::time_point gather_deadline_{};
  std::uint64_t tick_timer_ = 0;

  std::uint64_t step_ = 0;
  std::uint64_t start_step_ = 0;
  std::optional<checkpoint_point> latest_checkpoint_;
  bool state_exists_ = false;
  /// Steps below this one were committed before (their metrics are out): re-run only to rebuild
  /// the state on devices that never heard of their commit.
  std::uint64_t replay_until_ = 0;
  bool calibrated_ = false;
  int calibration_stage_ = 0;  // 1 = warm-up, 2 = probe
  training_batch calibration_batch_;
  scheduler::calibration_probe probe_;
  core::time_point calibration_started_{};

  std::uint64_t attempt_ = 0;
  std::uint64_t comm_epoch_ = 0;
  std::vector<std::uint32_t> comm_world_;
  commit_tracker tracker_;
  std::optional<attempt_state> current_;
  std::uint32_t retried_ = 0;
  std::optional<core::time_point> first_failure_;
  std::uint64_t grace_timer_ = 0;

  scheduler::profile profile_;
  std::uint64_t profile_version_ = 0;
  std::optional<prepared_plan> prepared_;
  std::optional<outstanding_plan> needed_plan_;   // the step waits for this one
  std::optional<outstanding_plan> ahead_plan_;    // planned while the previous step runs
  core::time_point plan_wait_started_{};
  bool waiting_for_plan_ = false;
  std::deque<scheduler::fit_sample> observed_;
  int steps_since_refit_ = 0;
  int refits_ = 0;  ///< online refits applied; the first comes after 2 steps, the next every 5

  std::map<std::uint64_t, std::uint32_t> save_tags_;  // checkpoint writes outstanding: tag -> device
  std::map<int, std::uint64_t> save_sums_;             // their fingerprints by shard index
  std::uint64_t save_timer_ = 0;
  std::optional<checkpoint_point> saving_;
  bool indexing_ = false;
  std::uint32_t checkpoint_failures_ = 0;  // in a row
  /// The checksum devices reported for the state step `first` started from (the state after
  /// the last commit, once some device of the current step reported).
  std::optional<std::pair<std::uint64_t, std::uint64_t>> state_checksum_;

  std::map<std::uint64_t, std::uint32_t> queries_;   // verify tag -> device
  std::map<std::uint32_t, std::uint64_t> query_sums_;
  std::map<std::uint32_t, std::pair<int, int>> query_shards_;
  std::uint64_t verify_timer_ = 0;

  std::uint64_t next_tag_ = 1;
  std::uint64_t next_timer_ = 1;
  std::uint64_t next_request_ = 1;
};

}  // namespace flexsp::actors
