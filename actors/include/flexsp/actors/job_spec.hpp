#pragma once
/// \file
/// A training job's specification, as users write it in JSON:
///
/// ```json
/// {"name": "demo", "steps": 30, "batch_size": 32, "strategy": "flexsp", "seed": 1,
///  "model": {"layers": 2, "d_model": 64, "heads": 4, "vocab": 256, "max_seq": 1024},
///  "data": {"synthetic": "wikipedia"},            // or {"path": "docs.jsonl"} / a text directory,
///                                                  // or {"prepared": DIR} / {"mixture": [...]}
///  "optimizer": {"lr": 0.003, "weight_decay": 0.0, "warmup": 5},
///  "checkpoint": {"dir": "ckpt", "every": 10, "keep": 2}}   // "dir": "none": no checkpoints
/// ```
/// Every key but `steps` has a default. Extra keys: `calibrate` (bool, default true: a short
/// profiling phase fits the planner's cost model to the devices), `collective_timeout_ms`
/// (default 10000), `planner_time_limit_ms` (default 200), `min_devices` (default 1),
/// `memory_limit_gb` (per device; default: what each device reports: a GPU's memory, or the
/// host's memory shared by the node's CPU devices), `sharding` ("replicate", the default;
/// "zero3"; "hsdp") with `shard_group` (hsdp: devices per shard group; 0, the default: one node's
/// devices), `fault` (retry budget, grace period and timeouts; see `fault_settings`).
/// Parsing rejects unknown keys and wrong types; `validate` checks ranges. Every message names
/// the field (`model.d_model: must be divisible by model.heads (4)`).

#include <cstdint>
#include <optional>
#include <vector>
#include <string>
#include <string_view>

#include "flexsp/actors/membership.hpp"
#include "flexsp/actors/training_messages.hpp"
#include "flexsp/core/error.hpp"
#include "flexsp/kernels/model.hpp"

namespace flexsp::actors {

/// How the job rides out failures (`"fault": {...}` in the spec). Every field has a default.
struct fault_settings {
  /// Aborted attempts one step may have before the job fails.
  std::uint32_t max_retries = 20;
  /// After an attempt failed with no membership change, how long to wait for the head to
  /// report a lost node before re-running (a failed collective usually means a node died).
  std::uint32_t membership_grace_ms = 300;
  /// An attempt fails when no device reported for this long; 0 = 3 x collective_timeout_ms
  /// + 10 s.
  std::uint32_t device_timeout_ms = 0;
  /// How long a device may take to answer `join_job` (loading a checkpoint included).
  std::uint32_t join_timeout_ms = 30000;
  /// How long to wait for `min_devices` devices at the start and after losing all of them.
  std::uint32_t device_wait_ms = 60000;
  /// How long the device writing a checkpoint may take.
  std::uint32_t checkpoint_timeout_ms = 60000;
  /// Checkpoints that may fail in a row before the job fails (0: never fail the job for them).
  std::uint32_t max_checkpoint_failures = 3;

  /// `device_timeout_ms` with its default resolved.
  std::uint32_t device_timeout(std::uint32_t collective_timeout_ms) const {
    return device_timeout_ms ? device_timeout_ms : 3 * collective_timeout_ms + 10000;
  }
};

/// How a job plans its batches: `flexsp`, `batchada`, or `static:D` (every sequence at degree
/// D, halved until it fits the devices there are).
struct job_strategy {
  strategy_kind kind = strategy_kind::flexsp;
  std::uint32_t degree = 0;  ///< static_degree only (>= 1)

