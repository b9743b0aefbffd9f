#pragma once
/// \file
/// The messages of a training job between its scheduler actor and its device actors, as C++
/// structs with their Cap'n Proto codecs (schema: actors/schema/training.capnp). They cross
/// processes through `actor_host`; the codecs copy lists element by element.
///
/// Protocol of one step (DESIGN section 2): the scheduler sends every device of the attempt a
/// `step_plan`; each device runs its micro-batches, all-reduces gradients over `world` and
/// answers `grad_ready` (or `step_failed`); once every device of the attempt is ready with the
/// same state checksum the scheduler sends `commit` and the devices apply the optimizer. An
/// `abort` makes devices drop every attempt below the given one.

#include <cstdint>
#include <string>
#include <vector>

#include "flexsp/actors/remote.hpp"
#include "flexsp/actors/training.capnp.h"

namespace flexsp::actors {

/// Shape of the job's GPT model.
struct model_shape {
  std::uint32_t layers = 2;
  std::uint32_t d_model = 64;
  std::uint32_t heads = 4;
  std::uint32_t vocab = 256;
  std::uint32_t max_seq = 1024;
  /// Element type of attention's Q, K, V and output: "fp32", or "bf16" (CUDA devices; fp32
  /// arithmetic on bf16 storage, everything else stays fp32).
  std::string attention = "fp32";
  /// Arithmetic of the GEMMs: "fp32", or "tf32" (CUDA devices: tensor cores on fp32 data, 10
  /// bits of mantissa in the products, fp32 accumulation).
  std::string matmul = "fp32";

