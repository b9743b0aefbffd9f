#pragma once
/// \file
/// Training data for the CPU device: the byte-level tokenizer (vocab 256, the default),
/// document loaders (JSON lines with a `text` field; a directory of plain-text files, one
/// document per file), and token content for given sequence lengths — cut from a tokenized
/// corpus, or seeded synthetic ids. Sequence *lengths* come from elsewhere (a dataset or the
/// planner's long-tail generator); every sequence of length L carries L + 1 ids (inputs and
/// shifted targets, see shard_inputs).

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "flexsp/core/error.hpp"

namespace flexsp::kernels {

/// Bytes as tokens: id = byte value. Lossless for any input.
class byte_tokenizer {
public:
  static constexpr std::int64_t kVocab = 256;
  std::vector<std::int32_t> encode(std::string_view text) const;
  /// errc::invalid_argument for an id outside [0, 256), naming its index.
  expected<std::string> decode(std::span<const std::int32_t> ids) const;
};

/// Documents from a JSON-lines file: the string field `text` of each non-blank line.
/// errc::not_found for a missing file; errc::invalid_argument naming the line number for a
/// line that is not JSON or lacks a string `text`.
expected<std::vector<std::string>> load_jsonl_documents(const std::filesystem::path& file);

/// Documents from the regular files of a directory (not recursive), in file-name order.
/// errc::not_found when the directory does not exist; errc::io when a file cannot be read.
expected<std::vector<std::string>> load_text_documents(const std::filesystem::path& dir);

/// Concatenation of the encoded documents, each followed by `separator` (a byte id; -1: none).
std::vector<std::int32_t> tokenize_corpus(std::span<const std::string> documents, std::int32_t separator = '\n');

/// For each length L, L + 1 consecutive ids from `corpus` starting at a seeded random offset.
/// errc::invalid_argument when a length is negative or the corpus is shorter than L + 1.
expected<std::vector<std::vector<std::int32_t>>> sample_sequences(std::span<const std::int32_t> corpus,
                                                                  std::span<const std::int64_t> lengths,
                                                                  std::uint64_t seed);

/// For each length L, L + 1 seeded uniform ids in [0, vocab). Same seed, same ids.
std::vector<std::vector<std::int32_t>> synthetic_sequences(std::span<const std::int64_t> lengths, std::uint64_t seed,
                                                           std::int64_t vocab = byte_tokenizer::kVocab);

}  // namespace flexsp::kernels
