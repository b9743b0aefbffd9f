#pragma once
/// \file
/// The head's failure detector: phi-accrual suspicion over each node's heartbeat history, the
/// failure timeout as an upper bound, and compensation for the detector's own stalls. Pure logic
/// with the time passed in, so it is tested without sockets or sleeps; the cluster actor drives
/// it from a timer.
///
/// - Each heartbeat's arrival is recorded; the gaps between arrivals (the last `window` of them)
///   give a mean and a standard deviation (at least `min_stddev`). The suspicion of a silent node
///   is phi = -log10(P(a gap this long or longer)), with the gap's distribution taken normal
///   after adding `acceptable_pause` to the mean (as Akka's detector does). A node is lost when
///   phi exceeds `phi_threshold`, or, whatever the history says, when it has been silent for
///   longer than `timeout`. So a node with regular heartbeats is found hung sooner than the
///   timeout, one whose heartbeats jitter (a loaded machine) gets more slack, and none waits
///   longer than the timeout.
/// - The detector checks itself: `tick` expects to run every `tick_period`. When a tick comes
///   late by more than `stall_threshold` the detector's own process was stalled (SIGSTOP, a VM
///   pause, a starved machine); the time it lost is not counted as anyone's silence: every
///   node's last heartbeat moves forward by the stall, and nodes are judged again only after
///   their heartbeats had a chance to arrive.
/// - Exempt nodes (those in the detector's own process) are never lost to silence.

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace flexsp::actors {

struct failure_detector_settings {
  std::chrono::milliseconds interval{500};    ///< the nodes' heartbeat interval
  std::chrono::milliseconds timeout{3000};    ///< upper bound of a node's silence
  double phi_threshold = 10.0;                ///< suspicion that loses a node before the timeout
  std::chrono::milliseconds acceptable_pause{0};  ///< 0: half the timeout
  std::chrono::milliseconds min_stddev{0};        ///< 0: a quarter of the interval
  std::size_t window = 100;                   ///< heartbeat gaps remembered per node
  std::chrono::milliseconds tick_period{0};   ///< 0: a quarter of the interval
  std::chrono::milliseconds stall_threshold{0};  ///< 0: the interval
};

class failure_detector {
public:
  using clock = std::chrono::steady_clock;
  using time_point = clock::time_point;

  explicit failure_detector(failure_detector_settings s);

  /// Starts watching `node` (its registration counts as its first heartbeat).
  void add(std::uint64_t node, time_point now, bool exempt = false);
  /// Starts watching `node` that has not been heard from yet (a head restarted from its state
  /// store restores its members): it is not suspected before `now + grace`, and is lost then
  /// unless a heartbeat came; after its first heartbeat it is watched as any other.
  void add_returning(std::uint64_t node, time_point now, std::chrono::milliseconds grace);
  void remove(std::uint64_t node);
  /// A heartbeat of `node` arrived.
  void heartbeat(std::uint64_t node, time_point now);

  struct suspicion {
    std::uint64_t node = 0;
    std::string reason;
  };
  /// Runs every tick period: returns the nodes to declare lost now (each once; they are no
  /// longer watched), oldest silence first.
  std::vector<suspicion> tick(time_point now);

  /// The suspicion level of `node` at `now` (0 when unknown or exempt).
  double phi(std::uint64_t node, time_point now) const;
  /// Total time the detector found itself stalled.
  std::chrono::milliseconds stalled_total() const noexcept { return stalled_total_; }
  const failure_detector_settings& settings() const noexcept { return s_; }

private:
  struct history {
    time_point last;
    std::deque<double> gaps_ms;
    double sum = 0, sum_sq = 0;
    bool exempt = false;
    std::optional<time_point> awaited_until;  ///< restored and not heard from yet
  };
  double phi_of(const history& h, time_point now) const;

  failure_detector_settings s_;
  std::map<std::uint64_t, history> nodes_;
  std::optional<time_point> last_tick_;
  std::chrono::milliseconds stalled_total_{0};
};

}  // namespace flexsp::actors
