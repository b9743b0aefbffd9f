#pragma once
/// \file
/// Reading sequence lengths and cutting them into batches the way the FlexSP paper does.

#include <cstdint>
#include <istream>
#include <string>
#include <vector>

#include "flexsp/core/error.hpp"

namespace flexsp::scheduler {

/// Lengths, one integer per line (blank lines and `#` comments skipped), from a plain or
/// gzip-compressed file. Errors name the file and line.
expected<std::vector<std::int64_t>> read_lengths_file(const std::string& path);

/// The same from a stream (e.g. stdin); `source` names it in errors.
expected<std::vector<std::int64_t>> read_lengths(std::istream& in, const std::string& source);

/// The paper's batching: each length padded up to a multiple of `pad_multiple` (2N), padded
/// lengths above `context_limit` dropped, then consecutive batches of `batch_size`. Returns
/// batches `start` .. `start + count - 1` (fewer when the data runs out). `dropped`, when given,
/// counts the sequences the limit dropped among those read up to the last batch returned.
std::vector<std::vector<std::int64_t>> paper_batches(const std::vector<std::int64_t>& lengths, int pad_multiple,
                                                     std::int64_t context_limit, std::size_t batch_size,
                                                     std::size_t start, std::size_t count,
                                                     std::size_t* dropped = nullptr);

}  // namespace flexsp::scheduler
