#pragma once
/// \file
/// Prepared datasets: token shards on disk, read through mmap.
///
/// `flexsp data prepare` turns raw text (JSON lines, plain-text directories, gzip or zstd
/// compressed) into a directory:
/// ```
///   index.json             format, tokenizer (id, kind, vocab size, end-of-document id), dtype,
///                          totals, and per shard: file names, documents, tokens, checksum
///   shard-00000.bin        token ids of its documents back to back (uint16 when the vocab fits,
///                          else uint32, little-endian); each document ends with the tokenizer's
///                          end-of-document id when it has one
///   shard-00000.idx        "FLXIDX01", u64 document count n, then n + 1 u64 token offsets
/// ```
/// index.json is written last (atomically), so a directory without it is unfinished: `prepare`
/// run again on it resumes after the last shard it recorded (progress.json) and produces the same
/// bytes as an uninterrupted run, whatever the thread count. Each shard's checksum (FNV-1a 64 of
/// its .bin and .idx) is checked when a dataset is opened with `verify`.

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "flexsp/core/error.hpp"
#include "flexsp/data/tokenizer.hpp"

namespace flexsp::data {

/// What `prepare` reads and how.
struct prepare_options {
  std::vector<std::filesystem::path> inputs;  ///< files or directories (recursive)
  std::string glob = "*";                     ///< file names to take from directories ("*.txt,*.md": any)
  std::string field = "text";                 ///< JSON lines: the field holding a document's text
  std::filesystem::path out;
  int threads = 0;                             ///< 0: the machine's cores
  std::uint64_t shard_bytes = 64ull << 20;     ///< text per shard (documents are never split)
  /// Stop after writing this many shards in this run, leaving the dataset unfinished (0: no
  /// limit): a bounded run, resumed later by running prepare again.
  std::uint32_t stop_after_shards = 0;
  /// Leave out (and count) documents that are not valid UTF-8 instead of failing.
  bool skip_invalid_utf8 = false;
  /// Progress: text bytes read and tokens written so far (called from the writer).
  std::function<void(std::uint64_t bytes, std::uint64_t tokens, std::uint64_t documents)> progress;
};

struct prepare_result {
  std::uint64_t documents = 0;
  std::uint64_t tokens = 0;
  std::uint64_t text_bytes = 0;
  std::uint32_t shards = 0;
  std::uint32_t resumed_shards = 0;  ///< shards an earlier, interrupted run had written
  bool finished = true;              ///< false when stop_after_shards ended the run early
  std::uint64_t skipped = 0;         ///< documents left out for invalid UTF-8 (skip_invalid_utf8)
  double seconds = 0;
};

/// Tokenizes the inputs into a prepared dataset (format above). Input kinds by name: "*.jsonl",
/// "*.json" (one JSON object per line), anything else plain text (one document per file); a
/// ".gz" or ".zst" suffix is decompressed first. Errors name the file and position: an unreadable
/// or corrupt input, a line that is not JSON or lacks `field`, invalid UTF-8 (line or byte offset).
expected<prepare_result> prepare(const tokenizer& tok, const prepare_options& options);

/// One prepared dataset, mapped read-only.
class dataset {
public:
  /// Opens `dir` (its index.json); `verify` checks every shard's checksum (reads everything).
  /// errc::not_found for an unfinished or missing dataset, errc::invalid_argument naming the file
  /// for a truncated or corrupt one.
  static expected<std::shared_ptr<dataset>> open(const std::filesystem::path& dir, bool verify = false);
  ~dataset();
  dataset(const dataset&) = delete;
  dataset& operator=(const dataset&) = delete;

  const std::filesystem::path& dir() const noexcept;
  const std::string& tokenizer_id() const noexcept;
  std::int64_t vocab_size() const noexcept;
  std::uint64_t documents() const noexcept;
  std::uint64_t tokens() const noexcept;
  /// Tokens of document `doc` (end-of-document id included).
  std::uint64_t length(std::uint64_t doc) const;
  /// Appends ids [begin, end) of document `doc` (clipped to it).
  void read(std::uint64_t doc, std::uint64_t begin, std::uint64_t end, std::vector<std::int32_t>& out) const;

  struct impl;

private:
  explicit dataset(std::unique_ptr<impl> p);
  std::unique_ptr<impl> p_;
};

/// Document length statistics of a dataset (in tokens).
struct length_stats {
  std::uint64_t documents = 0;
  std::uint64_t tokens = 0;
  std::vector<std::pair<double, std::uint64_t>> percentiles;  ///< (p, length) for p in 50, 90, 99, 99.9, 100
  double mean = 0;
  /// Share of all tokens in documents longer than 4K, 8K, 32K, 128K tokens.
  std::vector<std::pair<std::uint64_t, double>> tokens_above;
  /// Histogram over log2-spaced bins: (lower bound, documents, tokens).
  struct bin {
    std::uint64_t from = 0;
    std::uint64_t documents = 0;
    std::uint64_t tokens = 0;
  };
  std::vector<bin> histogram;
};
length_stats stats_of(std::span<const std::uint64_t> lengths);
length_stats stats_of(const dataset& d);
/// The histogram as an SVG image (log-scale length axis; bars: share of documents, and of tokens).
std::string stats_svg(const length_stats& s, const std::string& title);

}  // namespace flexsp::data