  /// Why only CUDA devices can train this shape ("bf16 attention runs on CUDA devices only"),
  /// or empty when any device can.
  std::string cuda_only_reason() const {
    if (attention == "bf16") return "bf16 attention runs on CUDA devices only";
    if (matmul == "tf32") return "tf32 GEMMs run on CUDA devices only";
    return {};
  }
};

/// AdamW settings and gradient clipping.
struct optimizer_settings {
  float lr = 3e-3f;
  float weight_decay = 0.0f;
  float beta1 = 0.9f;
  float beta2 = 0.95f;
  float eps = 1e-8f;
  float max_grad_norm = 1.0f;
};

struct join_job {
  std::string job_id;
  std::uint32_t device = 0;
  model_shape model;
  std::uint64_t seed = 0;
  optimizer_settings optimizer;
  std::string scheduler_host;
  std::uint64_t scheduler_actor = 0;
  std::uint32_t collective_timeout_ms = 10000;
  std::string resume_from;
  std::string collective_host = "127.0.0.1";
  std::uint64_t tag = 0;
  std::string collectives = "gloo";  ///< "gloo" (TCP, any device) or "nccl" (CUDA devices)
};

struct device_state {
  std::uint32_t device = 0;
  std::uint64_t checksum = 0;
  std::uint64_t optimizer_steps = 0;
  std::uint64_t parameters = 0;
  std::string job_id;
  std::uint64_t tag = 0;
  std::string error;
};

struct device_micro_batch {
  std::vector<std::uint32_t> group;  ///< empty: this device idles in the micro-batch
  std::vector<std::uint32_t> lengths;
  std::vector<std::int32_t> tokens;  ///< sum(lengths[i] + 1) ids
  double predicted_ms = 0;
};

struct step_plan {
  std::string job_id;
  std::uint64_t step = 0;
  std::uint64_t epoch = 0;
  std::uint64_t attempt = 0;
  std::vector<std::uint32_t> world;
  std::uint64_t global_tokens = 0;
  std::int64_t sync_source = -1;
  std::vector<device_micro_batch> micro_batches;
  bool calibrate = false;
  std::uint64_t comm_epoch = 0;  ///< communicators are cached per (comm_epoch, device set)
};

struct group_timing {
  std::uint32_t micro_batch = 0;
  std::uint32_t degree = 0;
  std::uint64_t tokens = 0;
  double compute_ms = 0;
};

struct grad_ready {
  std::string job_id;
  std::uint64_t step = 0;
  std::uint64_t attempt = 0;
  std::uint32_t device = 0;
  std::uint64_t checksum = 0;
  double loss_sum = 0;
  double compute_ms = 0;
  double comm_ms = 0;
  std::vector<group_timing> groups;
};

struct step_failed {
  std::string job_id;
  std::uint64_t step = 0;
  std::uint64_t attempt = 0;
  std::uint32_t device = 0;
  std::string reason;
};

struct commit_step {
  std::string job_id;
  std::uint64_t step = 0;
  std::uint64_t attempt = 0;
  float lr = 0;
};

struct abort_attempts {
  std::string job_id;
  std::uint64_t attempt = 0;
};

struct save_state {
  std::string job_id;
  std::string path;
  std::uint64_t tag = 0;
};

struct query_state {
  std::string job_id;
  std::uint64_t tag = 0;
};

struct leave_job {
  std::string job_id;
};

namespace detail {
template <class T, class L>
std::vector<T> copy_list(L list) {
  std::vector<T> out;
  out.reserve(list.size());
  for (auto v : list) out.push_back(static_cast<T>(v));
  return out;
}
template <class B, class V>
void fill_list(B builder, const V& values) {
  for (unsigned i = 0; i < values.size(); ++i) builder.set(i, values[i]);
}
}  // namespace detail

template <>
struct wire_codec<join_job> {
  using schema = schema::JoinJob;
  static void encode(const join_job& m, schema::Builder b) {
    b.setJobId(m.job_id);
    b.setDevice(m.device);
    auto s = b.initModel();
    s.setLayers(m.model.layers);
    s.setDModel(m.model.d_model);
    s.setHeads(m.model.heads);
    s.setVocab(m.model.vocab);
    s.setMaxSeq(m.model.max_seq);
    s.setAttention(m.model.attention);
    s.setMatmul(m.model.matmul);
    b.setSeed(m.seed);
    auto o = b.initOptimizer();
    o.setLr(m.optimizer.lr);
    o.setWeightDecay(m.optimizer.weight_decay);
    o.setBeta1(m.optimizer.beta1);
    o.setBeta2(m.optimizer.beta2);
    o.setEps(m.optimizer.eps);
    o.setMaxGradNorm(m.optimizer.max_grad_norm);
    b.setSchedulerHost(m.scheduler_host);
    b.setSchedulerActor(m.scheduler_actor);
    b.setCollectiveTimeoutMs(m.collective_timeout_ms);
    b.setResumeFrom(m.resume_from);
    b.setCollectiveHost(m.collective_host);
    b.setTag(m.tag);
    b.setCollectives(m.collectives);
  }
  static join_job decode(schema::Reader r) {
    join_job m;
    m.job_id = r.getJobId().cStr();
    m.device = r.getDevice();
    auto s = r.getModel();
    m.model = {s.getLayers(),          s.getDModel(), s.getHeads(), s.getVocab(), s.getMaxSeq(),
               s.getAttention().cStr(), s.getMatmul().cStr()};
    if (m.model.attention.empty()) m.model.attention = "fp32";
    if (m.model.matmul.empty()) m.model.matmul = "fp32";
    m.seed = r.getSeed();
    auto o = r.getOptimizer();
    m.optimizer = {o.getLr(), o.getWeightDecay(), o.getBeta1(), o.getBeta2(), o.getEps(), o.getMaxGradNorm()};
    m.scheduler_host = r.getSchedulerHost().cStr();
    m.scheduler_actor = r.getSchedulerActor();
    m.collective_timeout_ms = r.getCollectiveTimeoutMs();
    m.resume_from = r.getResumeFrom().cStr();
    m.collective_host = r.getCollectiveHost().cStr();
    m.tag = r.getTag();
    m.collectives = r.getCollectives().cStr();
    return m;
  }
};

template <>
struct wire_codec<device_state> {
  using schema = schema::DeviceState;
  static void encode(const device_state& m, schema::Builder b) {
    b.setDevice(m.device);
    b.setChecksum(m.checksum);
    b.setOptimizerSteps(m.optimizer_steps);
    b.setParameters(m.parameters);
    b.setJobId(m.job_id);
    b.setTag(m.tag);
    b.setError(m.error);
  }
  static device_state decode(schema::Reader r) {
    return {r.getDevice(), r.getChecksum(), r.getOptimizerSteps(), r.getParameters(), r.getJobId().cStr(), r.getTag(),
            r.getError().cStr()};
  }
};

template <>
struct wire_codec<step_plan> {
  using schema = schema::StepPlan;
  static void encode(const step_plan& m, schema::Builder b) {
    b.setJobId(m.job_id);
    b.setStep(m.step);
    b.setEpoch(m.epoch);
    b.setAttempt(m.attempt);
    detail::fill_list(b.initWorld(static_cast<unsigned>(m.world.size())), m.world);
    b.setGlobalTokens(m.global_tokens);
    b.setSyncSource(m.sync_source);
    auto mbs = b.initMicroBatches(static_cast<unsigned>(m.micro_batches.size()));
    for (unsigned i = 0; i < m.micro_batches.size(); ++i) {
      const auto& mb = m.micro_batches[i];
      auto o = mbs[i];
      detail::fill_list(o.initGroup(static_cast<unsigned>(mb.group.size())), mb.group);
      detail::fill_list(o.initLengths(static_cast<unsigned>(mb.lengths.size())), mb.lengths);
      detail::fill_list(o.initTokens(static_cast<unsigned>(mb.tokens.size())), mb.tokens);
      o.setPredictedMs(mb.predicted_ms);
    }
    b.setCalibrate(m.calibrate);
    b.setCommEpoch(m.comm_epoch);
  }
  static step_plan decode(schema::Reader r) {
    step_plan m;
    m.job_id = r.getJobId().cStr();
    m.step = r.getStep();
    m.epoch = r.getEpoch();
    m.attempt = r.getAttempt();
    m.world = detail::copy_list<std::uint32_t>(r.getWorld());
    m.global_tokens = r.getGlobalTokens();
    m.sync_source = r.getSyncSource();
    for (auto mb : r.getMicroBatches())
      m.micro_batches.push_back({detail::copy_list<std::uint32_t>(mb.getGroup()),
                                 detail::copy_list<std::uint32_t>(mb.getLengths()),
                                 detail::copy_list<std::int32_t>(mb.getTokens()), mb.getPredictedMs()});
    m.calibrate = r.getCalibrate();
    m.comm_epoch = r.getCommEpoch();
    return m;
  }
};

template <>
struct wire_codec<grad_ready> {
  using schema = schema::GradReady;
  static void encode(const grad_ready& m, schema::Builder b) {
    b.setJobId(m.job_id);
    b.setStep(m.step);
    b.setAttempt(m.attempt);
    b.setDevice(m.device);
    b.setChecksum(m.checksum);
    b.setLossSum(m.loss_sum);
    b.setComputeMs(m.compute_ms);
    b.setCommMs(m.comm_ms);
    auto g = b.initGroups(static_cast<unsigned>(m.groups.size()));
    for (unsigned i = 0; i < m.groups.size(); ++i) {
      g[i].setMicroBatch(m.groups[i].micro_batch);
      g[i].setDegree(m.groups[i].degree);
      g[i].setTokens(m.groups[i].tokens);
      g[i].setComputeMs(m.groups[i].compute_ms);
    }
  }
  static grad_ready decode(schema::Reader r) {
    grad_ready m;
    m.job_id = r.getJobId().cStr();
    m.step = r.getStep();
    m.attempt = r.getAttempt();
    m.device = r.getDevice();
    m.checksum = r.getChecksum();
    m.loss_sum = r.getLossSum();
    m.compute_ms = r.getComputeMs();
    m.comm_ms = r.getCommMs();
    for (auto g : r.getGroups()) m.groups.push_back({g.getMicroBatch(), g.getDegree(), g.getTokens(), g.getComputeMs()});
    return m;
  }
};

template <>
struct wire_codec<step_failed> {
  using schema = schema::StepFailed;
  static void encode(const step_failed& m, schema::Builder b) {
    b.setJobId(m.job_id);
    b.setStep(m.step);
    b.setAttempt(m.attempt);
    b.setDevice(m.device);
    b.setReason(m.reason);
  }
  static step_failed decode(schema::Reader r) {
    return {r.getJobId().cStr(), r.getStep(), r.getAttempt(), r.getDevice(), r.getReason().cStr()};
  }
};

template <>
struct wire_codec<commit_step> {
  using schema = schema::Commit;
  static void encode(const commit_step& m, schema::Builder b) {
    b.setJobId(m.job_id);
    b.setStep(m.step);
    b.setAttempt(m.attempt);
    b.setLr(m.lr);
  }
  static commit_step decode(schema::Reader r) { return {r.getJobId().cStr(), r.getStep(), r.getAttempt(), r.getLr()}; }
};

template <>
struct wire_codec<abort_attempts> {
  using schema = schema::Abort;
  static void encode(const abort_attempts& m, schema::Builder b) {
    b.setJobId(m.job_id);
    b.setAttempt(m.attempt);
  }
  static abort_attempts decode(schema::Reader r) { return {r.getJobId().cStr(), r.getAttempt()}; }
};

template <>
struct wire_codec<save_state> {
  using schema = schema::SaveState;
  static void encode(const save_state& m, schema::Builder b) {
    b.setJobId(m.job_id);
    b.setPath(m.path);
    b.setTag(m.tag);
  }
  static save_state decode(schema::Reader r) { return {r.getJobId().cStr(), r.getPath().cStr(), r.getTag()}; }
};

template <>
struct wire_codec<query_state> {
  using schema = schema::QueryState;
  static void encode(const query_state& m, schema::Builder b) {
    b.setJobId(m.job_id);
    b.setTag(m.tag);
  }
  static query_state decode(schema::Reader r) { return {r.getJobId().cStr(), r.getTag()}; }
};

template <>
struct wire_codec<leave_job> {
  using schema = schema::LeaveJob;
  static void encode(const leave_job& m, schema::Builder b) { b.setJobId(m.job_id); }
  static leave_job decode(schema::Reader r) { return {r.getJobId().cStr()}; }
};

}  // namespace flexsp::actors

