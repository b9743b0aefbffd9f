#include "flexsp/actors/scheduler_actor.hpp"

#include "flexsp/core/clock.hpp"

#include <algorithm>
#include <filesystem>
#include <optional>

#include <nlohmann/json.hpp>

#include "flexsp/actors/client.hpp"
#include "flexsp/actors/device_actor.hpp"
#include "flexsp/actors/job_client.hpp"
#include "flexsp/actors/data_source.hpp"
#include "flexsp/core/actor.hpp"
#include "flexsp/core/log.hpp"
#include "flexsp/scheduler/planner.hpp"

namespace flexsp::actors {

namespace fs = std::filesystem;

namespace {

template <class... F>
struct overloaded : F... {
  using F::operator()...;
};
template <class... F>
overloaded(F...) -> overloaded<F...>;

/// To the worker: connect to the head (answer job_ready or job_start_failed).
struct connect_job {};

}  // namespace

/// The job's blocking work (see scheduler_actor.hpp). One per job, on the blocking pool.
class job_worker : public core::actor<job_worker> {
public:
  using interface = core::interface<connect_job, lookup_devices, request_plan, write_index>;
  job_worker(core::actor_ref<scheduler_actor> owner, std::string job_id, job_spec spec, scheduler_config config)
      : owner_{std::move(owner)}, job_id_{std::move(job_id)}, spec_{std::move(spec)}, config_{std::move(config)} {}

  void handle(connect_job) {
    auto c = cluster_client::attach(config_.host, *config_.system, config_.head);
    if (!c) return owner_.tell(job_start_failed{"cannot reach the head: " + c.error().to_string()});
    client_ = std::move(*c);
    auto owner = owner_;
    auto st = client_->subscribe([owner](const membership_event& ev) { owner.tell(ev); });
    if (!st) return owner_.tell(job_start_failed{"cannot subscribe to membership: " + st.error().to_string()});
    auto data = batch_source::create(spec_);
    if (!data) return owner_.tell(job_start_failed{data.error().to_string()});
    auto resume = read_checkpoint_index(spec_.checkpoint_dir, spec_.seed);
    if (!resume) return owner_.tell(job_start_failed{resume.error().message()});
    if (!spec_.checkpoint_dir.empty()) {
      std::error_code ec;
      fs::create_directories(spec_.checkpoint_dir, ec);
    }
    job_ready r;
    r.started.epoch = st->epoch;
    for (const auto& n : st->nodes)
      if (n.state == node_state::alive) r.started.nodes.push_back(n);
    r.started.resume = std::move(*resume);
    r.data = std::shared_ptr<const batch_source>{std::move(*data)};
    owner_.tell(std::move(r));
  }

  void handle(lookup_devices m) {
    devices_found found{m.node, {}};
    for (const auto& d : m.devices) {
      auto addr = client_ ? client_->lookup(device_actor_name(m.node, d))
                          : expected<remote_address>{make_error(errc::disconnected, "not connected")};
      if (!addr) return owner_.tell(devices_missing{m.node, addr.error().to_string()});
      found.devices.emplace_back(d, std::move(*addr));
    }
    owner_.tell(std::move(found));
  }

  void handle(request_plan m) {
    auto p = plan(m);
    owner_.tell(plan_ready{m.request, std::move(p)});
  }

  void handle(write_index m) {
    auto r = write_checkpoint_index(spec_.checkpoint_dir, m.point, job_id_);
    if (r) prune_checkpoints(m.point.file);
    owner_.tell(index_written{m.point.step, r ? std::string{} : r.error().message()});
  }

private:
  /// Removes the job's checkpoint files (`step-N.ckpt`) but the newest `checkpoint.keep`; never
  /// `latest`, which the index names now.
  void prune_checkpoints(const std::string& latest) {
    if (spec_.checkpoint_keep == 0) return;
    std::vector<std::pair<std::uint64_t, fs::path>> files;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(spec_.checkpoint_dir, ec)) {
      const auto name = e.path().filename().string();
      if (!name.starts_with("step-") || !name.ends_with(".ckpt")) continue;
      const auto digits = name.substr(5, name.size() - 10);
      if (digits.empty() || digits.find_first_not_of("0123456789") != std::string::npos) continue;
      files.emplace_back(std::stoull(digits), e.path());
    }
    std::sort(files.begin(), files.end());
    if (files.size() <= spec_.checkpoint_keep) return;
    files.resize(files.size() - spec_.checkpoint_keep);
    for (const auto& [_, f] : files)
      if (f != fs::path{latest} && fs::remove_all(f, ec) == static_cast<std::uintmax_t>(-1))
        log::get("scheduler")->warn("job {}: cannot remove the old checkpoint {}: {}", job_id_, f.string(), ec.message());
  }

