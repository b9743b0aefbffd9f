#pragma once
// Timing helpers shared by the kernel benchmarks: best-of-N wall time of a callable.

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <vector>

namespace flexsp::bench {

/// Median seconds of `reps` runs of fn after one warm-up run.
template <class Fn>
double median_seconds(int reps, Fn&& fn) {
  fn();
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    const auto a = std::chrono::steady_clock::now();
    fn();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - a).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace flexsp::bench