// ---- the job API --------------------------------------------------------------------------

namespace flexsp::actors {

struct submit_job {
  std::string spec;
};
struct query_job {
  std::string id;
  std::uint64_t metrics_from = 0;
  bool with_logs = false;
};
struct cancel_job {
  std::string id;
};
struct list_jobs {};
/// Ask: push job_update tells about job `id` to the actor (subscriber_host, subscriber_actor).
struct watch_job {
  std::string id;
  std::string subscriber_host;
  std::uint64_t subscriber_actor = 0;
};
/// Tell: metrics line `index` of a job (metrics set), or its end (state set, index = lines).
struct job_update {
  std::string id;
  std::uint64_t index = 0;
  std::string metrics;
  std::string state;
};

/// A job as the API reports it.
struct job_info {
  std::string id;
  std::string name;
  std::string state;
  std::uint64_t steps_done = 0;
  std::uint64_t steps_total = 0;
  std::string error;
  double first_loss = 0;
  double last_loss = 0;
  std::uint32_t devices = 0;
  std::vector<std::string> metrics;
  std::vector<std::string> logs;
  std::uint64_t resumed_from = 0;
  std::uint64_t final_checksum = 0;
  std::string calibration;
  bool terminal() const { return state == "succeeded" || state == "failed" || state == "cancelled"; }
};
struct job_list {
  std::vector<job_info> jobs;
};

template <>
struct wire_codec<submit_job> {
  using schema = schema::SubmitJob;
  static void encode(const submit_job& m, schema::Builder b) { b.setSpec(m.spec); }
  static submit_job decode(schema::Reader r) { return {r.getSpec().cStr()}; }
};
template <>
struct wire_codec<query_job> {
  using schema = schema::QueryJob;
  static void encode(const query_job& m, schema::Builder b) {
    b.setId(m.id);
    b.setMetricsFrom(m.metrics_from);
    b.setWithLogs(m.with_logs);
  }
  static query_job decode(schema::Reader r) { return {r.getId().cStr(), r.getMetricsFrom(), r.getWithLogs()}; }
};
template <>
struct wire_codec<watch_job> {
  using schema = schema::WatchJob;
  static void encode(const watch_job& m, schema::Builder b) {
    b.setId(m.id);
    b.setSubscriberHost(m.subscriber_host);
    b.setSubscriberActor(m.subscriber_actor);
  }
  static watch_job decode(schema::Reader r) {
    return {r.getId().cStr(), r.getSubscriberHost().cStr(), r.getSubscriberActor()};
  }
};
template <>
struct wire_codec<job_update> {
  using schema = schema::JobUpdate;
  static void encode(const job_update& m, schema::Builder b) {
    b.setId(m.id);
    b.setIndex(m.index);
    b.setMetrics(m.metrics);
    b.setState(m.state);
  }
  static job_update decode(schema::Reader r) {
    return {r.getId().cStr(), r.getIndex(), r.getMetrics().cStr(), r.getState().cStr()};
  }
};
template <>
struct wire_codec<cancel_job> {
  using schema = schema::CancelJob;
  static void encode(const cancel_job& m, schema::Builder b) { b.setId(m.id); }
  static cancel_job decode(schema::Reader r) { return {r.getId().cStr()}; }
};
template <>
struct wire_codec<list_jobs> {
  using schema = schema::ListJobs;
  static void encode(const list_jobs&, schema::Builder) {}
  static list_jobs decode(schema::Reader) { return {}; }
};
template <>
struct wire_codec<job_info> {
  using schema = schema::JobInfo;
  static void encode(const job_info& m, schema::Builder b) {
    b.setId(m.id);
    b.setName(m.name);
    b.setState(m.state);
    b.setStepsDone(m.steps_done);
    b.setStepsTotal(m.steps_total);
    b.setError(m.error);
    b.setFirstLoss(m.first_loss);
    b.setLastLoss(m.last_loss);
    b.setDevices(m.devices);
    auto ms = b.initMetrics(static_cast<unsigned>(m.metrics.size()));
    for (unsigned i = 0; i < m.metrics.size(); ++i) ms.set(i, m.metrics[i]);
    auto ls = b.initLogs(static_cast<unsigned>(m.logs.size()));
    for (unsigned i = 0; i < m.logs.size(); ++i) ls.set(i, m.logs[i]);
    b.setResumedFrom(m.resumed_from);
    b.setFinalChecksum(m.final_checksum);
    b.setCalibration(m.calibration);
  }
  static job_info decode(schema::Reader r) {
    job_info m;
    m.id = r.getId().cStr();
    m.name = r.getName().cStr();
    m.state = r.getState().cStr();
    m.steps_done = r.getStepsDone();
    m.steps_total = r.getStepsTotal();
    m.error = r.getError().cStr();
    m.first_loss = r.getFirstLoss();
    m.last_loss = r.getLastLoss();
    m.devices = r.getDevices();
    for (auto t : r.getMetrics()) m.metrics.emplace_back(t.cStr());
    for (auto t : r.getLogs()) m.logs.emplace_back(t.cStr());
    m.resumed_from = r.getResumedFrom();
    m.final_checksum = r.getFinalChecksum();
    m.calibration = r.getCalibration().cStr();
    return m;
  }
};
template <>
struct wire_codec<job_list> {
  using schema = schema::JobList;
  static void encode(const job_list& m, schema::Builder b) {
    auto js = b.initJobs(static_cast<unsigned>(m.jobs.size()));
    for (unsigned i = 0; i < m.jobs.size(); ++i) wire_codec<job_info>::encode(m.jobs[i], js[i]);
  }
  static job_list decode(schema::Reader r) {
    job_list m;
    for (auto j : r.getJobs()) m.jobs.push_back(wire_codec<job_info>::decode(j));
    return m;
  }
};

}  // namespace flexsp::actors