  expected<scheduler::plan> plan(const request_plan& m) {
    const auto key = std::make_tuple(m.devices, m.devices_per_node, m.strategy, m.profile_version);
    if (!planner_ || key_ != key) {
      planner_.reset();
      scheduler::cluster c{m.devices, m.devices_per_node};
      scheduler::planner_options o;
      o.strategy = m.strategy;
      o.time_limit_ms = m.time_limit_ms;
      o.use_milp = m.milp;
      o.milp_min_gap = m.milp_min_gap;
      auto made = scheduler::planner::create(m.profile, c, o);
      if (!made) return make_error(errc::invalid_argument, "planner: {}", made.error().to_string());
      planner_.emplace(std::move(*made));
      key_ = key;
    }
    return planner_->make_plan(m.lengths);
  }
  core::actor_ref<scheduler_actor> owner_;
  std::string job_id_;
  job_spec spec_;
  scheduler_config config_;
  std::unique_ptr<cluster_client> client_;
  std::optional<scheduler::planner> planner_;
  std::tuple<int, int, std::string, std::uint64_t> key_;
};

// ---- scheduler_actor -------------------------------------------------------------------------

scheduler_actor::scheduler_actor(std::shared_ptr<scheduled_job> job) : job_{std::move(job)} {}
scheduler_actor::~scheduler_actor() = default;

core::actor_ref<device_actor> scheduler_actor::device_ref(std::uint32_t device, const remote_address& where) {
  auto it = devices_.find(device);
  if (it != devices_.end() && it->second.alive()) return it->second;
  auto ref = job_->config_.host->proxy<device_actor>(where);
  monitor(ref);
  devices_[device] = ref;
  return ref;
}

void scheduler_actor::on_down(const core::down_msg& m) {
  for (auto it = devices_.begin(); it != devices_.end(); ++it)
    if (it->second == m.source) {
      const auto device = it->first;
      devices_.erase(it);
      feed(device_down{device, m.what.empty() ? std::string{core::to_string(m.reason)} : m.what});
      return;
    }
}

void scheduler_actor::handle(begin_job m) {
  published_ = m.self.actor_id;
  core::spawn_options o;
  o.name = "job-worker:" + job_->id();
  o.blocking = true;
  worker_ = system().spawn<job_worker>(o, self(), job_->id(), job_->spec_, job_->config_);
  self_address_ = m.self;
  worker_.tell(connect_job{});
}

void scheduler_actor::handle(job_ready m) {
  if (ended_) return;
  m.started.recovered = job_->recovered_;
  data_ = std::move(m.data);
  controller_.emplace(controller_config{job_->id(), self_address_}, job_->spec_, *data_, system().time_source());
  if (cancel_pending_) {
    end(job_state::cancelled, "cancelled");
    return;
  }
  feed(m.started);
}

void scheduler_actor::handle(job_start_failed m) {
  if (ended_) return;
  job_->add_log("failed: " + m.reason);
  log::get("scheduler")->info("job {}: failed: {}", job_->id(), m.reason);
  end(job_state::failed, m.reason);
}

void scheduler_actor::handle(cancel_requested m) {
  if (ended_) return;
  if (!controller_) {
    cancel_pending_ = true;
    if (!worker_.valid()) end(job_state::cancelled, "cancelled");
    return;
  }
  feed(m);
}

