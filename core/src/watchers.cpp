#include "flexsp/core/detail/watchers.hpp"

#include <algorithm>

#include "flexsp/core/actor.hpp"
#include "flexsp/core/log.hpp"

namespace flexsp::core::detail {

namespace {

struct down_notice final : message {
  explicit down_notice(down_msg d);
  static constexpr std::string_view payload_name() noexcept { return type_name<down_msg>(); }
  static void invoke(actor_base& self, message& m) { self.on_down(static_cast<down_notice&>(m).payload); }
  down_msg payload;
};

struct exit_notice final : message {
  explicit exit_notice(exit_msg e);
  static constexpr std::string_view payload_name() noexcept { return type_name<exit_msg>(); }
  static void invoke(actor_base& self, message& m) { self.on_exit(static_cast<exit_notice&>(m).payload); }
  exit_msg payload;
};

down_notice::down_notice(down_msg d) : message{&vtable_for<down_notice>::value, true}, payload{std::move(d)} {}
exit_notice::exit_notice(exit_msg e) : message{&vtable_for<exit_notice>::value, true}, payload{std::move(e)} {}

}  // namespace

message_ptr make_exit_notice(exit_msg e) { return message_ptr{new exit_notice{std::move(e)}}; }

const exit_msg* exit_notice_of(const message& m) noexcept {
  return m.vtable == &vtable_for<exit_notice>::value ? &static_cast<const exit_notice&>(m).payload : nullptr;
}

void watcher_list::deliver(abstract_actor& watched, entry& e, exit_reason reason, const std::string& what) {
  any_ref source{intrusive_ptr<abstract_actor>{&watched}};
  if (e.callback) {
    try {
      e.callback(down_msg{std::move(source), reason, what});
    } catch (...) {
      log::get("core")->error("down callback for actor {} #{} threw: {}", watched.name(), watched.id(),
                              describe_handler_exception("down callback").message());
    }
  } else if (e.kind == watch_kind::monitor) {
    (void)e.actor->enqueue(message_ptr{new down_notice{down_msg{std::move(source), reason, what}}});
  } else {
    (void)e.actor->enqueue(message_ptr{new exit_notice{exit_msg{std::move(source), reason}}});
  }
}

void watcher_list::add(abstract_actor& watched, entry e) {
  exit_reason reason;
  std::string what;
  {
    std::lock_guard lock{mutex_};
    if (!fired_) {
      entries_.push_back(std::move(e));
      return;
    }
    reason = reason_;
    what = what_;
  }
  deliver(watched, e, reason, what);
}

void watcher_list::add(abstract_actor& watched, intrusive_ptr<abstract_actor> watcher, watch_kind kind) {
  add(watched, entry{std::move(watcher), kind, {}});
}

void watcher_list::add(abstract_actor& watched, std::function<void(const down_msg&)> callback) {
  add(watched, entry{{}, watch_kind::monitor, std::move(callback)});
}

void watcher_list::remove(const abstract_actor* watcher, watch_kind kind) {
  std::lock_guard lock{mutex_};
  auto it = std::find_if(entries_.begin(), entries_.end(), [watcher, kind](const entry& x) {
    return !x.callback && x.actor.get() == watcher && x.kind == kind;
  });
  if (it != entries_.end()) entries_.erase(it);
}

bool watcher_list::fire(abstract_actor& watched, exit_reason reason, std::string what) {
  std::vector<entry> entries;
  {
    std::lock_guard lock{mutex_};
    if (fired_) return false;
    fired_ = true;
    fired_flag_.store(true, std::memory_order_release);
    reason_ = reason;
    what_ = what;
    entries.swap(entries_);
  }
  for (auto& e : entries) deliver(watched, e, reason, what);
  return true;
}

bool watcher_list::fired() const { return fired_flag_.load(std::memory_order_acquire); }

bool watcher_list::empty() const {
  std::lock_guard lock{mutex_};
  return entries_.empty();
}

}  // namespace flexsp::core::detail
