#include "flexsp/actors/job_controller.hpp"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

namespace flexsp::actors {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

std::string step_metrics::to_json() const {
  nlohmann::json j{{"step", step + 1},         {"epoch", epoch},           {"devices", devices},
                   {"loss", loss},         {"tokens", tokens},         {"sequences", sequences},
                   {"plan", plan},         {"strategy", strategy},     {"solve_ms", solve_ms},
                   {"milp_solves", milp_solves}, {"milp_gap", milp_gap},
                   {"predicted_ms", predicted_ms}, {"step_ms", step_ms}, {"compute_ms", compute_ms},
                   {"comm_ms", comm_ms},   {"overhead_ms", overhead_ms}, {"group_error", group_error},
                   {"peak_memory_mb", peak_memory_mb}, {"predicted_memory_mb", predicted_memory_mb},
                   {"state_mb", state_mb}, {"shard_comm_ms", shard_comm_ms},
                   {"retried", retried},   {"recovery_ms", recovery_ms}, {"committed_at_ms", committed_at_ms},
                   {"state_checksum", state_checksum}};
  auto& g = j["groups"] = nlohmann::json::array();
  for (const auto& t : groups)
    g.push_back({{"micro_batch", t.micro_batch}, {"degree", t.degree}, {"predicted_ms", t.predicted_ms},
                 {"measured_ms", t.measured_ms}});
  return j.dump();
}

// ---- checkpoint index ------------------------------------------------------------------------

expected<std::optional<checkpoint_point>> read_checkpoint_index(const std::string& dir, std::uint64_t seed) {
  if (dir.empty()) return std::optional<checkpoint_point>{};
  const fs::path latest = fs::path{dir} / "latest.json";
  std::ifstream in{latest};
  if (!in) return std::optional<checkpoint_point>{};
  checkpoint_point p;
  try {
    nlohmann::json j;
    in >> j;
    p.step = j.at("step").get<std::uint64_t>();
    p.file = (fs::path{dir} / j.at("file").get<std::string>()).string();
    p.seed = j.at("seed").get<std::uint64_t>();
    if (j.contains("checksum")) p.checksum = j["checksum"].get<std::uint64_t>();
  } catch (const nlohmann::json::exception& e) {
    return make_error(errc::invalid_argument, "checkpoint index {} is unreadable: {}", latest.string(), e.what());
  }
  if (p.seed != seed)
    return make_error(errc::invalid_argument, "checkpoint {} was written with seed {}, the job has {}", latest.string(),
                      p.seed, seed);
  return std::optional<checkpoint_point>{std::move(p)};
}

expected<void> write_checkpoint_index(const std::string& dir, const checkpoint_point& point, const std::string& job) {
  const nlohmann::json j{{"step", point.step},
                         {"data_position", point.step},
                         {"seed", point.seed},
                         {"file", fs::path{point.file}.filename().string()},
                         {"checksum", point.checksum},
                         {"job", job}};
  const fs::path latest = fs::path{dir} / "latest.json";
  const fs::path tmp = latest.string() + ".tmp";
  {
    std::ofstream out{tmp};
    out << j.dump() << "\n";
    out.flush();
    if (!out) return make_error(errc::io, "cannot write {}", tmp.string());
  }
  std::error_code ec;
  fs::rename(tmp, latest, ec);
  if (ec) return make_error(errc::io, "cannot rename {} to {}: {}", tmp.string(), latest.string(), ec.message());
  return {};
}

// ---- the controller --------------------------------------------------------------------------

job_controller::job_controller(controller_config config, job_spec spec, const batch_source& data,
                               const core::clock& clock)
    : config_{std::move(config)}, spec_{std::move(spec)}, data_{data}, clock_{clock} {
  status_.id = config_.job_id;
  status_.name = spec_.name;
  status_.steps_total = spec_.steps;
}

std::vector<job_command> job_controller::take_commands() {
  std::vector<job_command> out;
  out.swap(out_);
  return out;
}

std::vector<std::uint32_t> job_controller::world() const {
  std::vector<std::uint32_t> w;
  for (const auto& [i, _] : devices_) w.push_back(i);
  return w;
}

void job_controller::log(std::string line) { emit(log_line{std::move(line)}); }

job_controller::device* job_controller::find_device(std::uint32_t d) {
  if (auto it = devices_.find(d); it != devices_.end()) return &it->second;
  if (auto it = joiners_.find(d); it != joiners_.end()) return &it->second;
  return nullptr;
}

void job_controller::send(std::uint32_t d, device_message m) {
  if (const auto* dev = find_device(d)) emit(send_to_device{d, dev->address, std::move(m)});
}

std::uint64_t job_controller::timer(core::duration delay) {
  const auto id = next_timer_++;
  emit(start_timer{id, delay});
  return id;
}

double job_controller::ms_since(core::time_point t) const {
  return std::chrono::duration<double, std::milli>(clock_.now() - t).count();
}

void job_controller::fail(std::string reason) { finish(job_state::failed, std::move(reason)); }

bool job_controller::checkpoint_failed(const std::string& why) {
  const auto step = saving_ ? saving_->step : 0;
  log(fmt::format("warning: checkpoint at step {} failed: {}", step, why));
  saving_.reset();
  save_timer_ = 0;
  indexing_ = false;
  ++checkpoint_failures_;
  const auto limit = spec_.fault.max_checkpoint_failures;
  if (limit == 0 || checkpoint_failures_ < limit) return false;
  fail(fmt::format("{} checkpoints failed in a row (fault.max_checkpoint_failures); the last at step {}: {}",
                   checkpoint_failures_, step, why));
  return true;
}

void job_controller::finish(job_state state, std::string message) {
  if (phase_ == phase::done) return;
  abort_attempt();
  for (const auto& [d, _] : devices_) send(d, leave_job{config_.job_id});
  for (const auto& [d, _] : joiners_) send(d, leave_job{config_.job_id});
  if (state == job_state::failed) log("failed: " + message);
  else if (state == job_state::cancelled) log("cancelled");
  else log(fmt::format("finished {} steps", spec_.steps));
  event("finished", std::string{to_string(state)} + (message.empty() ? "" : ": " + message));
  phase_ = phase::done;
  status_.state = state;
  status_.error = message;
  emit(job_finished{state, std::move(message)});
}

// ---- events ----------------------------------------------------------------------------------

void job_controller::on(const job_started& e) {
  if (phase_ != phase::created) return;
  epoch_ = e.epoch;
  for (const auto& n : e.nodes)
    if (n.state == node_state::alive) pending_nodes_[n.id] = n.devices;
  latest_checkpoint_ = e.resume;
  if (e.resume) {
    start_step_ = std::min(e.resume->step, spec_.steps);
    log(fmt::format("resuming from {} at step {}", e.resume->file, start_step_));
  }
  step_ = start_step_;
  status_.resumed_from = start_step_;
  status_.steps_done = start_step_;
  if (e.recovered) {
    const auto& r = *e.recovered;
    step_ = std::min(r.steps_done, spec_.steps);
    start_step_ = std::min(r.resumed_from, step_);
    status_.resumed_from = start_step_;
    status_.steps_done = step_;
    status_.first_loss = r.first_loss;
    status_.last_loss = r.last_loss;
    status_.aborted_attempts = r.aborted_attempts;
    if (step_ > 0 && r.last_step_checksum != 0) state_checksum_ = std::make_pair(step_ - 1, r.last_step_checksum);
    attempt_ = comm_epoch_ = r.incarnation << 32;
    state_exists_ = true;  // on the devices that come back, or in the checkpoint
    calibrated_ = true;    // the profile is the uncalibrated one until the next refit
    log(fmt::format("taken back by a restarted head at step {} of {}; waiting for the devices that hold its state",
                    step_, spec_.steps));
  }
  status_.state = job_state::running;
  profile_ = initial_profile();
  ++profile_version_;
  phase_ = phase::gathering;
  gather_deadline_ = clock_.now() + std::chrono::milliseconds{spec_.fault.device_wait_ms};
  request_lookups();
  advance();
}

void job_controller::on(const membership_event& e) {
  if (phase_ == phase::done) return;
  epoch_ = std::max(epoch_, e.epoch);
  if (e.kind == membership_event::kind_t::lost) {
    lose_node(e.node.id, e.node.lost_reason, e.epoch);
    return;
  }
  if (lost_nodes_.count(e.node.id)) return;
  pending_nodes_[e.node.id] = e.node.devices;
  request_lookups();
  advance();
}

void job_controller::lose_node(std::uint64_t node, const std::string& reason, std::uint64_t epoch) {
  lost_nodes_.insert(node);
  pending_nodes_.erase(node);
  looking_up_.erase(node);
  std::vector<std::uint32_t> gone;
  for (const auto& [i, d] : devices_)
    if (d.node == node) gone.push_back(i);
  for (const auto& [i, d] : joiners_)
    if (d.node == node) gone.push_back(i);
  if (gone.empty()) return;
  bool member = false;
  for (auto d : gone) member = member || devices_.count(d);
  for (auto d : gone) drop_device(d);
  if (member) {
    log(fmt::format("node {} lost at epoch {} ({}); {} devices left", node, epoch, reason, devices_.size()));
    event("node_lost", fmt::format("node {} at epoch {}: {}; {} devices left", node, epoch, reason, devices_.size()));
  }
  if (!member) {
    advance();
    return;
  }
  switch (phase_) {
    case phase::running:
    case phase::calibrating:
      if (current_) {
        attempt_failed("membership changed", true);
        return;
      }
      break;
    case phase::grace:
      grace_timer_ = 0;
      phase_ = phase::planning;
      step_boundary();
      return;
    default: break;
  }
  advance();
}

void job_controller::drop_device(std::uint32_t d) {
  devices_.erase(d);
  joiners_.erase(d);
  std::erase_if(joins_, [d](const auto& kv) { return kv.second == d; });
  std::erase_if(queries_, [d](const auto& kv) { return kv.second == d; });
  if (saving_ && !indexing_ && std::any_of(save_tags_.begin(), save_tags_.end(), [d](const auto& kv) { return kv.second == d; }))
    (void)checkpoint_failed("a device writing it was lost");
}

void job_controller::on(const devices_found& e) {
  if (phase_ == phase::done) return;
  looking_up_.erase(e.node);
  auto it = pending_nodes_.find(e.node);
  if (it == pending_nodes_.end() || lost_nodes_.count(e.node)) return;
  const auto offered = std::move(it->second);
  pending_nodes_.erase(it);
  for (const auto& [name, address] : e.devices) {
    auto id = std::find_if(offered.begin(), offered.end(), [&](const device_id& d) { return d.to_string() == name; });
    if (id == offered.end()) continue;  // not a device this node offered
    joiners_.emplace(next_device_++, device{e.node, *id, address, false, std::nullopt});
  }
  advance();
}

void job_controller::on(const devices_missing& e) {
  looking_up_.erase(e.node);
  // Retried on the next tick (advance keeps one running while nodes wait to be found).
  advance();
}

void job_controller::on(const plan_ready& e) {
  if (phase_ == phase::done) return;
  auto take = [&](std::optional<outstanding_plan>& slot) -> std::optional<outstanding_plan> {
    if (!slot || slot->request != e.request) return std::nullopt;
    auto o = std::move(*slot);
    slot.reset();
    return o;
  };
  if (auto ahead = take(ahead_plan_)) {
    if (!e.plan) return;  // planned again when the step needs it (and fails the job there)
    prepared_ = prepared_plan{ahead->world, ahead->step, ahead->profile_version, *e.plan};
    return;
  }
  auto needed = take(needed_plan_);
  if (!needed) return;
  if (!e.plan) {
    fail(fmt::format("planning step {}: {}", needed->step, e.plan.error().to_string()));
    return;
  }
  prepared_ = prepared_plan{needed->world, needed->step, needed->profile_version, *e.plan};
  if (phase_ == phase::planning) step_boundary();
}

void job_controller::on(const index_written& e) {
  if (phase_ != phase::checkpointing || !saving_ || !indexing_ || e.step != saving_->step) return;
  if (!e.error.empty()) {
    if (checkpoint_failed("its index could not be written: " + e.error)) return;
    advance();
    return;
  }
  latest_checkpoint_ = *saving_;
  checkpoint_failures_ = 0;
  log(fmt::format("checkpoint at step {} written to {}", saving_->step, saving_->file));
  event("checkpoint", saving_->file);
  saving_.reset();
  indexing_ = false;
  advance();
}

void job_controller::on(const timer_fired& e) {
  if (phase_ == phase::done || e.id == 0) return;
  if (e.id == tick_timer_) {
    tick_timer_ = 0;
    request_lookups();
    advance();
  } else if (e.id == join_timer_) {
    join_timer_ = 0;
    for (const auto& [tag, d] : joins_) {
      if (const auto* dev = find_device(d))
        log(fmt::format("device {} ({}) could not join: no answer", d, dev->id.to_string()));
      devices_.erase(d);
      joiners_.erase(d);
    }
    joins_.clear();
    advance();
  } else if (current_ && e.id == current_->silence_timer) {
    const auto timeout = std::chrono::milliseconds{spec_.fault.device_timeout(spec_.collective_timeout_ms)};
    const auto since = clock_.now() - current_->last_progress;
    if (since < timeout) {  // a report came meanwhile: wait the rest from it
      current_->silence_timer = timer(timeout - since);
      return;
    }
    const auto reported = tracker_.reports().size();
    attempt_failed(fmt::format("no report from {} devices within {} ms", current_->world.size() - reported,
                               spec_.fault.device_timeout(spec_.collective_timeout_ms)),
                   false);
  } else if (e.id == grace_timer_ && phase_ == phase::grace) {
    grace_timer_ = 0;
    phase_ = phase::planning;
    step_boundary();
  } else if (e.id == save_timer_ && saving_ && !indexing_) {
    if (!checkpoint_failed("no answer")) advance();
  } else if (e.id == verify_timer_ && phase_ == phase::verifying) {
    verify_timer_ = 0;
    queries_.clear();
    finish_verify();
  }
}

void job_controller::on(const send_failed& e) {
  if (phase_ == phase::done) return;
  for (auto it = joins_.begin(); it != joins_.end(); ++it)
    if (it->second == e.device) {
      log(fmt::format("device {} could not join: {}", e.device, e.reason));
      joins_.erase(it);
      devices_.erase(e.device);
      joiners_.erase(e.device);
      advance();
      return;
    }
  if (current_ && std::find(current_->world.begin(), current_->world.end(), e.device) != current_->world.end() &&
      tracker_.active()) {
    attempt_failed(fmt::format("device {}: {}", e.device, e.reason), false);
    return;
  }
  if (saving_ && !indexing_ &&
      std::any_of(save_tags_.begin(), save_tags_.end(), [&](const auto& kv) { return kv.second == e.device; })) {
    if (!checkpoint_failed(e.reason)) advance();
    return;
  }
  if (phase_ == phase::verifying) {
    std::erase_if(queries_, [&](const auto& kv) { return kv.second == e.device; });
    if (queries_.empty()) finish_verify();
  }
}

void job_controller::on(const grad_ready& e) {
  if (phase_ == phase::done || !current_ || e.job_id != config_.job_id) return;
  if (e.step == step_) state_checksum_ = std::make_pair(e.step, e.checksum);
  switch (tracker_.on_ready(e)) {
    case commit_tracker::outcome::mismatch:
      fail(fmt::format("replicas diverged at step {}: parameter checksums {}", e.step, tracker_.mismatch_detail()));
      return;
    case commit_tracker::outcome::ignored:
      return;
    case commit_tracker::outcome::pending:
      current_->last_progress = clock_.now();  // the silence deadline counts from the latest report
      return;
    case commit_tracker::outcome::commit:
      break;
  }
  if (current_->calibration) {
    auto reports = tracker_.reports();
    auto w = current_->world;
    tracker_.reset();
    current_.reset();
    calibration_result(w, reports);
    return;
  }
  committed();
}

void job_controller::on(const step_failed& e) {
  if (phase_ == phase::done || e.job_id != config_.job_id || !tracker_.concerns(e)) return;
  attempt_failed(fmt::format("device {}: {}", e.device, e.reason), false);
}

void job_controller::on(const device_state& e) {
  if (phase_ == phase::done || (!e.job_id.empty() && e.job_id != config_.job_id)) return;
  if (auto it = joins_.find(e.tag); it != joins_.end()) {
    const auto d = it->second;
    joins_.erase(it);
    if (!e.error.empty()) {
      if (const auto* dev = find_device(d))
        log(fmt::format("device {} ({}) could not join: {}", d, dev->id.to_string(), e.error));
      devices_.erase(d);
      joiners_.erase(d);
    } else if (auto it2 = devices_.find(d); it2 != devices_.end()) {
      it2->second.held = std::make_pair(e.optimizer_steps, e.checksum);
      it2->second.memory = e.memory_capacity;
      it2->second.shard = {static_cast<int>(e.shard_count), static_cast<int>(e.shard_index)};
    }
    if (joins_.empty()) join_timer_ = 0;
    advance();
    return;
  }
  if (auto it = save_tags_.find(e.tag); saving_ && !indexing_ && it != save_tags_.end()) {
    save_tags_.erase(it);
    if (!e.error.empty()) {
      save_tags_.clear();
      if (!checkpoint_failed(e.error)) advance();
      return;
    }
    save_sums_[static_cast<int>(e.shard_index)] = e.checksum;
    if (!save_tags_.empty()) return;
    save_timer_ = 0;
    std::vector<std::uint64_t> sums;
    for (const auto& [_, c] : save_sums_) sums.push_back(c);
    saving_->checksum = kernels::combine_fingerprints(sums);
    indexing_ = true;
    emit(write_index{*saving_});
    return;
  }
  if (auto it = queries_.find(e.tag); it != queries_.end() && phase_ == phase::verifying) {
    if (e.error.empty()) {
      query_sums_[it->second] = e.checksum;
      query_shards_[it->second] = {static_cast<int>(e.shard_count), static_cast<int>(e.shard_index)};
    }
    queries_.erase(it);
    if (queries_.empty()) finish_verify();
  }
}

void job_controller::on(const cancel_requested&) {
  if (phase_ == phase::done || phase_ == phase::created) {
    if (phase_ == phase::created) finish(job_state::cancelled, "cancelled");
    return;
  }
  finish(job_state::cancelled, "cancelled");
}

void job_controller::on(const device_down& e) {
  if (phase_ == phase::done) return;
  const auto* dev = find_device(e.device);
  if (!dev) return;
  const bool member = devices_.count(e.device) > 0;
  const auto node = dev->node;
  const auto id = dev->id;
  log(fmt::format("device {} ({}) unreachable: {}", e.device, id.to_string(), e.reason));
  drop_device(e.device);
  if (!lost_nodes_.count(node)) {
    // Its node may be fine (a connection can break without a process dying): find the device
    // again; a dead node's loss reaches us through membership meanwhile.
    auto& wanted = pending_nodes_[node];
    if (std::find(wanted.begin(), wanted.end(), id) == wanted.end()) wanted.push_back(id);
    // Looked up on the next tick, not now: when its process died, the head's loss report
    // (a closed connection is seen at once) usually comes first and saves a futile join.
  }
  if (member) {
    if ((phase_ == phase::running || phase_ == phase::calibrating) && current_) {
      attempt_failed(fmt::format("device {} unreachable: {}", e.device, e.reason), true);
      return;
    }
    if (phase_ == phase::grace) {
      grace_timer_ = 0;
      phase_ = phase::planning;
      step_boundary();
      return;
    }
  }
  advance();
}

// ---- devices ---------------------------------------------------------------------------------

void job_controller::resolve_backend() {
  if (backend_ || pending_nodes_.empty()) return;
  bool any_cuda = false;
  for (const auto& [_, devs] : pending_nodes_)
    for (const auto& d : devs) any_cuda = any_cuda || d.kind == device_kind::cuda;
  // NCCL collectives, bf16 attention and tf32 GEMMs exist on CUDA devices only.
  const bool needs_cuda = spec_.collectives == collective_library::nccl || !cuda_only_reason(spec_.model).empty();
  backend_ = spec_.backend ? *spec_.backend : (any_cuda || needs_cuda) ? device_kind::cuda : device_kind::cpu;
  collectives_ = spec_.collectives ? *spec_.collectives
                 : backend_ == device_kind::cuda ? collective_library::nccl
                                                  : collective_library::gloo;
  log(fmt::format("training on {} devices with {} collectives", to_string(*backend_), to_string(collectives_)));
}

void job_controller::request_lookups() {
  resolve_backend();
  for (auto it = pending_nodes_.begin(); it != pending_nodes_.end();) {
    const auto node = it->first;
    if (looking_up_.count(node)) {
      ++it;
      continue;
    }
    lookup_devices l{node, {}};
    for (const auto& d : it->second)
      if (d.kind == backend_) l.devices.push_back(d.to_string());
    if (l.devices.empty()) {  // nothing of the job's kind on this node
      it = pending_nodes_.erase(it);
      continue;
    }
    looking_up_.insert(node);
    emit(std::move(l));
    ++it;
  }
}

void job_controller::send_joins(const std::vector<std::uint32_t>& fresh, const std::string& resume_from) {
  for (auto d : fresh) {
    const auto* dev = find_device(d);
    join_job m;
    m.job_id = config_.job_id;
    m.device = d;
    m.model = spec_.model;
    m.seed = spec_.seed;
    m.optimizer = spec_.optimizer;
    m.scheduler_host = config_.self.host;
    m.scheduler_actor = config_.self.actor_id;
    m.collective_timeout_ms = spec_.collective_timeout_ms;
    m.resume_from = resume_from;
    const auto colon = dev->address.host.rfind(':');
    m.collective_host = colon == std::string::npos ? dev->address.host : dev->address.host.substr(0, colon);
    m.collectives = collectives_;
    m.sharded = sharded();
    m.tag = next_tag_++;
    joins_[m.tag] = d;
    send(d, std::move(m));
  }
  if (!fresh.empty()) join_timer_ = timer(std::chrono::milliseconds{spec_.fault.join_timeout_ms});
}

// ---- the driver ------------------------------------------------------------------------------

void job_controller::advance() {
  if (phase_ == phase::done) return;
  // Keep looking for the devices of nodes that joined while any wait to be found.
  bool waiting_lookup = false;
  for (const auto& [node, _] : pending_nodes_) waiting_lookup = waiting_lookup || !looking_up_.count(node);
  if ((waiting_lookup || phase_ == phase::gathering) && tick_timer_ == 0) tick_timer_ = timer(100ms);

  switch (phase_) {
    case phase::gathering: {
      // Found devices join at once while gathering.
      if (!joiners_.empty()) {
        std::vector<std::uint32_t> fresh;
        for (auto& [i, d] : joiners_) {
          fresh.push_back(i);
          devices_.emplace(i, std::move(d));
        }
        joiners_.clear();
        send_joins(fresh, state_exists_ || !latest_checkpoint_ ? std::string{} : latest_checkpoint_->file);
      }
      if (joins_pending()) return;
      if (rewinding_) {
        rewinding_ = false;
        if (devices_.empty()) {
          fail("no device could load checkpoint " + latest_checkpoint_->file);
          return;
        }
        for (auto& [_, d] : devices_) d.synced = true;
        prepared_.reset();
        comm_world_.clear();  // fresh communicators: the rejoined devices start without any
        step_ = start_step_;
        status_.steps_done = start_step_;
        log(fmt::format("every device holding the model state was lost; {} devices restarted from {} (step {})",
                        devices_.size(), latest_checkpoint_->file, start_step_));
        phase_ = phase::planning;
        step_boundary();
        return;
      }
      if (devices_.size() >= spec_.min_devices) {
        gathering_done();
        return;
      }
      if (clock_.now() >= gather_deadline_)
        fail(fmt::format("only {} of the {} {} devices the job needs are available", devices_.size(), spec_.min_devices,
                         backend_ ? std::string{to_string(*backend_)} : std::string{"cpu or cuda"}));
      return;
    }
    case phase::planning:
      // A plan asked for a world that changed meanwhile is not waited for.
      if (needed_plan_ && needed_plan_->world != world()) needed_plan_.reset();
      // Joins sent at a step boundary: the step starts when they are answered.
      if (!joins_pending() && !needed_plan_) step_boundary();
      return;
    case phase::verifying:
      if (queries_.empty()) finish_verify();
      return;
    case phase::checkpointing:
      if (!saving_) next_step();
      return;
    default:
      return;
  }
}

void job_controller::gathering_done() {
  if (!state_exists_) {
    // At the start every replica comes from the same seed or checkpoint.
    for (auto& [_, d] : devices_) d.synced = true;
    state_exists_ = true;
  } else {
    bool any = false;
    for (const auto& [_, d] : devices_) any = any || d.synced;
    if (!any && !adopt_returned_replicas()) {
      rewind_to_checkpoint();
      return;
    }
  }
  if (!calibrated_) {
    calibrated_ = true;
    if (const auto what = data_.describe(); !what.empty()) log(what);
    log(fmt::format("{} devices joined (epoch {}); strategy {}, {} steps of {} sequences", devices_.size(), epoch_,
                    spec_.strategy.to_string(), spec_.steps, spec_.batch_size));
    if (spec_.calibrate && step_ < spec_.steps) {
      start_calibration();
      return;
    }
  }
  phase_ = phase::planning;
  step_boundary();
}

bool job_controller::adopt_returned_replicas() {
  // A replica at the last commit has applied one optimizer step per committed step; when a
  // device of the current step reported, its checksum must match too. Among several, the
  // checksum most of them hold wins.
  std::map<std::uint64_t, std::vector<std::uint32_t>> by_checksum;
  for (const auto& [i, d] : devices_) {
    if (!d.held || d.held->first != step_ || d.held->second == 0) continue;
    if (state_checksum_ && state_checksum_->first == step_ && state_checksum_->second != d.held->second) continue;
    by_checksum[d.held->second].push_back(i);
  }
  if (by_checksum.empty() && state_checksum_ && step_ > 0 && state_checksum_->first + 1 == step_) {
    // The last commit was decided (and recorded) but no returning device applied it: devices
    // holding the state that step started from run it again, without publishing it again.
    for (const auto& [i, d] : devices_)
      if (d.held && d.held->first + 1 == step_ && d.held->second == state_checksum_->second)
        by_checksum[d.held->second].push_back(i);
    if (!by_checksum.empty()) {
      replay_until_ = step_;
      --step_;
      status_.steps_done = replay_until_;
      log(fmt::format("no returning device applied the commit of step {}; {} devices holding the state it started "
                      "from run it again",
                      step_, by_checksum.begin()->second.size()));
    }
  }
  if (by_checksum.empty()) return false;
  const auto best = std::max_element(by_checksum.begin(), by_checksum.end(),
                                     [](const auto& a, const auto& b) { return a.second.size() < b.second.size(); });
  for (auto i : best->second) devices_.at(i).synced = true;
  prepared_.reset();
  comm_world_.clear();
  log(fmt::format("every replica was lost, but {} returning devices still hold the state of step {} (checksum {:016x}); "
                  "continuing from it",
                  best->second.size(), step_, best->first));
  return true;
}

void job_controller::rewind_to_checkpoint() {
  if (!latest_checkpoint_) {
    std::string held;
    for (const auto& [i, d] : devices_)
      if (d.held) held += fmt::format("{}device {} holds step {} ({:016x})", held.empty() ? "" : ", ", i, d.held->first,
                                      d.held->second);
    if (!held.empty())
      log(fmt::format("the devices back hold no usable state for step {} (last known state checksum {}): {}", step_,
                      state_checksum_ ? fmt::format("{:016x} at step {}", state_checksum_->second, state_checksum_->first)
                                      : std::string{"none"},
                      held));
    fail("every device holding the model state was lost and there is no checkpoint");
    return;
  }
  start_step_ = latest_checkpoint_->step;
  rewinding_ = true;
  event("rewind", fmt::format("to step {} from {}", start_step_, latest_checkpoint_->file));
  phase_ = phase::gathering;
  send_joins(world(), latest_checkpoint_->file);
  advance();
}

void job_controller::step_boundary() {
  if (phase_ == phase::done) return;
  if (step_ >= spec_.steps) {
    start_verify();
    return;
  }
  // Devices found since the last boundary join now; the step waits for their answers.
  if (!joiners_.empty()) {
    std::vector<std::uint32_t> fresh;
    for (auto& [i, d] : joiners_) {
      d.synced = false;
      fresh.push_back(i);
      devices_.emplace(i, std::move(d));
    }
    joiners_.clear();
    send_joins(fresh, "");
    log(fmt::format("{} devices joined; they receive the replica state at the next step", fresh.size()));
    event("devices_joined", fmt::format("{} devices", fresh.size()));
  }
  if (joins_pending()) {
    phase_ = phase::planning;
    return;
  }
  if (devices_.empty()) {
    log("no devices left; waiting for a node to join");
    phase_ = phase::gathering;
    gather_deadline_ = clock_.now() + std::chrono::milliseconds{spec_.fault.device_wait_ms};
    request_lookups();
    advance();
    return;
  }
  const auto w = world();
  phase_ = phase::planning;
  if (prepared_ && prepared_->step == step_ && prepared_->world == w && prepared_->profile_version == profile_version_) {
    auto p = std::move(prepared_->plan);
    prepared_.reset();
    const double exposed = waiting_for_plan_ ? ms_since(plan_wait_started_) : 0.0;
    waiting_for_plan_ = false;
    const double solve_ms = p.solve_ms;
    dispatch(std::move(p), data_.batch(step_), false, solve_ms, exposed);
    return;
  }
  prepared_.reset();
  if (needed_plan_ && needed_plan_->step == step_ && needed_plan_->world == w &&
      needed_plan_->profile_version == profile_version_)
    return;  // already asked
  if (ahead_plan_ && ahead_plan_->step == step_ && ahead_plan_->world == w &&
      ahead_plan_->profile_version == profile_version_) {
    needed_plan_ = std::move(ahead_plan_);
    ahead_plan_.reset();
    plan_wait_started_ = clock_.now();
    waiting_for_plan_ = true;
    return;
  }
  plan_wait_started_ = clock_.now();
  waiting_for_plan_ = true;
  ask_plan(step_, w, true);
}

void job_controller::dispatch(scheduler::plan p, training_batch b, bool calibration, double solve_ms,
                              double exposed_plan_ms) {
  const auto w = world();
  step_header h;
  h.job_id = config_.job_id;
  h.step = calibration ? ~std::uint64_t{0} : step_;
  h.epoch = epoch_;
  h.attempt = ++attempt_;
  h.calibrate = calibration;
  if (w != comm_world_) {
    comm_world_ = w;
    ++comm_epoch_;
  }
  h.comm_epoch = comm_epoch_;
  std::int64_t source = -1;
  bool need_sync = false;
  for (const auto& [i, d] : devices_) {
    if (d.synced && source < 0) source = i;
    need_sync = need_sync || !d.synced;
  }
  if (calibration) need_sync = false;  // probes leave the state as it is
  shard_assignment shards;
  std::vector<std::uint32_t> sync_shards;
  if (sharded()) {
    // Every device keeps the shard the assignment gives it: a device that holds another (the
    // world changed) or none (it joined) gets it by transfer from live holders of a complete
    // set of shards, or, before any commit, from devices cutting shards from their recipe.
    shards = assign_shards(w, spec_.sharding, spec_.shard_group, static_cast<std::uint32_t>(devices_per_node()));
    need_sync = false;
    std::map<std::uint32_t, std::pair<int, int>> held;
    std::vector<std::uint32_t> recipes;
    for (auto i : w) {
      const auto& d = devices_.at(i);
      if (!d.synced) {
        need_sync = true;
      } else if (d.shard.first == 0) {
        recipes.push_back(i);
      } else {
        held[i] = d.shard;
        need_sync = need_sync || d.shard != shards.shard.at(i);
      }
    }
    if (calibration) need_sync = false;
    if (need_sync) {
      sync_shards = shard_sources(held);
      if (sync_shards.empty() && held.empty()) sync_shards = recipes;
      if (sync_shards.empty()) {
        log(fmt::format("a shard of the model state has no live copy (sharding {}: the devices left hold {} of the "
                        "shards); restarting from the latest checkpoint",
                        to_string(spec_.sharding), held.size()));
        event("state_lost", fmt::format("sharding {}: a shard has no live copy", to_string(spec_.sharding)));
        rewind_to_checkpoint();
        return;
      }
    }
    source = -1;
  } else if (need_sync && source < 0) {
    rewind_to_checkpoint();
    return;
  }
  h.sync_source = need_sync && !sharded() ? source : -1;
  auto parts = slice_plan(p, w, b, h);
  if (!parts) {
    fail("plan slicing: " + parts.error().to_string());
    return;
  }
  if (sharded())
    for (auto& [d, part] : *parts) {
      const auto& g = shards.group.at(d);
      const auto& r = shards.replicas.at(d);
      part.shard_group = {g.begin(), g.end()};
      part.replica_group = {r.begin(), r.end()};
      part.sync_shards = {sync_shards.begin(), sync_shards.end()};
    }
  tracker_.start(h.step, h.attempt, {w.begin(), w.end()});
  current_ = attempt_state{std::move(p), std::move(b), w,   calibration, need_sync, clock_.now(), solve_ms,
                           exposed_plan_ms, 0,           clock_.now(), std::move(shards)};
  phase_ = calibration ? phase::calibrating : phase::running;
  for (auto& [d, part] : *parts) send(d, std::move(part));
  current_->silence_timer = timer(std::chrono::milliseconds{spec_.fault.device_timeout(spec_.collective_timeout_ms)});
  // Plan the next batch while the devices run this one.
  if (!calibration && step_ + 1 < spec_.steps) {
    const bool have = (prepared_ && prepared_->step == step_ + 1 && prepared_->world == w &&
                       prepared_->profile_version == profile_version_) ||
                      (ahead_plan_ && ahead_plan_->step == step_ + 1 && ahead_plan_->world == w &&
                       ahead_plan_->profile_version == profile_version_);
    if (!have) ask_plan(step_ + 1, w, false);
  }
}

void job_controller::abort_attempt() {
  if (!tracker_.active() && !current_) return;
  comm_world_.clear();  // the aborted attempt's communicators are gone: the next one builds new ones
  for (const auto& [d, _] : devices_) send(d, abort_attempts{config_.job_id, attempt_ + 1});
  tracker_.reset();
  current_.reset();
}

void job_controller::attempt_failed(std::string reason, bool membership_changed) {
  if (!current_) return;
  const bool calibration = current_->calibration;
  const auto failed_attempt = attempt_;
  abort_attempt();
  if (calibration) {
    log(fmt::format("calibration {} failed ({}); keeping the default profile",
                    calibration_stage_ == 1 ? "warm-up" : "probe", reason));
    calibration_stage_ = 0;
    phase_ = phase::planning;
    step_boundary();
    return;
  }
  ++retried_;
  ++status_.aborted_attempts;
  if (!first_failure_) first_failure_ = clock_.now();
  log(fmt::format("step {} attempt {} aborted ({}); re-planning the same batch", step_, failed_attempt, reason));
  event("attempt_aborted", fmt::format("attempt {}: {}", failed_attempt, reason));
  if (retried_ > spec_.fault.max_retries) {
    fail(fmt::format("step {} failed {} times: {}", step_, retried_, reason));
    return;
  }
  if (!membership_changed && spec_.fault.membership_grace_ms > 0) {
    // A failed collective or an unreachable device usually means a lost node: give the head the
    // grace period to report it (only a lost member ends the wait early) rather than spending
    // the retries on a world that is about to change.
    phase_ = phase::grace;
    grace_timer_ = timer(std::chrono::milliseconds{spec_.fault.membership_grace_ms});
    return;
  }
  phase_ = phase::planning;
  step_boundary();
}

void job_controller::committed() {
  auto a = std::move(*current_);
  current_.reset();
  const auto reports = tracker_.reports();
  const auto committed_attempt = tracker_.attempt();
  tracker_.reset();
  if (a.need_sync)
    for (auto& [_, d] : devices_) d.synced = true;
  for (const auto& [i, sh] : a.shards.shard)
    if (auto it = devices_.find(i); it != devices_.end()) it->second.shard = sh;

  const auto& p = a.plan;
  step_metrics m;
  m.step = step_;
  m.epoch = epoch_;
  m.devices = static_cast<std::uint32_t>(a.world.size());
  m.tokens = a.batch.total_tokens();
  m.sequences = static_cast<std::uint32_t>(a.batch.lengths.size());
  m.loss = reports.begin()->second.loss_sum / static_cast<double>(std::max<std::uint64_t>(1, m.tokens));
  m.strategy = p.strategy;
  for (const auto& mb : p.micro_batches) {
    std::vector<int> degrees;
    for (const auto& g : mb.groups)
      if (!g.sequences.empty()) degrees.push_back(g.degree);
    m.plan.push_back(std::move(degrees));
  }
  m.solve_ms = a.solve_ms;
  m.milp_solves = p.milp_solves;
  m.milp_gap = p.milp_gap;
  m.predicted_ms = p.predicted_ms;
  m.step_ms = ms_since(a.started) + a.exposed_plan_ms;
  double worst_device = 0;
  for (const auto& [_, r] : reports) {
    m.compute_ms = std::max(m.compute_ms, r.compute_ms);
    m.comm_ms = std::max(m.comm_ms, r.comm_ms);
    worst_device = std::max(worst_device, r.compute_ms + r.comm_ms);
    m.peak_memory_mb = std::max(m.peak_memory_mb, static_cast<double>(r.peak_memory) / (1024.0 * 1024.0));
    m.state_mb = std::max(m.state_mb, static_cast<double>(r.state_bytes) / (1024.0 * 1024.0));
    m.shard_comm_ms = std::max(m.shard_comm_ms, r.shard_comm_ms);
  }
  m.overhead_ms = std::max(0.0, m.step_ms - worst_device);
  double err = 0;
  int groups = 0;
  for (std::size_t mbi = 0; mbi < p.micro_batches.size(); ++mbi)
    for (const auto& g : p.micro_batches[mbi].groups) {
      if (g.sequences.empty()) continue;
      double measured = 0;
      for (int dv : g.devices) {
        auto r = reports.find(a.world[static_cast<std::size_t>(dv)]);
        if (r == reports.end()) continue;
        for (const auto& t : r->second.groups)
          if (t.micro_batch == mbi) measured = std::max(measured, t.compute_ms);
      }
      m.groups.push_back({static_cast<std::uint32_t>(mbi), g.degree, g.predicted_ms, measured});
      m.predicted_memory_mb = std::max(m.predicted_memory_mb, g.memory_mb);
      if (measured > 0) {
        err += std::abs(g.predicted_ms - measured) / measured;
        ++groups;
        scheduler::fit_sample fs;
        fs.degree = g.degree;
        fs.time_ms = measured;
        for (int q : g.sequences) fs.lengths.push_back(a.batch.lengths[static_cast<std::size_t>(q)]);
        observed_.push_back(std::move(fs));
      }
    }
  m.group_error = groups ? err / groups : 0;
  m.retried = retried_;
  if (retried_ > 0) ++status_.recovered_steps;
  m.recovery_ms = first_failure_ ? ms_since(*first_failure_) : 0;
  m.state_checksum = reports.begin()->second.checksum;
  status_.devices = m.devices;
  if (step_ < replay_until_) {
    log(fmt::format("step {} run again on the devices that missed its commit", step_));
  } else {
    if (status_.steps_done == status_.resumed_from) status_.first_loss = m.loss;
    status_.last_loss = m.loss;
    status_.steps_done = step_ + 1;
    // The commit is published (and recorded by the shell) before any device applies it.
    emit(publish_metrics{std::move(m)});
  }
  const float lr = spec_.lr_at(step_);
  for (const auto& [d, _] : devices_) send(d, commit_step{config_.job_id, step_, committed_attempt, lr});
  retried_ = 0;
  first_failure_.reset();
  refit();

  const auto done = step_ + 1;
  if (!spec_.checkpoint_dir.empty() && !devices_.empty() &&
      ((spec_.checkpoint_every > 0 && done % spec_.checkpoint_every == 0) || done == spec_.steps)) {
    phase_ = phase::checkpointing;
    saving_ = checkpoint_point{done, (fs::path{spec_.checkpoint_dir} / fmt::format("step-{:06d}.ckpt", done)).string(),
                               spec_.seed, 0};
    indexing_ = false;
    // One device writes a replica; under sharding, one shard group writes its shards (a
    // directory of shard files).
    std::vector<std::uint32_t> writers{devices_.begin()->first};
    if (auto g = a.shards.group.find(a.world.front()); g != a.shards.group.end()) writers = g->second;
    save_tags_.clear();
    save_sums_.clear();
    for (auto d : writers) {
      const auto tag = next_tag_++;
      save_tags_[tag] = d;
      send(d, save_state{config_.job_id, saving_->file, tag});
    }
    save_timer_ = timer(std::chrono::milliseconds{spec_.fault.checkpoint_timeout_ms});
    return;
  }
  next_step();
}

void job_controller::next_step() {
  ++step_;
  phase_ = phase::planning;
  step_boundary();
}

void job_controller::start_verify() {
  phase_ = phase::verifying;
  queries_.clear();
  query_sums_.clear();
  query_shards_.clear();
  for (const auto& [d, _] : devices_) {
    const auto tag = next_tag_++;
    queries_[tag] = d;
    send(d, query_state{config_.job_id, tag});
  }
  if (queries_.empty()) {
    finish_verify();
    return;
  }
  verify_timer_ = timer(std::chrono::milliseconds{spec_.fault.join_timeout_ms});
}

void job_controller::finish_verify() {
  if (phase_ != phase::verifying) return;
  // Replicas of the same shard (of the whole state, unsharded) must hold the same bits.
  std::map<std::pair<int, int>, std::uint64_t> by_shard;
  for (const auto& [d, c] : query_sums_) {
    const auto shard = sharded() ? query_shards_[d] : std::pair{1, 0};
    auto [it, fresh] = by_shard.emplace(shard, c);
    if (!fresh && it->second != c) {
      fail(sharded() ? fmt::format("replicas differ after the last step (device {}, shard {} of {})", d, shard.second,
                                   shard.first)
                     : fmt::format("replicas differ after the last step (device {})", d));
      return;
    }
  }
  std::vector<std::uint64_t> sums;
  if (!by_shard.empty()) {
    const int count = by_shard.begin()->first.first;
    for (const auto& [shard, c] : by_shard)
      if (shard.first == count) sums.push_back(c);
  }
  status_.final_checksum = sums.empty() ? 0 : kernels::combine_fingerprints(sums);
  finish(job_state::succeeded, "");
}

// ---- planning --------------------------------------------------------------------------------

int job_controller::devices_per_node() const {
  std::map<std::uint64_t, int> per;
  for (const auto& [_, d] : devices_) ++per[d.node];
  int k = 1 << 30;
  for (const auto& [_, n] : per) k = std::min(k, n);
  return per.empty() ? 1 : k;
}

std::string job_controller::strategy_for(int n) const {
  if (spec_.strategy.kind != strategy_kind::static_degree) return spec_.strategy.to_string();
  int d = static_cast<int>(spec_.strategy.degree);
  while (d > n) d /= 2;
  return fmt::format("static:{}", std::max(d, 1));
}

void job_controller::ask_plan(std::uint64_t step, const std::vector<std::uint32_t>& w, bool needed_now) {
  request_plan r;
  r.request = next_request_++;
  r.step = step;
  r.lengths = data_.batch(step).lengths;
  r.devices = static_cast<int>(w.size());
  r.devices_per_node = devices_per_node();
  r.strategy = strategy_for(r.devices);
  r.profile = profile_;
  r.profile.devices_per_node = r.devices_per_node;
  r.profile.mem_limit_gb = memory_limit_gb(w);
  r.profile.state_shards = state_shards(w);
  r.profile_version = profile_version_;
  r.time_limit_ms = spec_.planner_time_limit_ms;
  r.milp = spec_.milp;
  r.milp_min_gap = spec_.milp_min_gap;
  (needed_now ? needed_plan_ : ahead_plan_) = outstanding_plan{r.request, w, step, profile_version_};
  emit(std::move(r));
}

scheduler::profile job_controller::initial_profile() const {
  scheduler::profile p;
  p.name = "cpu-default";
  const double layers = spec_.model.layers, d = spec_.model.d_model;
  // Rough CPU figures (fp32 GEMM at a few GFLOP/s); calibration replaces them.
  p.alpha2 = 24.0 * layers * d * d / 2e6;
  p.alpha1 = 6.0 * layers * d / 2e6;
  p.beta1 = 2.0;
  p.hidden = static_cast<int>(spec_.model.d_model);
  p.layers = static_cast<int>(spec_.model.layers);
  p.bandwidth_gbps = {{2, 0.5}, {4, 0.4}, {8, 0.3}, {16, 0.2}};
  // Memory from the model itself (kernels::estimate_memory: the bytes a micro-batch makes a
  // device allocate), at the degree (up to 8) that needs most per token; every device holds a full
  // replica of the model states. params_b is in units of 2^30 parameters so that the cost
  // model's params_b * 16 * 1024 is exactly the states' MiB.
  const auto config = kernel_config(spec_.model);
  kernels::memory_profile m = kernels::estimate_memory(config, 1, 1);
  for (int degree : {2, 4, 8}) {
    // Above the head count a rank holds a whole head (not 1/degree of the heads): per-token
    // bytes scaled by the degree would grossly overstate lower degrees.
    if (degree > config.heads) break;
    const auto e = kernels::estimate_memory(config, degree, 1);
    m.per_token = std::max(m.per_token, e.per_token);
    m.fixed = std::max(m.fixed, e.fixed);
  }
  constexpr double kMiB = 1024.0 * 1024.0;
  const double states = 16.0 * static_cast<double>(config.parameter_count());
  p.act_per_token_mb = m.per_token / kMiB;
  p.params_b = static_cast<double>(config.parameter_count()) / (1024.0 * kMiB);
  p.state_shards = 1;
  p.fixed_mb = std::max(0.0, m.fixed - states) / kMiB;
  if (sharded()) {
    // The gathered layers and outer units and their gradients (of a 2-way cut; about the same
    // for any count).
    const auto one = kernels::estimate_memory(config, 1, 1), two = kernels::estimate_memory(config, 1, 2);
    const double local2 = static_cast<double>(kernels::shard_layout::of(config, 2, 0).local_size());
    p.fixed_mb += std::max(0.0, two.fixed - one.fixed + 16.0 * (static_cast<double>(config.parameter_count()) - local2)) / kMiB;
  }
  // Until devices report their memory: room for 4 * max_seq tokens.
  p.mem_limit_gb = (states / kMiB + p.fixed_mb + 4.0 * spec_.model.max_seq * p.act_per_token_mb) / 1024.0;
  p.devices_per_node = 1;
  return p;
}

int job_controller::state_shards(const std::vector<std::uint32_t>& w) const {
  if (!sharded()) return 1;
  return std::max(1, assign_shards(w, spec_.sharding, spec_.shard_group, static_cast<std::uint32_t>(devices_per_node()))
                         .group_size);
}

double job_controller::memory_limit_gb(const std::vector<std::uint32_t>& w) const {
  if (spec_.memory_limit_gb > 0) return spec_.memory_limit_gb;
  std::uint64_t least = 0;
  for (auto d : w) {
    auto it = devices_.find(d);
    if (it != devices_.end() && it->second.memory > 0)
      least = least == 0 ? it->second.memory : std::min(least, it->second.memory);
  }
  if (least == 0) return profile_.mem_limit_gb;
  return static_cast<double>(least) / (1024.0 * 1024.0 * 1024.0);
}

// ---- calibration -----------------------------------------------------------------------------

void job_controller::start_calibration() {
  const auto w = world();
  probe_ = scheduler::make_calibration_probe(static_cast<int>(w.size()), spec_.model.max_seq);
  calibration_batch_ = training_batch{};
  calibration_batch_.lengths = probe_.lengths;
  const auto content = data_.batch(0);
  for (auto l : probe_.lengths) {
    std::vector<std::int32_t> ids(static_cast<std::size_t>(l) + 1);
    for (std::size_t i = 0; i < ids.size(); ++i)
      ids[i] = content.tokens[0][i % content.tokens[0].size()] % static_cast<std::int32_t>(spec_.model.vocab);
    calibration_batch_.tokens.push_back(std::move(ids));
  }
  // A tiny copy of the probe first: it creates every group's communicator, which the timed run
  // must not include.
  training_batch tiny = calibration_batch_;
  for (std::size_t q = 0; q < tiny.lengths.size(); ++q) {
    tiny.lengths[q] = 8;
    tiny.tokens[q].resize(9);
  }
  calibration_stage_ = 1;
  calibration_started_ = clock_.now();
  dispatch(probe_.probe, std::move(tiny), true, 0, 0);
}

void job_controller::calibration_result(const std::vector<std::uint32_t>& w,
                                        const std::map<std::uint32_t, grad_ready>& reports) {
  if (calibration_stage_ == 1) {
    calibration_stage_ = 2;
    dispatch(probe_.probe, calibration_batch_, true, 0, 0);
    return;
  }
  calibration_stage_ = 0;
  phase_ = phase::planning;
  auto samples = scheduler::probe_samples(probe_, [&](int dev, std::size_t mb) {
    double ms = 0;
    auto r = reports.find(w[static_cast<std::size_t>(dev)]);
    if (r != reports.end())
      for (const auto& t : r->second.groups)
        if (t.micro_batch == mb) ms = std::max(ms, t.compute_ms);
    return ms;
  });
  auto base = profile_;
  // As the online refits: a constant the probes would pull negative (noisy communication timings
  // can do that to a bandwidth) is held, and the others are fitted without it.
  auto fit = scheduler::refit_profile(samples, base);
  if (!fit) {
    log(fmt::format("calibration fit failed ({}); keeping the default profile", fit.error().message()));
    step_boundary();
    return;
  }
  auto p = scheduler::apply_fit(base, *fit);
  p.alpha1 = std::max(p.alpha1, 1e-9);
  p.alpha2 = std::max(p.alpha2, 1e-9);
  p.beta1 = std::max(p.beta1, 0.0);
  p.name = "cpu-calibrated";
  if (p.validate()) {
    profile_ = p;
    ++profile_version_;
    prepared_.reset();
    status_.calibration = scheduler::profile_to_json(p);
    log(fmt::format("calibrated on {} devices in {:.0f} ms from {} samples: alpha1 {:.3g} ms/tok^2, alpha2 {:.3g} "
                    "ms/tok, beta1 {:.3g} ms, fit error max {:.1f}%",
                    w.size(), ms_since(calibration_started_), samples.size(), p.alpha1, p.alpha2, p.beta1,
                    100 * fit->max_relative_error));
  }
  step_boundary();
}

/// Online calibration: every few steps, refit the profile to the group times measured in
/// training, so the cost model follows the devices as they are loaded in practice. Only the last
/// kRefitWindow groups count: devices speed up after their first steps and slow down when the
/// machine gets busy. Training groups rarely separate every constant; refit_profile keeps what
/// they do not determine near the current profile and holds constants they would pull negative.
void job_controller::refit() {
  static constexpr std::size_t kRefitWindow = 64;
  while (observed_.size() > kRefitWindow) observed_.pop_front();
  // The first refit as soon as the groups of two steps determine it (the start-up calibration's
  // short probes can be far from training's groups), then every five steps. Too few groups yet:
  // tried again after the next step.
  if (!spec_.calibrate || ++steps_since_refit_ < (refits_ == 0 ? 2 : 5)) return;
  std::vector<scheduler::fit_sample> samples{observed_.begin(), observed_.end()};
  auto fit = scheduler::refit_profile(samples, profile_);
  if (!fit) return;
  steps_since_refit_ = 0;
  auto p = scheduler::apply_fit(profile_, *fit);
  if (!p.validate()) return;
  p.name = "cpu-online";
  ++refits_;
  profile_ = p;
  ++profile_version_;
  prepared_.reset();
  status_.calibration = scheduler::profile_to_json(p);
}

}  // namespace flexsp::actors