void scheduler_actor::drain() {
  for (;;) {
    auto commands = controller_->take_commands();
    if (commands.empty()) break;
    std::vector<send_failed> failed;
    std::optional<job_finished> finished;
    for (auto& c : commands) {
      std::visit(overloaded{
                     [&](send_to_device& s) {
                       auto ref = device_ref(s.device, s.address);
                       auto r = std::visit([&](auto& msg) { return ref.try_tell(std::move(msg)); }, s.message);
                       if (!r) failed.push_back(send_failed{s.device, r.error().message()});
                     },
                     [&](lookup_devices& l) { worker_.tell(std::move(l)); },
                     [&](request_plan& p) { worker_.tell(std::move(p)); },
                     [&](write_index& w) { worker_.tell(std::move(w)); },
                     [&](start_timer& t) { (void)send_after(t.delay, timer_fired{t.id}); },
                     [&](publish_metrics& m) {
                       m.metrics.committed_at_ms = core::unix_ms();
                       job_->update(controller_->status());
                       job_->add_metrics(m.metrics);
                     },
                     [&](job_event& e) { job_->add_event(e); },
                     [&](log_line& l) {
                       log::get("scheduler")->info("job {}: {}", job_->id(), l.text);
                       job_->add_log(l.text);
                     },
                     [&](job_finished& f) { finished = std::move(f); },
                 },
                 c);
    }
    if (finished) {
      end(finished->state, finished->message);
      return;
    }
    for (const auto& f : failed) controller_->on(f);
  }
  job_->update(controller_->status());
}

void scheduler_actor::end(job_state state, const std::string& message) {
  if (ended_) return;
  release(state, message);
  quit();
}

void scheduler_actor::on_stop(core::exit_reason reason) {
  // Stopped from outside (the actor system shut down): the job ends here.
  if (!ended_) release(job_state::cancelled, fmt::format("the scheduler actor stopped ({})", core::to_string(reason)));
}

void scheduler_actor::release(job_state state, const std::string& message) {
  ended_ = true;
  if (controller_) job_->update(controller_->status());
  if (worker_.valid()) worker_.stop(core::stop_mode::discard);
  if (published_) job_->config_.host->remove(published_);
  job_->finish(state, message);
}

// ---- scheduled_job ------------------------------------------------------------------------------

scheduled_job::scheduled_job(std::string id, job_spec spec, scheduler_config config, metrics_fn m, log_fn l)
    : id_{std::move(id)}, spec_{std::move(spec)}, config_{std::move(config)}, on_metrics_{std::move(m)},
      on_log_{std::move(l)} {
  status_.id = id_;
  status_.name = spec_.name;
  status_.steps_total = spec_.steps;
  if (!spec_.checkpoint_dir.empty()) spec_.checkpoint_dir = fs::absolute(spec_.checkpoint_dir).string();
}

std::shared_ptr<scheduled_job> scheduled_job::start(std::string job_id, job_spec spec, scheduler_config config,
                                              metrics_fn on_metrics, log_fn on_log) {
  FLEXSP_EXPECTS(config.system != nullptr && config.host != nullptr, "a job needs an actor system and an actor host");
  std::shared_ptr<scheduled_job> h{
      new scheduled_job{std::move(job_id), std::move(spec), std::move(config), std::move(on_metrics), std::move(on_log)}};
  h->launch();
  return h;
}

std::shared_ptr<scheduled_job> scheduled_job::resume(std::string job_id, job_record record, scheduler_config config) {
  FLEXSP_EXPECTS(config.system != nullptr && config.host != nullptr, "a job needs an actor system and an actor host");
  std::shared_ptr<scheduled_job> h{new scheduled_job{std::move(job_id), record.spec, std::move(config), {}, {}}};
  auto progress = record.progress();
  const auto id = h->id_, name = h->status_.name;
  h->status_ = record.status;
  h->status_.id = id;
  h->status_.name = name;
  h->metrics_ = std::move(record.metrics);
  h->logs_ = std::move(record.logs);
  h->events_ = std::move(record.events);
  h->incarnation_ = record.incarnation;
  if (h->status_.terminal()) return h;  // listed, nothing runs
  progress.incarnation = ++h->incarnation_;
  h->recovered_ = progress;
  h->status_.state = job_state::pending;
  h->status_.steps_done = progress.steps_done;
  h->add_log(fmt::format("taken back by a restarted head after step {} (restart {})", progress.steps_done,
                         progress.incarnation));
  h->launch();
  return h;
}

void scheduled_job::launch() {
  {
    std::lock_guard lock{mutex_};
    save_locked();  // before anything runs: a head restarted from here knows the job
  }
  core::spawn_options o;
  o.name = "scheduler:" + id_;
  auto ref = config_.system->spawn<scheduler_actor>(o, shared_from_this());
  {
    std::lock_guard lock{mutex_};
    actor_ = ref;
  }
  const auto id = config_.host->publish(ref);
  ref.tell(begin_job{remote_address{config_.host->address(), id}});
}

