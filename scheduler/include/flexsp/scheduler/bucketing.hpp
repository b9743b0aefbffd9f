#pragma once
/// \file
/// Sequence Blaster's contiguous micro-batch split and the DP bucketing of sorted lengths.

#include <cstdint>
#include <span>
#include <vector>

namespace flexsp::scheduler {

/// Buckets over ascending lengths: bucket b holds lengths in (bounds[b-1], bounds[b]].
struct bucketing {
  std::vector<std::int64_t> bounds;   ///< ascending upper bounds, each one of the lengths
  std::vector<int> counts;            ///< sequences per bucket
  std::int64_t error_tokens{0};       ///< sum over sequences of (its bucket's bound - its length)
  std::int64_t tokens{0};             ///< sum of lengths
  /// error_tokens / tokens: the token error the paper reports.
  double token_error() const { return tokens > 0 ? static_cast<double>(error_tokens) / static_cast<double>(tokens) : 0; }
  /// Index of the bucket of a length (the first bound >= length).
  int bucket_of(std::int64_t length) const;
};

/// Chooses at most `max_buckets` bucket bounds minimising sum(bound - length), by dynamic
/// programming over the distinct lengths. `lengths` need not be sorted; `max_buckets` >= 1.
bucketing bucket_lengths(std::span<const std::int64_t> lengths, int max_buckets);

/// Sequence Blaster's split: cuts `sorted` (ascending) into exactly `parts` contiguous non-empty
/// runs minimising the largest run's token sum (`parts` <= sorted.size()). Returns the start
/// index of every run (the first is 0).
std::vector<std::size_t> split_contiguous(std::span<const std::int64_t> sorted, int parts);

}  // namespace flexsp::scheduler
