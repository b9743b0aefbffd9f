#pragma once
/// \file
/// The messages of a training job between its scheduler actor and its device actors, and of the
/// job API between clients and the head's "jobs" actor. They are declared once, in
/// actors/schema/training.capnp: capnpc-flexsp generates their C++ structs (`join_job`,
/// `step_plan`, ...: snake_case names, fields in schema order, schema defaults) and wire codecs
/// into training.msg.hpp. Adding a message is adding it to the schema and a handler.
///
/// Protocol of one step (DESIGN section 2): the scheduler sends every device of the attempt a
/// `step_plan`; each device runs its micro-batches, all-reduces gradients over `world` and
/// answers `grad_ready` (or `step_failed`); once every device of the attempt is ready with the
/// same state checksum the scheduler sends `commit_step` and the devices apply the optimizer.
/// `abort_attempts` makes devices drop every attempt below the given one.

#include <string>

#include "flexsp/actors/training.msg.hpp"

namespace flexsp::actors {

/// Why only CUDA devices can train this shape ("bf16 attention runs on CUDA devices only"), or
/// empty when any device can.
inline std::string cuda_only_reason(const model_shape& m) {
  if (m.attention == attention_precision::bf16) return "bf16 attention runs on CUDA devices only";
  if (m.matmul == matmul_precision::tf32) return "tf32 GEMMs run on CUDA devices only";
  return {};
}

/// True for the states a job ends in (succeeded, failed, cancelled).
inline bool is_terminal(job_state s) {
  return s == job_state::succeeded || s == job_state::failed || s == job_state::cancelled;
}
inline bool terminal(const job_info& j) { return is_terminal(j.state); }

}  // namespace flexsp::actors
