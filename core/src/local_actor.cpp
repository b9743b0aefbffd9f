#include "local_actor.hpp"

#include <algorithm>
#include <exception>
#include <optional>
#include <utility>

#include "flexsp/core/log.hpp"
#include "scheduler.hpp"

namespace flexsp::core::detail {
namespace {

// Runtime control messages. `system` messages bypass mailbox bounds.
struct start_message final : message {
  start_message();
  static constexpr std::string_view payload_name() noexcept { return "flexsp::core::start"; }
  static void invoke(actor_base& self, message&) {
    local_actor::of(self).mark_started();
    self.on_start();
  }
};

struct stop_message final : message {
  stop_message();
  static constexpr std::string_view payload_name() noexcept { return "flexsp::core::stop"; }
  static void invoke(actor_base& self, message&) { local_actor::of(self).quit(exit_reason::normal); }
};

// Makes sure an idle actor gets scheduled to notice a termination request.
struct wake_message final : message {
  wake_message();
  static constexpr std::string_view payload_name() noexcept { return "flexsp::core::wake"; }
  static void invoke(actor_base&, message&) {}
};

// Out of line: the vtable needs the complete message class.
start_message::start_message() : message{&vtable_for<start_message>::value, true} {}
stop_message::stop_message() : message{&vtable_for<stop_message>::value, true} {}
wake_message::wake_message() : message{&vtable_for<wake_message>::value, true} {}

bool is_control(const message& m) noexcept {
  return m.vtable == &vtable_for<start_message>::value || m.vtable == &vtable_for<stop_message>::value ||
         m.vtable == &vtable_for<wake_message>::value;
}

}  // namespace

local_actor::local_actor(actor_system& sys, scheduler& sched, std::uint64_t id, std::string name, std::unique_ptr<actor_base> instance,
                         factory make, restart_policy restart, mailbox_config mailbox)
    : abstract_actor{id, std::move(name)},
      sys_{sys},
      sched_{sched},
      mailbox_config_{mailbox},
      instance_{std::move(instance)},
      factory_{std::move(make)},
      restart_{restart} {
  instance_->cell_ = this;
}

local_actor::~local_actor() = default;

void local_actor::start() {
  // The mailbox starts idle, so this push always hands us the one scheduling right.
  auto r = mailbox_.push(new start_message{});
  FLEXSP_ASSERT(r == push_result::unblocked);
  add_ref();
  sched_.schedule(this);
}

void local_actor::terminate_unstarted(exit_reason reason) { terminate(reason); }

expected<void> local_actor::enqueue(message_ptr m) {
  const bool bounded = !m->is_system && mailbox_config_.capacity > 0;
  if (bounded) {
    if (auto slot = acquire_slot(); !slot) {
      auto kind = slot.error().kind() == errc::overloaded ? dead_letter_reason::mailbox_full
                                                           : dead_letter_reason::actor_terminated;
      return reject(std::move(m), std::move(slot).error(), kind);
    }
  }
  message* raw = m.release();
  switch (mailbox_.push(raw)) {
    case push_result::queued:
      return {};
    case push_result::unblocked:
      add_ref();
      sched_.schedule(this);
      return {};
    case push_result::closed:
      break;
  }
  m.reset(raw);
  if (bounded) release_slot();
  return reject(std::move(m), error{errc::disconnected, fmt::format("actor {} #{} has terminated", name(), id())},
                dead_letter_reason::actor_terminated);
}

expected<void> local_actor::reject(message_ptr m, error why, dead_letter_reason reason) {
  m->vtable->fail(*m, why);
  if (!is_control(*m)) sys_.report_dead_letter(*this, m->vtable->type_name, reason);
  return unexpected<error>{std::move(why)};
}

expected<void> local_actor::acquire_slot() {
  const std::size_t capacity = mailbox_config_.capacity;
  for (;;) {
    if (queued_user_.fetch_add(1, std::memory_order_seq_cst) < capacity) return {};
    queued_user_.fetch_sub(1, std::memory_order_seq_cst);
    if (!alive()) return make_error(errc::disconnected, "actor {} #{} has terminated", name(), id());
    if (mailbox_config_.overflow == overflow_policy::reject || !sys_.may_block_caller())
      return make_error(errc::overloaded, "mailbox of actor {} #{} is full ({} messages)", name(), id(), capacity);
    sys_.count_blocked_send();
    std::unique_lock lock{space_mutex_};
    blocked_senders_.fetch_add(1, std::memory_order_seq_cst);
    space_cv_.wait(lock, [this, capacity] {
      return queued_user_.load(std::memory_order_seq_cst) < capacity || !alive();
    });
    blocked_senders_.fetch_sub(1, std::memory_order_seq_cst);
  }
}

void local_actor::release_slot() noexcept {
  queued_user_.fetch_sub(1, std::memory_order_seq_cst);
  if (blocked_senders_.load(std::memory_order_seq_cst) > 0) {
    std::lock_guard lock{space_mutex_};
    space_cv_.notify_one();
  }
}

void local_actor::stop(stop_mode mode) {
  if (mode == stop_mode::discard) {
    request_termination(exit_reason::normal);
    return;
  }
  (void)enqueue(message_ptr{new stop_message{}});
}

void local_actor::request_termination(exit_reason reason) {
  std::uint8_t none = 0;
  termination_request_.compare_exchange_strong(none, static_cast<std::uint8_t>(1 + static_cast<int>(reason)),
                                               std::memory_order_acq_rel);
  (void)enqueue(message_ptr{new wake_message{}});
}

void local_actor::quit(exit_reason reason) noexcept {
  if (quit_requested_) return;
  quit_requested_ = true;
  quit_reason_ = reason;
}

local_actor::resume_result local_actor::resume(std::size_t budget) {
  for (std::size_t n = 0; n < budget; ++n) {
    if (auto r = termination_request_.load(std::memory_order_acquire); r != 0) [[unlikely]] {
      terminate(static_cast<exit_reason>(r - 1));
      return resume_result::done;
    }
    message* m = mailbox_.pop();
    if (!m) {
      if (mailbox_.try_block()) return resume_result::idle;
      continue;
    }
    run_message(m);
    if (quit_requested_) [[unlikely]] {
      terminate(quit_reason_);
      return resume_result::done;
    }
  }
  if (mailbox_.has_messages() || termination_request_.load(std::memory_order_acquire) != 0)
    return resume_result::again;
  return mailbox_.try_block() ? resume_result::idle : resume_result::again;
}

void local_actor::run_message(message* raw) {
  message_ptr m{raw};
  // The slot frees when the message leaves the queue, not when its handler returns: a bound
  // limits what waits, and a slow handler must not count against it.
  if (!m->is_system && mailbox_config_.capacity > 0) release_slot();
  std::optional<error> failure;
  try {
    m->vtable->invoke(*instance_, *m);
  } catch (...) {
    failure = describe_handler_exception(m->vtable->type_name);
  }
  m.reset();
  if (failure) [[unlikely]]
    handle_failure(*failure);
}

void local_actor::handle_failure(const error& cause) {
  log::get("core")->error("actor {} #{} failed: {}", name(), id(), cause.message());
  if (restart_.max_restarts > 0 && factory_) {
    const time_point now = sys_.time_source().now();
    while (!restarts_.empty() && now - restarts_.front() >= restart_.window) restarts_.pop_front();
    if (restarts_.size() < restart_.max_restarts) {
      restarts_.push_back(now);
      restart(cause);
      return;
    }
    log::get("core")->error("actor {} #{} exhausted its restart policy ({} restarts within {} ms)", name(), id(),
                            restart_.max_restarts,
                            std::chrono::duration_cast<std::chrono::milliseconds>(restart_.window).count());
  }
  failure_what_ = cause.message();
  quit(exit_reason::exception);
}

void local_actor::restart(const error& cause) {
  cancel_timers();
  ++incarnation_;
  instance_.reset();
  sys_.count_restart();
  try {
    instance_ = factory_();
    instance_->cell_ = this;
    instance_->on_restart(cause);
  } catch (...) {
    if (!instance_) {
      failure_what_ = describe_handler_exception("restart").message();
      quit(exit_reason::exception);
      return;
    }
    handle_failure(describe_handler_exception("on_restart"));
  }
}

void local_actor::cancel_timers() noexcept {
  for (auto& t : timers_) t.cancel();
  timers_.clear();
}

timer_handle local_actor::schedule_self(duration delay, duration period, std::function<message_ptr()> make) {
  if (timers_.size() >= 32) std::erase_if(timers_, [](const timer_handle& t) { return !t.active(); });
  auto h = sys_.timers().schedule(sys_.time_source().now() + delay, period,
                                  [self = intrusive_ptr<local_actor>{this}, make = std::move(make)]() {
                                    if (!self->alive()) return false;
                                    return self->enqueue(make()).has_value();
                                  });
  timers_.push_back(h);
  return h;
}

void local_actor::terminate(exit_reason reason) {
  if (reason == exit_reason::exception && failure_what_.empty()) failure_what_ = "exception";
  if (instance_ && started_) {
    try {
      instance_->on_stop(reason);
    } catch (...) {
      log::get("core")->error("actor {} #{}: on_stop threw: {}", name(), id(),
                              describe_handler_exception("on_stop").message());
    }
  }
  cancel_timers();
  instance_.reset();

  const error why{errc::disconnected, fmt::format("actor {} #{} terminated ({})", name(), id(), to_string(reason))};
  message* rest = mailbox_.close();
  while (rest) {
    message_ptr m{std::exchange(rest, rest->next)};
    (void)reject(std::move(m), why, dead_letter_reason::actor_terminated);
  }

  const std::string what = reason == exit_reason::exception ? failure_what_ : std::string{};
  alive_.store(false, std::memory_order_release);
  {
    std::lock_guard lock{space_mutex_};
    space_cv_.notify_all();
  }
  // The system forgets the actor before its watchers hear of it, so a down handler sees it gone
  // (live_actors() without it). The scheduler's reference keeps this cell alive meanwhile.
  sys_.actor_terminated(*this);
  watchers_.fire(*this, reason, what);
}

void local_actor::attach(intrusive_ptr<abstract_actor> w, watch_kind kind) { watchers_.add(*this, std::move(w), kind); }

void local_actor::attach(std::function<void(const down_msg&)> callback) { watchers_.add(*this, std::move(callback)); }

void local_actor::detach(const abstract_actor* w, watch_kind kind) { watchers_.remove(w, kind); }

}  // namespace flexsp::core::detail
