#pragma once
// One pool of worker threads shared by every CPU device of the process (GEMM row blocks,
// attention tiles). Private to the CPU kernels.

#include <cstddef>
#include <functional>

namespace flexsp::kernels::detail {

/// Runs body(item, worker) for every item in [0, count) on up to `threads` threads, the calling
/// thread included; worker < threads names the thread's scratch slot. Items are taken in
/// order, so callers list the costliest first. Several callers may run at once (one per CPU
/// device): each gets the idle workers it asks for, and when none is idle the caller does the
/// work itself, so a call never waits for another's. Idle workers sleep (no spinning).
void parallel_for(std::size_t count, int threads, const std::function<void(std::size_t, std::size_t)>& body);

}  // namespace flexsp::kernels::detail
