#include "flexsp/scheduler/bucketing.hpp"

#include <algorithm>
#include <limits>
#include <numeric>

#include "flexsp/core/check.hpp"

namespace flexsp::scheduler {

int bucketing::bucket_of(std::int64_t length) const {
  auto it = std::lower_bound(bounds.begin(), bounds.end(), length);
  FLEXSP_EXPECTS(it != bounds.end(), "length {} above the largest bound", length);
  return static_cast<int>(it - bounds.begin());
}

bucketing bucket_lengths(std::span<const std::int64_t> lengths, int max_buckets) {
  FLEXSP_EXPECTS(max_buckets >= 1, "max_buckets = {}", max_buckets);
  bucketing out;
  if (lengths.empty()) return out;
  std::vector<std::int64_t> sorted(lengths.begin(), lengths.end());
  std::sort(sorted.begin(), sorted.end());
  std::vector<std::int64_t> value;
  std::vector<std::int64_t> count;
  for (auto v : sorted) {
    if (value.empty() || value.back() != v) {
      value.push_back(v);
      count.push_back(0);
    }
    ++count.back();
  }
  const std::size_t m = value.size();
  std::vector<std::int64_t> pre_cnt(m + 1, 0);
  std::vector<std::int64_t> pre_sum(m + 1, 0);
  for (std::size_t i = 0; i < m; ++i) {
    pre_cnt[i + 1] = pre_cnt[i] + count[i];
    pre_sum[i + 1] = pre_sum[i] + count[i] * value[i];
  }
  // cost of one bucket holding distinct values i..j (inclusive), bound value[j]
  auto cost = [&](std::size_t i, std::size_t j) {
    return value[j] * (pre_cnt[j + 1] - pre_cnt[i]) - (pre_sum[j + 1] - pre_sum[i]);
  };
  const std::size_t b_max = std::min<std::size_t>(static_cast<std::size_t>(max_buckets), m);
  constexpr auto inf = std::numeric_limits<std::int64_t>::max() / 4;
  // f[b][j]: best error covering values 0..j with b+1 buckets, the last ending at j
  std::vector<std::vector<std::int64_t>> f(b_max, std::vector<std::int64_t>(m, inf));
  std::vector<std::vector<std::uint32_t>> arg(b_max, std::vector<std::uint32_t>(m, 0));
  for (std::size_t j = 0; j < m; ++j) f[0][j] = cost(0, j);
  for (std::size_t b = 1; b < b_max; ++b) {
    for (std::size_t j = b; j < m; ++j) {
      std::int64_t best = inf;
      std::uint32_t best_i = 0;
      for (std::size_t i = b; i <= j; ++i) {  // the last bucket is values i..j
        const auto c = f[b - 1][i - 1] + cost(i, j);
        if (c < best) {
          best = c;
          best_i = static_cast<std::uint32_t>(i);
        }
      }
      f[b][j] = best;
      arg[b][j] = best_i;
    }
  }
  std::size_t b = 0;
  for (std::size_t k = 0; k < b_max; ++k)
    if (f[k][m - 1] < f[b][m - 1]) b = k;
  out.error_tokens = f[b][m - 1];
  out.tokens = pre_sum[m];
  std::vector<std::size_t> ends;
  std::size_t j = m - 1;
  for (std::size_t k = b + 1; k-- > 0;) {
    ends.push_back(j);
    if (k == 0) break;
    j = arg[k][j] - 1;
  }
  std::reverse(ends.begin(), ends.end());
  std::size_t start = 0;
  for (auto e : ends) {
    out.bounds.push_back(value[e]);
    out.counts.push_back(static_cast<int>(pre_cnt[e + 1] - pre_cnt[start]));
    start = e + 1;
  }
  return out;
}

std::vector<std::size_t> split_contiguous(std::span<const std::int64_t> sorted, int parts) {
  FLEXSP_EXPECTS(parts >= 1 && static_cast<std::size_t>(parts) <= sorted.size(), "parts = {}, sequences = {}",
                 parts, sorted.size());
  const std::size_t n = sorted.size();
  const auto p = static_cast<std::size_t>(parts);
  // Exact DP over (parts, prefix): f[k][i] = best max run sum for the first i sequences in k runs.
  std::vector<std::int64_t> pre(n + 1, 0);
  for (std::size_t i = 0; i < n; ++i) pre[i + 1] = pre[i] + sorted[i];
  constexpr auto inf = std::numeric_limits<std::int64_t>::max() / 4;
  std::vector<std::vector<std::int64_t>> f(p + 1, std::vector<std::int64_t>(n + 1, inf));
  std::vector<std::vector<std::size_t>> arg(p + 1, std::vector<std::size_t>(n + 1, 0));
  f[0][0] = 0;
  for (std::size_t k = 1; k <= p; ++k) {
    // the last run's start moves right as i grows (monotone optimum), so a pointer suffices
    std::size_t j = k - 1;
    for (std::size_t i = k; i <= n - (p - k); ++i) {
      if (j < k - 1) j = k - 1;
      auto val = [&](std::size_t s) { return std::max(f[k - 1][s], pre[i] - pre[s]); };
      while (j + 1 < i && val(j + 1) <= val(j)) ++j;
      f[k][i] = val(j);
      arg[k][i] = j;
    }
  }
  std::vector<std::size_t> starts(p);
  std::size_t i = n;
  for (std::size_t k = p; k >= 1; --k) {
    starts[k - 1] = arg[k][i];
    i = arg[k][i];
  }
  return starts;
}

}  // namespace flexsp::scheduler
