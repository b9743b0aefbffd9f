# Messages of a training job between its scheduler actor and its device actors (payloads of
# wire.capnp's ActorMessage). Token ids travel with the plan; tensors never do (gradients and
# replica state move through the collectives).
@0xd1c0a7f3e2b54a19;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("flexsp::actors::schema");

# Closed value sets: enums here, generated as C++ enum classes with to_string / parse_*.
enum ModelFamily {
  gpt2 @0;                        # learned positions, LayerNorm, GELU MLP, tied output
  llama @1;                       # rotary positions, RMSNorm, grouped-query attention, SwiGLU
}

enum AttentionPrecision {
  fp32 @0;
  bf16 @1;                        # CUDA devices: fp32 arithmetic on bf16 Q, K, V and output
}

enum MatmulPrecision {
  fp32 @0;
  tf32 @1;                        # CUDA devices: tensor cores on fp32 data, fp32 accumulation
}

enum CollectiveLibrary {
  gloo @0;                        # TCP, any device (groups inside one process copy through memory)
  nccl @1;                        # CUDA devices
}

enum ShardingMode {
  replicate @0;                   # every device keeps all model states
  zero3 @1;                       # parameters, gradients and AdamW moments sharded over all devices
  hsdp @2;                        # sharded within shard groups, replicated across them
}

enum DeviceKind {
  cpu @0;
  cuda @1;
}

enum StrategyKind {
  flexsp @0;                      # FlexSP: SP groups of mixed degrees, planned per batch
  batchada @1;                    # the best single degree per batch
  staticDegree @2;                # every sequence at one degree ("static:D")
}

enum JobState {
  pending @0;
  running @1;
  succeeded @2;
  failed @3;
  cancelled @4;
}

struct ModelShape {
  layers @0 :UInt32 = 2;
  dModel @1 :UInt32 = 64;
  heads @2 :UInt32 = 4;
  vocab @3 :UInt32 = 256;
  maxSeq @4 :UInt32 = 1024;
  attention @5 :AttentionPrecision = fp32;
  matmul @6 :MatmulPrecision = fp32;
  family @7 :ModelFamily = gpt2;
  kvHeads @8 :UInt32 = 0;         # llama: K/V heads (0: heads)
  ffn @9 :UInt32 = 0;             # llama: SwiGLU width (0: 8/3 dModel rounded up to 32)
  ropeTheta @10 :Float32 = 10000;
  normEps @11 :Float32 = 1e-5;
}

struct OptimizerSettings {
  lr @0 :Float32 = 0.003;
  weightDecay @1 :Float32 = 0.0;
  beta1 @2 :Float32 = 0.9;
  beta2 @3 :Float32 = 0.95;
  eps @4 :Float32 = 1e-8;
  maxGradNorm @5 :Float32 = 1.0;
}

# Tell: join job `jobId` as job device `device`. The device answers with a DeviceState tell.
struct JoinJob {
  jobId @0 :Text;
  device @1 :UInt32;              # the device's index in the job (never reused)
  model @2 :ModelShape;
  seed @3 :UInt64;                # parameter initialisation seed (same on every replica)
  optimizer @4 :OptimizerSettings;
  schedulerHost @5 :Text;         # where GradReady / StepFailed go
  schedulerActor @6 :UInt64;
  collectiveTimeoutMs @7 :UInt32 = 10000;
  resumeFrom @8 :Text;            # checkpoint file to load; empty: fresh parameters
  collectiveHost @9 :Text = "127.0.0.1";  # interface the collectives listen on
  tag @10 :UInt64;                # echoed in the DeviceState reply
  collectives @11 :CollectiveLibrary = gloo;
  sharded @12 :Bool;              # states are sharded: the first plan says which shard to keep
}

# Tell (device -> scheduler): the answer to JoinJob, SaveState and QueryState, sent after every
# message queued before the request.
struct DeviceState {
  device @0 :UInt32;
  checksum @1 :UInt64;            # kernels::fingerprint of parameters and optimizer moments
  optimizerSteps @2 :UInt64;
  parameters @3 :UInt64;
  jobId @4 :Text;
  tag @5 :UInt64;
  error @6 :Text;                 # empty on success
  memoryCapacity @7 :UInt64;      # bytes the device may use (GPU: its allocations + free; host memory / CPU devices)
  shardCount @8 :UInt32 = 1;      # the shard of the states the checksum covers (count 0: none held yet)
  shardIndex @9 :UInt32;
}

# One micro-batch as seen by one device: its group (empty: idle in this micro-batch) and the
# group's sequences.
struct DeviceMicroBatch {
  group @0 :List(UInt32);         # job device indices of the group, ascending
  lengths @1 :List(UInt32);       # sequence lengths of the group
  tokens @2 :List(Int32);         # the group's sequences back to back, length + 1 ids each
  predictedMs @3 :Float64;
}

