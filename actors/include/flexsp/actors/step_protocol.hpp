#pragma once
/// \file
/// The pure logic of a training step, kept apart from threads and sockets so that it is unit
/// tested directly: the batch, cutting a planner plan into each device's `step_plan`, and the
/// scheduler's side of the two-phase commit.

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "flexsp/actors/training_messages.hpp"
#include "flexsp/core/error.hpp"
#include "flexsp/scheduler/plan.hpp"

namespace flexsp::actors {

/// One global batch: sequence lengths and their token ids (length + 1 ids each).
struct training_batch {
  std::uint64_t index = 0;  ///< position of the batch in the job's data stream
  std::vector<std::int64_t> lengths;
  std::vector<std::vector<std::int32_t>> tokens;
  std::uint64_t total_tokens() const;
};

/// Header fields every device's part of a step shares.
struct step_header {
  std::string job_id;
  std::uint64_t step = 0;
  std::uint64_t epoch = 0;
  std::uint64_t attempt = 0;
  std::int64_t sync_source = -1;
  bool calibrate = false;
  std::uint64_t comm_epoch = 0;
};

/// Cuts `p` (its device ids are positions in `world`, which lists job device indices in
/// ascending order) into one `step_plan` per device of `world`. Every device gets every
/// micro-batch (an empty group where it idles), so all of them see the same micro-batch order.
/// errc::invalid_argument when the plan names a device outside the world or a sequence outside
/// the batch.
expected<std::map<std::uint32_t, step_plan>> slice_plan(const scheduler::plan& p, const std::vector<std::uint32_t>& world,
                                                        const training_batch& batch, const step_header& header);

/// Who keeps which shard of the model states in a world (sharded jobs).
struct shard_assignment {
  std::map<std::uint32_t, std::vector<std::uint32_t>> group;     ///< device -> its shard group, ascending
  std::map<std::uint32_t, std::vector<std::uint32_t>> replicas;  ///< device -> devices keeping its shard
  std::map<std::uint32_t, std::pair<int, int>> shard;            ///< device -> (count, index)
  int group_size = 0;  ///< devices per shard group (0: not sharded)
};

/// The shard groups of `world` (ascending job device ids) under `mode`: none for replicate; one
/// group of every device for zero3; for hsdp, consecutive groups of `group_size` devices (0: a
/// node's devices, `per_node`), shrunk to the largest divisor of the world's size not above it
/// so that every group cuts the states the same way.
shard_assignment assign_shards(const std::vector<std::uint32_t>& world, sharding_mode mode, std::uint32_t group_size,
                               std::uint32_t per_node);

/// Where a transfer takes the old shards from: devices that hold shard r of some count for
/// every r (`held`: device -> (count, index); count 0: none), preferring the count held most.
/// Empty when no count is complete (a shard without a live copy).
std::vector<std::uint32_t> shard_sources(const std::map<std::uint32_t, std::pair<int, int>>& held);

/// The scheduler's side of the commit protocol for one attempt of one step.
class commit_tracker {
public:
  enum class outcome : std::uint8_t {
    pending,   ///< waiting for more devices
    commit,    ///< every member is ready with the same checksum: send Commit
    mismatch,  ///< replicas diverged: stop the job
    ignored,   ///< a report of another step or attempt, or from a non-member, or a duplicate
  };

  /// Starts tracking `attempt` of `step` with these members.
  void start(std::uint64_t step, std::uint64_t attempt, std::set<std::uint32_t> members);
  /// Records one device's report.
  outcome on_ready(const grad_ready& r);
  /// True when `f` is about the attempt being tracked.
  bool concerns(const step_failed& f) const { return active_ && f.step == step_ && f.attempt == attempt_; }
  /// Stops tracking (the attempt was aborted or committed).
  void reset() { active_ = false; }

  bool active() const { return active_; }
  std::uint64_t step() const { return step_; }
  std::uint64_t attempt() const { return attempt_; }
  const std::map<std::uint32_t, grad_ready>& reports() const { return reports_; }
  /// For a mismatch: which devices reported which checksum.
  std::string mismatch_detail() const;

private:
  bool active_ = false;
  std::uint64_t step_ = 0;
  std::uint64_t attempt_ = 0;
  std::set<std::uint32_t> members_;
  std::map<std::uint32_t, grad_ready> reports_;
};

}  // namespace flexsp::actors