  /// "flexsp", "batchada", "static:8".
  std::string to_string() const;
  /// errc::invalid_argument naming the accepted forms.
  static expected<job_strategy> parse(std::string_view text);
  friend bool operator==(const job_strategy&, const job_strategy&) = default;
};

struct job_spec {
  std::string name = "job";
  model_shape model;
  std::string data_path;                 ///< JSON-lines file (`text` field) or a directory of text files
  std::string synthetic = "wikipedia";   ///< long-tail length generator when no path is given
  /// Prepared datasets (`flexsp data prepare`) and their mixture weights: `"data": {"prepared":
  /// DIR}` or `{"mixture": [{"prepared": DIR, "weight": W}, ...]}`.
  struct prepared_data {
    std::string dir;
    double weight = 1;
    friend bool operator==(const prepared_data&, const prepared_data&) = default;
  };
  std::vector<prepared_data> prepared;
  /// Prepared documents longer than model.max_seq: cut into max_seq pieces, or left out
  /// (`"long_documents": "split" | "drop"`; both are counted in the job's log).
  bool drop_long_documents = false;
  std::uint32_t batch_size = 64;
  std::uint64_t steps = 0;
  job_strategy strategy;
  std::uint64_t seed = 1;
  optimizer_settings optimizer;
  std::uint32_t warmup = 5;              ///< linear learning-rate warmup, steps
  /// Empty: the cluster's default checkpoint directory, if it has one (`"dir": "none"` sets
  /// `checkpoints_off`: none at all).
  std::string checkpoint_dir;
  std::uint32_t checkpoint_every = 0;    ///< 0: the cluster's default interval, or only at the end
  std::uint32_t checkpoint_keep = 2;     ///< newest checkpoint files kept; 0: all
  bool checkpoints_off = false;          ///< `"checkpoint": {"dir": "none"}`
  bool calibrate = true;
  std::uint32_t collective_timeout_ms = 10000;
  double planner_time_limit_ms = 200;
  /// Every step, micro-batches whose layout-search plan is not proven within `milp_min_gap` of
  /// its lower bound get the CBC MILP (warm-started from that plan, within
  /// planner_time_limit_ms; the better plan is kept). 0: CBC on every unproven micro-batch.
  /// milp false: the layout search alone.
  bool milp = true;
  double milp_min_gap = 0.05;
  std::uint32_t min_devices = 1;
  /// Usable memory per device, GB (GiB); 0: the smallest capacity the job's devices report.
  /// The planner keeps every group's predicted peak (model states + activations) under it.
  double memory_limit_gb = 0;
  /// Which devices the job trains on: cpu, cuda, or none for "auto" (cuda when the cluster
  /// offers a CUDA device when the job starts, cpu otherwise). A job uses one kind: replicas
  /// must stay bitwise equal, and CPU and GPU kernels round differently.
  std::optional<device_kind> backend;
  /// Collective library: gloo (TCP, any device), nccl (CUDA devices), or none for "auto" (nccl
  /// on cuda, gloo on cpu).
  std::optional<collective_library> collectives;
  /// Model states: full replicas on every device, ZeRO-3 over all devices, or HSDP (ZeRO-3 within
  /// shard groups of `shard_group` devices, 0: one node's, replicated across groups).
  sharding_mode sharding = sharding_mode::replicate;
  std::uint32_t shard_group = 0;
  fault_settings fault;

  /// Learning rate of `step` (0-based): linear warmup to optimizer.lr over `warmup` steps.
  float lr_at(std::uint64_t step) const;
};

/// Parses and validates. errc::invalid_argument naming the field for bad JSON, an unknown key,
/// a wrong type or a value out of range; `steps` is required.
expected<job_spec> parse_job_spec(std::string_view json_text);

/// Range checks (also run by parse_job_spec).
expected<void> validate_job_spec(const job_spec& spec);

/// Checks a valid spec against what the cluster offers now (`nodes`, its members; lost ones are
/// ignored): the device kind the job would train on (`backend`, or what `collectives` and the
/// model's precisions need) exists, and there are enough such devices for `min_devices` and a
/// `static:D` strategy. errc::invalid_argument naming the field and what the cluster has.
expected<void> check_job_fits(const job_spec& spec, const std::vector<node_record>& nodes);

/// Creates the checkpoint directory if needed and checks that a file can be written there.
/// errc::invalid_argument naming `checkpoint.dir`: relative paths are refused (resolve them
/// against the submitter's directory first), and so is a directory that cannot be created or
/// written.
expected<void> check_checkpoint_dir(const std::string& dir);

/// The spec as JSON (parse_job_spec reads it back).
std::string job_spec_to_json(const job_spec& spec);

/// A named model shape: `gpt2-tiny` (2 layers, d_model 64, 4 heads; the default), `gpt2-small`
/// (12 x 768, 12 heads: GPT-2's 124M body), `llama-tiny` (2 x 64, 4 heads, 2 K/V heads, SwiGLU
/// 176) and `llama-small` (12 x 768, 12 heads, 4 K/V heads, SwiGLU 2048). Sets the family and
/// the dimensions, not the vocabulary, the context or the precisions.
struct model_preset {
  std::string_view name;
  std::string_view description;
};
const std::vector<model_preset>& model_presets();
/// Applies preset `name` to `shape`; errc::invalid_argument naming `model.preset` and the known
/// presets otherwise.
expected<void> apply_model_preset(std::string_view name, model_shape& shape);

/// The kernels' model configuration of a job's model shape.
kernels::model_config kernel_config(const model_shape& shape);

}  // namespace flexsp::actors