# Tell: run step `step` (attempt `attempt`) with this device's part of the plan.
struct StepPlan {
  jobId @0 :Text;
  step @1 :UInt64;
  epoch @2 :UInt64;               # membership epoch the plan was made for
  attempt @3 :UInt64;             # rises on every re-plan; keys the communicators
  world @4 :List(UInt32);         # every device of this attempt, ascending
  globalTokens @5 :UInt64;        # loss normaliser: tokens of the whole batch
  syncSource @6 :Int64 = -1;      # >= 0: broadcast replica state from that device first
  microBatches @7 :List(DeviceMicroBatch);
  calibrate @8 :Bool;             # timing probe: no gradient all-reduce, never committed
  commEpoch @9 :UInt64;           # keys the communicators; rises when an attempt is aborted or the world changes
  shardGroup @10 :List(UInt32);   # sharded states: the devices sharing them with this one, ascending (its shard: its rank)
  replicaGroup @11 :List(UInt32); # sharded states: the devices keeping the same shard, ascending
  syncShards @12 :List(UInt32);   # sharded states: transfer first; old shard r comes from device syncShards[r]
}

struct GroupTiming {
  microBatch @0 :UInt32;
  degree @1 :UInt32;
  tokens @2 :UInt64;
  computeMs @3 :Float64;          # forward + backward including the Ulysses all-to-alls
}

# Tell (device -> scheduler): gradients of `step` are all-reduced and ready to apply.
struct GradReady {
  jobId @0 :Text;
  step @1 :UInt64;
  attempt @2 :UInt64;
  device @3 :UInt32;
  checksum @4 :UInt64;            # of the state the gradients were computed on
  lossSum @5 :Float64;            # global token-loss sum (all-reduced)
  computeMs @6 :Float64;
  commMs @7 :Float64;             # gradient all-reduce and state sync
  groups @8 :List(GroupTiming);
  peakMemory @9 :UInt64;          # the device's allocations at their highest in this attempt, bytes
  shardChecksum @10 :UInt64;      # sharded states: fingerprint of this device's shard (checksum: of its group's state)
  shardCommMs @11 :Float64;       # sharded states: parameter gathers waited for and gradient reduce-scatters
  stateBytes @12 :UInt64;         # model states this device keeps: parameters, gradients, AdamW moments
}

# Tell (device -> scheduler): the attempt failed on this device.
struct StepFailed {
  jobId @0 :Text;
  step @1 :UInt64;
  attempt @2 :UInt64;
  device @3 :UInt32;
  reason @4 :Text;
}

# Tell: apply the gradients of `step` with learning rate `lr`.
struct CommitStep {
  jobId @0 :Text;
  step @1 :UInt64;
  attempt @2 :UInt64;
  lr @3 :Float32;
}

# Tell: abort every attempt below `attempt` (communicators aborted, gradients dropped).
struct AbortAttempts {
  jobId @0 :Text;
  attempt @1 :UInt64;
}

# Tell: write the replica state to `path` (atomically; sharded states: its shard file in the
# directory `path`). Answer: DeviceState.
struct SaveState {
  jobId @0 :Text;
  path @1 :Text;
  tag @2 :UInt64;
}

# Tell: report the replica's state checksum. Answer: DeviceState.
struct QueryState {
  jobId @0 :Text;
  tag @1 :UInt64;
}

# Tell: forget the job.
struct LeaveJob {
  jobId @0 :Text;
}

# ---- the job API (client <-> the head's "jobs" actor) ----------------------------------------

# Ask: start a job. Reply: JobInfo (its id), or an error naming the bad field of the spec.
struct SubmitJob {
  spec @0 :Text;                  # the job spec, JSON
}

# Ask: a job's state, its metrics lines from `metricsFrom` on and its log. Reply: JobInfo.
struct QueryJob {
  id @0 :Text;
  metricsFrom @1 :UInt64;
  withLogs @2 :Bool;
}

# Ask: cancel a job. Reply: JobInfo.
struct CancelJob {
  id @0 :Text;
}

# Ask: every job. Reply: JobList.
struct ListJobs {}

# Ask: send JobUpdate tells about a job to the actor (subscriberHost, subscriberActor) from now
# on. Reply: JobInfo (without metrics).
struct WatchJob {
  id @0 :Text;
  subscriberHost @1 :Text;
  subscriberActor @2 :UInt64;
}

# Tell (head -> watcher): a committed step's metrics line, or the job's end.
struct JobUpdate {
  id @0 :Text;
  index @1 :UInt64;               # position of the metrics line; at the end, the number of lines
  metrics @2 :Text;               # JSON line; empty at the end
  state @3 :JobState = running;   # running, or the final state at the end
}

struct JobInfo {
  id @0 :Text;
  name @1 :Text;
  state @2 :JobState;
  stepsDone @3 :UInt64;
  stepsTotal @4 :UInt64;
  error @5 :Text;
  firstLoss @6 :Float64;
  lastLoss @7 :Float64;
  devices @8 :UInt32;
  metrics @9 :List(Text);         # JSON lines, from metricsFrom on
  logs @10 :List(Text);
  resumedFrom @11 :UInt64;
  finalChecksum @12 :UInt64;
  calibration @13 :Text;
}

struct JobList {
  jobs @0 :List(JobInfo);
}
