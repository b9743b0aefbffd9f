#pragma once
// Reading raw text for `prepare`: the input files in a fixed order, decompressed (gzip, zstd),
// split into documents (JSON lines or whole text files), UTF-8 checked.

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "flexsp/core/error.hpp"

namespace flexsp::data {

/// The files `inputs` name, in order: each file as given, each directory's files matching `glob`
/// (comma-separated shell patterns, any of them; recursive, sorted by path). errc::not_found for a missing input or a directory without
/// matching files.
expected<std::vector<std::filesystem::path>> list_inputs(const std::vector<std::filesystem::path>& inputs,
                                                         const std::string& glob);

/// Reads documents from one file after another.
class document_reader {
public:
  /// `skip_invalid`: documents that are not valid UTF-8 are left out and counted (skipped())
  /// instead of failing the read.
  document_reader(std::vector<std::filesystem::path> files, std::string field, bool skip_invalid = false);
  ~document_reader();
  /// The next document into `out` (false at the end). Errors name the file and line or offset.
  expected<bool> next(std::string& out);
  /// Documents left out for invalid UTF-8 (with skip_invalid).
  std::uint64_t skipped() const noexcept { return skipped_; }

  struct source;  // one file's bytes, decompressed

private:
  expected<bool> open_next();
  std::vector<std::filesystem::path> files_;
  std::string field_;
  bool skip_invalid_ = false;
  std::uint64_t skipped_ = 0;
  std::size_t at_ = 0;
  std::unique_ptr<source> src_;
  std::uint64_t line_ = 0;
};

}  // namespace flexsp::data
