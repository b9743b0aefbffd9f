#include "flexsp/core/actor_system.hpp"

#include <thread>
#include <vector>

#include "flexsp/core/log.hpp"
#include "local_actor.hpp"
#include "scheduler.hpp"

namespace flexsp::core {

std::string_view to_string(dead_letter_reason r) noexcept {
  switch (r) {
    case dead_letter_reason::actor_terminated: return "actor terminated";
    case dead_letter_reason::mailbox_full: return "mailbox full";
    case dead_letter_reason::unhandled: return "unhandled";
  }
  return "unknown";
}

expected<void> actor_system_config::validate() const {
  if (throughput == 0) return make_error(errc::invalid_argument, "actor_system_config.throughput must be >= 1");
  if (workers > 4096) return make_error(errc::invalid_argument, "actor_system_config.workers = {} is too large", workers);
  if (blocking_workers == 0 || blocking_workers > 4096)
    return make_error(errc::invalid_argument, "actor_system_config.blocking_workers = {} must be in 1..4096",
                      blocking_workers);
  return {};
}

actor_system::actor_system(actor_system_config config) : config_{std::move(config)} {
  auto valid = config_.validate();
  FLEXSP_EXPECTS(valid.has_value(), "{}", valid.error().message());
  if (config_.clock)
    clock_ = config_.clock;
  else
    clock_ = std::make_shared<steady_clock_source>();
  timers_ = std::make_unique<timer_service>(*clock_);
  if (config_.mode == execution_mode::manual) {
    scheduler_ = std::make_unique<detail::manual_scheduler>();
  } else {
    workers_ = config_.workers != 0 ? config_.workers : std::max(1u, std::thread::hardware_concurrency());
    scheduler_ = std::make_unique<detail::thread_pool>(workers_, config_.throughput,
                                                        config_.scheduling == scheduling_policy::sharing);
  }
}

actor_system::~actor_system() { shutdown(); }

detail::intrusive_ptr<abstract_actor> actor_system::spawn_impl(std::unique_ptr<actor_base> instance,
                                                              std::function<std::unique_ptr<actor_base>()> factory,
                                                              spawn_options options) {
  const std::uint64_t id = next_id_.fetch_add(1, std::memory_order_relaxed);
  auto cell = detail::make_intrusive<detail::local_actor>(*this, scheduler_for(options.blocking), id,
                                                          std::move(options.name), std::move(instance),
                                                          std::move(factory), options.restart,
                                                          options.mailbox.value_or(config_.default_mailbox));
  bool late = false;
  {
    std::lock_guard lock{registry_mutex_};
    late = shutting_down_;
    registry_.emplace(id, cell);
  }
  spawned_.fetch_add(1, std::memory_order_relaxed);
  if (late)
    cell->terminate_unstarted(exit_reason::shutdown);
  else
    cell->start();
  return cell;
}

void actor_system::actor_terminated(detail::local_actor& cell) {
  terminated_.fetch_add(1, std::memory_order_relaxed);
  detail::intrusive_ptr<abstract_actor> last;  // released outside the lock
  std::lock_guard lock{registry_mutex_};
  if (auto it = registry_.find(cell.id()); it != registry_.end()) {
    last = std::move(it->second);
    registry_.erase(it);
  }
  if (registry_.empty()) all_terminated_.notify_all();
}

void actor_system::monitor(const any_ref& target, std::function<void(const down_msg&)> callback) {
  FLEXSP_EXPECTS(target.valid(), "monitor of an empty reference");
  target.get()->attach(std::move(callback));
}

void actor_system::shutdown() {
  FLEXSP_EXPECTS(config_.mode == execution_mode::manual || scheduler_->may_block_caller(),
                 "actor_system::shutdown called from one of its own worker threads");
  if (shut_down_.exchange(true)) return;
  std::vector<detail::intrusive_ptr<abstract_actor>> actors;
  {
    std::lock_guard lock{registry_mutex_};
    shutting_down_ = true;
    actors.reserve(registry_.size());
    for (auto& [id, a] : registry_) actors.push_back(a);
  }
  for (auto& a : actors) static_cast<detail::local_actor&>(*a).request_termination(exit_reason::shutdown);
  actors.clear();
  if (config_.mode == execution_mode::manual) {
    while (manual().step()) {
    }
  } else {
    std::unique_lock lock{registry_mutex_};
    all_terminated_.wait(lock, [this] { return registry_.empty(); });
  }
  timers_->stop();
  scheduler_->stop();
  {
    std::lock_guard lock{blocking_mutex_};
    if (blocking_) blocking_->stop();
  }
  if (auto n = dead_letters_.load(); n != 0)
    log::get("core")->debug("actor system stopped; {} dead letters in total", n);
}

detail::manual_scheduler& actor_system::manual() {
  FLEXSP_EXPECTS(config_.mode == execution_mode::manual, "step()/run() need execution_mode::manual");
  return static_cast<detail::manual_scheduler&>(*scheduler_);
}

detail::scheduler& actor_system::scheduler_for(bool blocking) {
  if (!blocking || config_.mode == execution_mode::manual) return *scheduler_;
  std::lock_guard lock{blocking_mutex_};
  if (!blocking_) blocking_ = std::make_unique<detail::thread_pool>(config_.blocking_workers, config_.throughput, /*sharing=*/true,
                                                     /*blocking=*/true);
  return *blocking_;
}

bool actor_system::step() { return manual().step(); }

std::size_t actor_system::run() {
  auto& s = manual();
  std::size_t n = 0;
  while (s.step()) ++n;
  return n;
}

void actor_system::on_dead_letter(std::function<void(const dead_letter&)> observer) {
  std::lock_guard lock{dead_letter_mutex_};
  dead_letter_observer_ = observer ? std::make_shared<std::function<void(const dead_letter&)>>(std::move(observer))
                                   : nullptr;
}

void actor_system::report_dead_letter(const abstract_actor& target, std::string_view message_type,
                                      dead_letter_reason reason) {
  dead_letters_.fetch_add(1, std::memory_order_relaxed);
  log::get("core")->debug("dead letter: {} to actor {} #{} ({})", message_type, target.name(), target.id(),
                          to_string(reason));
  std::shared_ptr<std::function<void(const dead_letter&)>> observer;
  {
    std::lock_guard lock{dead_letter_mutex_};
    observer = dead_letter_observer_;
  }
  if (observer) (*observer)(dead_letter{target.id(), target.name(), message_type, reason});
}

actor_system_stats actor_system::stats() const noexcept {
  return {spawned_.load(), terminated_.load(), restarts_.load(), dead_letters_.load(), blocked_sends_.load()};
}

std::size_t actor_system::live_actors() const noexcept {
  std::lock_guard lock{registry_mutex_};
  return registry_.size();
}

bool actor_system::may_block_caller() const noexcept { return scheduler_->may_block_caller(); }

}  // namespace flexsp::core
