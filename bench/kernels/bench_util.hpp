#pragma once
// Timing helpers shared by the kernel benchmarks: median wall time of callables.

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <utility>
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

/// Median seconds of `a` and of `b`, measured alternately (a, b, a, b, ...) so that load from
/// other processes on a shared machine affects both alike.
template <class FnA, class FnB>
std::pair<double, double> paired_median_seconds(int reps, FnA&& a, FnB&& b) {
  a();
  b();
  std::vector<double> ta, tb;
  auto time = [](auto& fn) {
    const auto start = std::chrono::steady_clock::now();
    fn();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  for (int i = 0; i < reps; ++i) {
    ta.push_back(time(a));
    tb.push_back(time(b));
  }
  std::sort(ta.begin(), ta.end());
  std::sort(tb.begin(), tb.end());
  return {ta[ta.size() / 2], tb[tb.size() / 2]};
}

}  // namespace flexsp::bench
