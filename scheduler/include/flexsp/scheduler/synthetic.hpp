#pragma once
/// \file
/// Seeded synthetic sequence lengths with a long tail, so the product never needs a dataset to
/// demonstrate or test planning.
///
/// `"wikipedia"` follows the length distribution of Wikipedia documents (median 347, p90 2,112,
/// p99 10,921, p99.9 37,367, mean about 1,014, rare documents up to about 1.8M tokens): log-length
/// is piecewise linear in the normal quantile through those anchors.

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "flexsp/core/error.hpp"

namespace flexsp::scheduler {

/// Names of the distributions `synthetic_lengths` knows.
std::vector<std::string> synthetic_kinds();

/// `count` lengths (>= 1 token each) drawn from the distribution `kind`; the same seed gives the
/// same lengths on every platform. `errc::invalid_argument` for an unknown kind.
expected<std::vector<std::int64_t>> synthetic_lengths(std::size_t count, std::uint64_t seed,
                                                      std::string_view kind = "wikipedia");

}  // namespace flexsp::scheduler