namespace {
constexpr std::string_view kJobsTable = "jobs";
std::string metrics_list(const std::string& id) { return "metrics/" + id; }
std::string logs_list(const std::string& id) { return "logs/" + id; }
std::string events_list(const std::string& id) { return "events/" + id; }
}  // namespace

void scheduled_job::keep(expected<void> written, std::string_view what) {
  if (written) {
    store_failing_ = false;
  } else if (!store_failing_) {
    store_failing_ = true;
    log::get("scheduler")->warn("job {}: cannot record {} in the state store ({}); a restarted head would not have it",
                                id_, what, written.error().to_string());
  }
}

void scheduled_job::save_locked() {
  if (!config_.store) return;
  const auto& s = status_;
  nlohmann::json j{{"id", id_},
                   {"spec", nlohmann::json::parse(job_spec_to_json(spec_))},
                   {"state", static_cast<int>(s.state)},
                   {"error", s.error},
                   {"steps_done", s.steps_done},
                   {"resumed_from", s.resumed_from},
                   {"devices", s.devices},
                   {"first_loss", s.first_loss},
                   {"last_loss", s.last_loss},
                   {"calibration", s.calibration},
                   {"final_checksum", s.final_checksum},
                   {"aborted_attempts", s.aborted_attempts},
                   {"incarnation", incarnation_}};
  keep(config_.store->put(kJobsTable, id_, j.dump()), "the job's status");
}

recovered_progress job_record::progress() const {
  recovered_progress p;
  p.steps_done = status.steps_done;
  p.resumed_from = status.resumed_from;
  p.first_loss = status.first_loss;
  p.last_loss = status.last_loss;
  p.aborted_attempts = status.aborted_attempts;
  p.incarnation = incarnation;
  // The last metrics line is the last commit's record (the status is written after it).
  if (!metrics.empty()) {
    auto j = nlohmann::json::parse(metrics.back(), nullptr, false);
    if (j.is_object() && j.contains("step")) {
      p.steps_done = j["step"].get<std::uint64_t>();  // the line numbers steps from 1
      p.last_loss = j.value("loss", p.last_loss);
      p.last_step_checksum = j.value("state_checksum", std::uint64_t{0});
      if (metrics.size() == 1 || p.steps_done == p.resumed_from + 1) {
        auto first = nlohmann::json::parse(metrics.front(), nullptr, false);
        if (first.is_object()) p.first_loss = first.value("loss", p.first_loss);
      }
    }
  }
  return p;
}

expected<std::map<std::string, job_record>> load_job_records(state_store& store) {
  FLEXSP_TRY_ASSIGN(auto rows, store.entries(kJobsTable));
  std::map<std::string, job_record> out;
  for (const auto& [id, text] : rows) {
    auto j = nlohmann::json::parse(text, nullptr, false);
    if (!j.is_object() || !j.contains("spec")) {
      log::get("scheduler")->warn("state store: skipping job {}: its record is not a JSON object with a spec", id);
      continue;
    }
    auto spec = parse_job_spec(j["spec"].dump());
    if (!spec) {
      log::get("scheduler")->warn("state store: skipping job {}: {}", id, spec.error().message());
      continue;
    }
    job_record r;
    r.spec = std::move(*spec);
    auto& s = r.status;
    s.id = id;
    s.name = r.spec.name;
    const int state = j.value("state", 0);
    s.state = static_cast<job_state>(state);
    if (!is_terminal(s.state) && s.state != job_state::running) s.state = job_state::pending;
    s.error = j.value("error", std::string{});
    s.steps_total = r.spec.steps;
    s.steps_done = j.value("steps_done", std::uint64_t{0});
    s.resumed_from = j.value("resumed_from", std::uint64_t{0});
    s.devices = j.value("devices", std::uint32_t{0});
    s.first_loss = j.value("first_loss", 0.0);
    s.last_loss = j.value("last_loss", 0.0);
    s.calibration = j.value("calibration", std::string{});
    s.final_checksum = j.value("final_checksum", std::uint64_t{0});
    s.aborted_attempts = j.value("aborted_attempts", std::uint64_t{0});
    r.incarnation = j.value("incarnation", std::uint64_t{0});
    FLEXSP_TRY_ASSIGN(r.metrics, store.items(metrics_list(id)));
    FLEXSP_TRY_ASSIGN(r.logs, store.items(logs_list(id)));
    FLEXSP_TRY_ASSIGN(r.events, store.items(events_list(id)));
    out.emplace(id, std::move(r));
  }
  return out;
}

