#include "flexsp/core/actor.hpp"

#include "flexsp/core/actor_system.hpp"
#include "flexsp/core/check.hpp"
#include "local_actor.hpp"

namespace flexsp::core {

std::string_view to_string(exit_reason r) noexcept {
  switch (r) {
    case exit_reason::normal: return "normal";
    case exit_reason::exception: return "exception";
    case exit_reason::killed: return "killed";
    case exit_reason::linked: return "linked";
    case exit_reason::shutdown: return "shutdown";
    case exit_reason::unreachable: return "unreachable";
  }
  return "unknown";
}

namespace detail {
error describe_handler_exception(std::string_view message_type) {
  try {
    throw;
  } catch (const precondition_error& e) {
    return error{errc::invalid_argument, fmt::format("handler for {} rejected it: {}", message_type, e.what())};
  } catch (const std::exception& e) {
    return error{errc::failed, fmt::format("handler for {} threw: {}", message_type, e.what())};
  } catch (...) {
    return error{errc::failed, fmt::format("handler for {} threw a non-standard exception", message_type)};
  }
}
reply_slot& current_reply_slot(actor_base& self) noexcept { return self.reply_slot_; }
}  // namespace detail

#define FLEXSP_EXPECTS_CELL() \
  FLEXSP_EXPECTS(cell_ != nullptr, "actor services are not available in the constructor; use on_start")

void actor_base::on_down(const down_msg&) {
  FLEXSP_EXPECTS_CELL();
  cell_->system().report_dead_letter(*cell_, type_name<down_msg>(), dead_letter_reason::unhandled);
}

void actor_base::on_exit(const exit_msg& msg) {
  if (msg.reason != exit_reason::normal) quit(exit_reason::linked);
}

actor_system& actor_base::system() const noexcept { return cell_->system(); }

any_ref actor_base::address() const {
  FLEXSP_EXPECTS_CELL();
  return any_ref{detail::intrusive_ptr<abstract_actor>{cell_}};
}

void actor_base::quit(exit_reason reason) {
  FLEXSP_EXPECTS_CELL();
  cell_->quit(reason);
}

void actor_base::monitor(const any_ref& other) {
  FLEXSP_EXPECTS_CELL();
  FLEXSP_EXPECTS(other.valid(), "monitor of an empty reference");
  other.get()->attach(detail::intrusive_ptr<abstract_actor>{cell_}, watch_kind::monitor);
}

void actor_base::demonitor(const any_ref& other) {
  FLEXSP_EXPECTS_CELL();
  if (other.valid()) other.get()->detach(cell_, watch_kind::monitor);
}

void actor_base::link(const any_ref& other) {
  FLEXSP_EXPECTS_CELL();
  FLEXSP_EXPECTS(other.valid(), "link to an empty reference");
  other.get()->attach(detail::intrusive_ptr<abstract_actor>{cell_}, watch_kind::link);
  cell_->attach(other.ptr(), watch_kind::link);
}

void actor_base::unlink(const any_ref& other) {
  FLEXSP_EXPECTS_CELL();
  if (!other.valid()) return;
  other.get()->detach(cell_, watch_kind::link);
  cell_->detach(other.get(), watch_kind::link);
}

time_point actor_base::now() const noexcept { return cell_->system().time_source().now(); }

std::uint32_t actor_base::incarnation() const noexcept { return cell_ ? cell_->incarnation() : 0; }

timer_handle actor_base::schedule_self(duration delay, duration period, std::function<message_ptr()> make) {
  FLEXSP_EXPECTS_CELL();
  return cell_->schedule_self(delay, period, std::move(make));
}

}  // namespace flexsp::core
