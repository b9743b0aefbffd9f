#pragma once
/// \file
/// Collectives between ranks that are threads of one process (the devices of one node, or every
/// device of an embedded cluster): data moves by memcpy through buffers the group owns, with no
/// sockets and no staging threads.
///
/// Each collective has a slot, numbered by the order of calls (the same on every rank, as for
/// any communicator): a rank copies its input into the slot, waits until every rank has, and
/// then reads what it needs; all-reduce sums chunk by chunk, each rank reducing its own chunk
/// into the slot's result in rank order, so every rank gets bitwise the same sums. A rank only
/// ever writes its own output buffer, so a rank that aborts or times out returns at once and
/// nobody touches its memory afterwards. Aborting (or a timeout) breaks the group: the peers'
/// pending and later collectives fail with errc::disconnected, as when a Gloo peer's connection
/// closes.

#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "flexsp/kernels/collectives.hpp"

namespace flexsp::kernels {

/// Joins the in-process group `group_key` as `rank` of `size` (size >= 1). Waits until every
/// rank has joined: errc::timeout after `timeout`; errc::invalid_argument for a bad rank or
/// size, a size that differs from the other members', or a rank already taken. The key must be
/// unique per group incarnation (e.g. include the membership epoch).
/// `cancelled` (optional) is polled while waiting for the other ranks: true gives up at once
/// with errc::cancelled and breaks the group for the ranks still waiting.
expected<std::unique_ptr<communicator>> make_process_communicator(const std::string& group_key, int rank, int size,
                                                                  std::chrono::milliseconds timeout,
                                                                  const std::function<bool()>& cancelled = {});

/// A name of this process that no other process (on any host, at any time) has: ranks compare
/// it to find out whether they share a process.
const std::string& process_token();

}  // namespace flexsp::kernels