void scheduled_job::cancel() {
  core::actor_ref<scheduler_actor> a;
  {
    std::lock_guard lock{mutex_};
    a = actor_;
  }
  if (a.valid()) (void)a.try_tell(cancel_requested{});
}

job_status scheduled_job::wait() {
  std::unique_lock lock{mutex_};
  changed_.wait(lock, [this]() { return status_.terminal(); });
  return status_;
}

job_status scheduled_job::status() const {
  std::lock_guard lock{mutex_};
  return status_;
}

void scheduled_job::update(const job_status& s) {
  std::lock_guard lock{mutex_};
  if (status_.terminal()) return;
  const auto id = status_.id, name = status_.name;
  status_ = s;
  status_.id = id;
  status_.name = name;
  if (status_.terminal()) status_.state = job_state::running;  // terminal only through finish()
}

void scheduled_job::add_log(const std::string& line) {
  {
    // Kept with the time it was written (UTC), as `flexsp job logs` and the dashboard show it.
    auto stamped = core::utc_timestamp(core::unix_ms()) + " " + line;
    std::lock_guard lock{mutex_};
    if (config_.store) keep(config_.store->append(logs_list(id_), stamped), "a log line");
    logs_.push_back(std::move(stamped));
  }
  if (on_log_) on_log_(line);
}

void scheduled_job::add_event(const job_event& e) {
  auto line = nlohmann::json{{"time_ms", core::unix_ms()}, {"kind", e.kind}, {"step", e.step}, {"detail", e.detail}}.dump();
  std::lock_guard lock{mutex_};
  if (config_.store) keep(config_.store->append(events_list(id_), line), "an event");
  events_.push_back(std::move(line));
}

std::vector<std::string> scheduled_job::events() const {
  std::lock_guard lock{mutex_};
  return events_;
}

void scheduled_job::add_metrics(const step_metrics& m) {
  job_update update{id_, 0, m.to_json(), job_state::running};
  {
    std::lock_guard lock{mutex_};
    update.index = metrics_.size();
    metrics_.push_back(update.metrics);
    if (config_.store) {
      keep(config_.store->append(metrics_list(id_), update.metrics), "a committed step");
      save_locked();
    }
  }
  notify_watchers(update);
  if (on_metrics_) on_metrics_(m);
}

void scheduled_job::finish(job_state state, const std::string& message) {
  job_update end{id_, 0, {}, state};
  {
    std::lock_guard lock{mutex_};
    if (status_.terminal()) return;
    status_.state = state;
    status_.error = message;
    end.index = metrics_.size();
    actor_ = {};
    save_locked();
  }
  changed_.notify_all();
  notify_watchers(end);
}

void scheduled_job::watch(remote_address subscriber) {
  auto sink = config_.host->proxy<update_sink>(subscriber);
  std::optional<job_update> ended;
  {
    std::lock_guard lock{mutex_};
    if (status_.terminal())
      ended = job_update{id_, metrics_.size(), {}, status_.state};
    else
      watchers_.push_back(sink);
  }
  if (ended) (void)sink.try_tell(*ended);
}

void scheduled_job::notify_watchers(const job_update& update) {
  std::vector<core::actor_ref<update_sink>> to;
  {
    std::lock_guard lock{mutex_};
    to = watchers_;
  }
  std::vector<core::actor_ref<update_sink>> gone;
  for (const auto& w : to)
    if (!w.try_tell(update)) gone.push_back(w);
  if (gone.empty()) return;
  std::lock_guard lock{mutex_};
  std::erase_if(watchers_, [&](const auto& w) { return std::find(gone.begin(), gone.end(), w) != gone.end(); });
}

std::vector<std::string> scheduled_job::metrics_since(std::size_t from) const {
  std::lock_guard lock{mutex_};
  if (from >= metrics_.size()) return {};
  return {metrics_.begin() + static_cast<std::ptrdiff_t>(from), metrics_.end()};
}

std::string scheduled_job::last_metrics() const {
  std::lock_guard lock{mutex_};
  return metrics_.empty() ? std::string{} : metrics_.back();
}

std::vector<std::string> scheduled_job::logs() const {
  std::lock_guard lock{mutex_};
  return logs_;
}

}  // namespace flexsp::actors
