#include "flexsp/actors/job_manager.hpp"

#include "flexsp/actors/data_source.hpp"

#include <filesystem>

#include "flexsp/actors/client.hpp"
#include "flexsp/core/log.hpp"

namespace flexsp::actors {

namespace {

job_info info_of(const scheduled_job& job, std::uint64_t metrics_from, bool with_logs) {
  const auto s = job.status();
  job_info i;
  i.id = s.id;
  i.name = s.name;
  i.state = s.state;
  i.steps_done = s.steps_done;
  i.steps_total = s.steps_total;
  i.error = s.error;
  i.first_loss = s.first_loss;
  i.last_loss = s.last_loss;
  i.devices = s.devices;
  i.metrics = job.metrics_since(metrics_from);
  if (with_logs) i.logs = job.logs();
  i.resumed_from = s.resumed_from;
  i.final_checksum = s.final_checksum;
  i.calibration = s.calibration;
  return i;
}

}  // namespace

expected<job_info> jobs_actor::handle(submit_job m) {
  FLEXSP_TRY_ASSIGN(auto spec, parse_job_spec(m.spec));
  // A remote submitter resolves relative paths against its own directory (job_client does).
  FLEXSP_TRY(check_checkpoint_dir(spec.checkpoint_dir));
  FLEXSP_TRY_ASSIGN(auto job, manager_.submit(spec));
  return info_of(*job, 0, false);
}
expected<job_info> jobs_actor::handle(query_job m) {
  FLEXSP_TRY_ASSIGN(auto job, manager_.find(m.id));
  return info_of(*job, m.metrics_from, m.with_logs);
}
expected<job_info> jobs_actor::handle(cancel_job m) {
  FLEXSP_TRY_ASSIGN(auto job, manager_.find(m.id));
  job->cancel();
  return info_of(*job, ~std::uint64_t{0}, false);
}
expected<job_info> jobs_actor::handle(watch_job m) {
  FLEXSP_TRY_ASSIGN(auto job, manager_.find(m.id));
  job->watch({m.subscriber_host, m.subscriber_actor});
  return info_of(*job, ~std::uint64_t{0}, false);
}
job_list jobs_actor::handle(list_jobs) {
  job_list out;
  for (const auto& s : manager_.list()) {
    if (auto j = manager_.find(s.id)) out.jobs.push_back(info_of(**j, ~std::uint64_t{0}, false));
  }
  return out;
}

job_manager::job_manager(scheduler_config config) : config_{std::move(config)} {
  if (!config_.system) {
    core::actor_system_config c;
    c.workers = 2;  // scheduler actors only queue and decide; planning runs on the blocking pool
    own_system_ = std::make_unique<core::actor_system>(c);
    config_.system = own_system_.get();
  }
}

job_manager::~job_manager() {
  shutdown();
  own_system_.reset();
}

expected<void> job_manager::admit(const job_spec& spec) const {
  FLEXSP_TRY(check_checkpoint_dir(spec.checkpoint_dir));
  FLEXSP_TRY(batch_source::check(spec));
  auto view = cluster_at(*config_.host, config_.head).ask(get_cluster_view{}, std::chrono::seconds{10}).get();
  if (!view)
    return make_error(view.error().kind(), "cannot check the job against the cluster: {}", view.error().message());
  return check_job_fits(spec, from_wire(*view).nodes);
}

expected<std::shared_ptr<scheduled_job>> job_manager::submit(const job_spec& submitted, scheduled_job::metrics_fn on_metrics,
                                                               scheduled_job::log_fn on_log) {
  FLEXSP_TRY(validate_job_spec(submitted));
  // A local caller's relative paths are relative to its directory, which is ours.
  job_spec spec = submitted;
  if (!spec.checkpoint_dir.empty()) spec.checkpoint_dir = std::filesystem::absolute(spec.checkpoint_dir).string();
  for (auto& p : spec.prepared) p.dir = std::filesystem::absolute(p.dir).string();
  if (!spec.data_path.empty()) spec.data_path = std::filesystem::absolute(spec.data_path).string();
  FLEXSP_TRY(admit(spec));
  if (spec.checkpoint_dir.empty() && !spec.checkpoints_off && spec.checkpoint_every > 0 &&
      config_.default_checkpoint_root.empty())
    return make_error(errc::invalid_argument,
                      "checkpoint.dir: is required when checkpoint.every is set (this cluster has no default checkpoint "
                      "directory)");
  std::string id;
  {
    std::lock_guard lock{mutex_};
    id = fmt::format("{}-{}", spec.name, next_++);
    if (config_.store)
      if (auto r = config_.store->put("jobs_meta", "next", std::to_string(next_)); !r)
        log::get("scheduler")->warn("cannot record the next job number in the state store: {}", r.error().to_string());
  }
  if (spec.checkpoint_dir.empty() && !spec.checkpoints_off && !config_.default_checkpoint_root.empty()) {
    // The safe default: a job that did not say where to checkpoint survives losing every device.
    spec.checkpoint_dir = (std::filesystem::path{config_.default_checkpoint_root} / id).string();
    if (spec.checkpoint_every == 0) spec.checkpoint_every = config_.default_checkpoint_every;
    FLEXSP_TRY(check_checkpoint_dir(spec.checkpoint_dir));
  }
  auto job = scheduled_job::start(id, spec, config_, std::move(on_metrics), std::move(on_log));
  if (submitted.checkpoint_dir.empty() && !spec.checkpoint_dir.empty())
    log::get("scheduler")->info("job {}: checkpoints every {} steps in {} (the cluster's default; \"checkpoint\": "
                                "{{\"dir\": \"none\"}} turns them off)",
                                id, spec.checkpoint_every, spec.checkpoint_dir);
  std::lock_guard lock{mutex_};
  jobs_[id] = job;
  log::get("scheduler")->info("job {} submitted ({} steps, strategy {})", id, spec.steps, spec.strategy.to_string());
  return job;
}

expected<std::shared_ptr<scheduled_job>> job_manager::find(const std::string& id) const {
  std::lock_guard lock{mutex_};
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return make_error(errc::not_found, "no job '{}'", id);
  return it->second;
}

std::vector<job_status> job_manager::list() const {
  std::lock_guard lock{mutex_};
  std::vector<job_status> out;
  for (const auto& [_, j] : jobs_) out.push_back(j->status());
  return out;
}

void job_manager::shutdown() {
  std::map<std::string, std::shared_ptr<scheduled_job>> jobs;
  {
    std::lock_guard lock{mutex_};
    jobs = jobs_;
    if (served_actor_) config_.host->remove(served_actor_);
    served_actor_ = 0;
    if (served_.valid()) served_.stop();
    served_ = {};
  }
  for (auto& [_, j] : jobs) j->cancel();
  for (auto& [_, j] : jobs) (void)j->wait();
}

expected<std::size_t> job_manager::recover() {
  if (!config_.store) return std::size_t{0};
  FLEXSP_TRY_ASSIGN(auto records, load_job_records(*config_.store));
  FLEXSP_TRY_ASSIGN(auto meta, config_.store->entries("jobs_meta"));
  std::uint64_t next = 1;
  if (auto it = meta.find("next"); it != meta.end()) next = std::strtoull(it->second.c_str(), nullptr, 10);
  std::size_t running = 0;
  for (auto& [id, record] : records) {
    // Ids are "<name>-<n>": the next number stays above every recorded one.
    if (const auto dash = id.rfind('-'); dash != std::string::npos)
      next = std::max<std::uint64_t>(next, std::strtoull(id.c_str() + dash + 1, nullptr, 10) + 1);
    const bool ended = record.status.terminal();
    auto job = scheduled_job::resume(id, std::move(record), config_);
    if (!ended) {
      ++running;
      log::get("scheduler")->info("job {} taken back from the state store at step {}", id, job->status().steps_done);
    }
    std::lock_guard lock{mutex_};
    jobs_[id] = std::move(job);
  }
  std::lock_guard lock{mutex_};
  next_ = std::max(next_, next);
  if (!records.empty())
    log::get("scheduler")->info("state store {}: {} jobs on record, {} continue", config_.store->describe(),
                                records.size(), running);
  return running;
}

expected<void> job_manager::serve() {
  std::lock_guard lock{mutex_};
  if (served_actor_ != 0) return make_error(errc::invalid_argument, "the job API is already served");
  core::spawn_options o;
  o.name = "jobs";
  o.blocking = true;  // a submit asks the cluster actor what the cluster offers
  served_ = config_.system->spawn<jobs_actor>(o, *this);
  served_actor_ = config_.host->publish(served_, std::chrono::seconds{30}, jobs_actor_id);
  return {};
}

}  // namespace flexsp::actors
