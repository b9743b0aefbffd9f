#pragma once
// CAF 0.17 remote-actor workloads (caf::io over loopback), kept out of the main benchmark TU.
#include <cstdint>

namespace flexsp::bench {

/// Runs a CAF echo/counter server published on a free loopback port; writes the port to `fd`
/// and serves until the process is killed. Call in a fresh child process.
[[noreturn]] void caf_serve(int report_fd);

struct caf_result {
  double blocking_rt_per_s = 0;
  double pipelined_msgs_per_s = 0;
  std::uint64_t wrong = 0;
};

/// Blocking request/response round trips and pipelined one-way messages against the server.
caf_result caf_client(std::uint16_t port, std::uint64_t round_trips, std::uint64_t messages);

}  // namespace flexsp::bench
