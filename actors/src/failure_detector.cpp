#include "flexsp/actors/failure_detector.hpp"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

namespace flexsp::actors {

namespace {
double ms(std::chrono::steady_clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }
}  // namespace

failure_detector::failure_detector(failure_detector_settings s) : s_{s} {
  using std::chrono::milliseconds;
  if (s_.acceptable_pause.count() == 0) s_.acceptable_pause = s_.timeout / 2;
  if (s_.min_stddev.count() == 0) s_.min_stddev = std::max(milliseconds{1}, s_.interval / 4);
  if (s_.tick_period.count() == 0) s_.tick_period = std::max(milliseconds{1}, s_.interval / 4);
  if (s_.stall_threshold.count() == 0) s_.stall_threshold = s_.interval;
  if (s_.window == 0) s_.window = 1;
}

void failure_detector::add(std::uint64_t node, time_point now, bool exempt) {
  history h;
  h.last = now;
  h.exempt = exempt;
  nodes_[node] = std::move(h);
}

void failure_detector::add_returning(std::uint64_t node, time_point now, std::chrono::milliseconds grace) {
  history h;
  h.last = now;
  h.awaited_until = now + grace;
  nodes_[node] = std::move(h);
}

void failure_detector::remove(std::uint64_t node) { nodes_.erase(node); }

void failure_detector::heartbeat(std::uint64_t node, time_point now) {
  auto it = nodes_.find(node);
  if (it == nodes_.end()) return;
  auto& h = it->second;
  if (h.awaited_until) {  // back: watched from now on, its silence until now not counted as a gap
    h.awaited_until.reset();
    h.last = now;
    return;
  }
  if (now <= h.last) return;  // after a stall compensation the clock of `last` may be ahead
  const double gap = ms(now - h.last);
  h.last = now;
  h.gaps_ms.push_back(gap);
  h.sum += gap;
  h.sum_sq += gap * gap;
  if (h.gaps_ms.size() > s_.window) {
    const double old = h.gaps_ms.front();
    h.gaps_ms.pop_front();
    h.sum -= old;
    h.sum_sq -= old * old;
  }
}

double failure_detector::phi_of(const history& h, time_point now) const {
  if (h.exempt || h.awaited_until) return 0.0;
  const double n = static_cast<double>(h.gaps_ms.size());
  // Before any gap was seen, assume the configured interval.
  const double mean_gap = n > 0 ? h.sum / n : static_cast<double>(s_.interval.count());
  const double var = n > 1 ? std::max(0.0, h.sum_sq / n - mean_gap * mean_gap) : 0.0;
  const double mean = mean_gap + static_cast<double>(s_.acceptable_pause.count());
  const double sd = std::max(std::sqrt(var), static_cast<double>(s_.min_stddev.count()));
  const double elapsed = ms(now - h.last);
  // The logistic approximation of the normal tail (as Akka's detector uses).
  const double y = (elapsed - mean) / sd;
  const double e = std::exp(-y * (1.5976 + 0.070566 * y * y));
  const double p = elapsed > mean ? e / (1.0 + e) : 1.0 - 1.0 / (1.0 + e);
  return -std::log10(std::max(p, 1e-300));
}

double failure_detector::phi(std::uint64_t node, time_point now) const {
  auto it = nodes_.find(node);
  return it == nodes_.end() ? 0.0 : phi_of(it->second, now);
}

std::vector<failure_detector::suspicion> failure_detector::tick(time_point now) {
  if (last_tick_) {
    const auto late = now - *last_tick_ - s_.tick_period;
    if (late > s_.stall_threshold) {
      // This process did not run for `late`: nobody's silence grew meanwhile.
      for (auto& [_, h] : nodes_) h.last = std::min(now, h.last + late);
      stalled_total_ += std::chrono::duration_cast<std::chrono::milliseconds>(late);
    }
  }
  last_tick_ = now;
  std::vector<std::pair<time_point, suspicion>> found;
  for (const auto& [id, h] : nodes_) {
    if (h.exempt) continue;
    if (h.awaited_until) {
      if (now >= *h.awaited_until)
        found.push_back({h.last, {id, fmt::format("not heard from within {} ms of the head's restart",
                                                  std::chrono::duration_cast<std::chrono::milliseconds>(
                                                      *h.awaited_until - h.last)
                                                      .count())}});
      continue;
    }
    const auto silent = std::chrono::duration_cast<std::chrono::milliseconds>(now - h.last);
    if (silent > s_.timeout) {
      found.push_back({h.last, {id, fmt::format("no heartbeat for {} ms (timeout {} ms)", silent.count(), s_.timeout.count())}});
      continue;
    }
    const double p = phi_of(h, now);
    if (p > s_.phi_threshold) {
      const double n = static_cast<double>(std::max<std::size_t>(1, h.gaps_ms.size()));
      found.push_back({h.last, {id, fmt::format("no heartbeat for {} ms (suspicion phi {:.1f} > {:.1f}; heartbeats came "
                                                "every {:.0f} ms on average)",
                                                silent.count(), p, s_.phi_threshold,
                                                h.gaps_ms.empty() ? static_cast<double>(s_.interval.count()) : h.sum / n)}});
    }
  }
  std::sort(found.begin(), found.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  std::vector<suspicion> out;
  for (auto& [_, s] : found) {
    nodes_.erase(s.node);
    out.push_back(std::move(s));
  }
  return out;
}

}  // namespace flexsp::actors
