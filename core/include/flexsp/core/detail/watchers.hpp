#pragma once
/// \file
/// The actors and callbacks watching one actor, for control blocks (local actors and remote
/// proxies alike): registration, and one delivery of the down or exit notice each when the
/// watched actor terminates. Thread-safe.

#include <atomic>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "flexsp/core/actor_ref.hpp"
#include "flexsp/core/message.hpp"

namespace flexsp::core::detail {

/// The exit notice a linked actor receives when its partner terminates (for control blocks that
/// relay links, such as remote proxies).
message_ptr make_exit_notice(exit_msg e);
/// The exit signal `m` carries, or null when `m` is not an exit notice.
const exit_msg* exit_notice_of(const message& m) noexcept;

class watcher_list {
public:
  /// Registers `watcher`; when the watched actor already terminated, sends the notice at once.
  void add(abstract_actor& watched, intrusive_ptr<abstract_actor> watcher, watch_kind kind);
  /// Registers a callback (run once with the down notice; at once when already terminated).
  void add(abstract_actor& watched, std::function<void(const down_msg&)> callback);
  /// Removes one registration of `watcher` of `kind`, if any.
  void remove(const abstract_actor* watcher, watch_kind kind);
  /// The watched actor terminated: every watcher gets its notice, once. Later calls do nothing
  /// and return false.
  bool fire(abstract_actor& watched, exit_reason reason, std::string what);
  bool fired() const;
  bool empty() const;

private:
  struct entry {
    intrusive_ptr<abstract_actor> actor;
    watch_kind kind = watch_kind::monitor;
    std::function<void(const down_msg&)> callback;
  };
  /// Registers `e`, or delivers its notice at once when the watched actor already terminated.
  void add(abstract_actor& watched, entry e);
  static void deliver(abstract_actor& watched, entry& e, exit_reason reason, const std::string& what);

  mutable std::mutex mutex_;
  bool fired_ = false;                    // guarded by mutex_
  std::atomic<bool> fired_flag_{false};  // the same, for lock-free reads on every send
  exit_reason reason_ = exit_reason::normal;
  std::string what_;
  std::vector<entry> entries_;
};

}  // namespace flexsp::core::detail
