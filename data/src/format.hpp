#pragma once
// The on-disk format of prepared datasets (dataset.hpp), shared by the writer and the reader.

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "flexsp/core/error.hpp"
#include "flexsp/core/fnv.hpp"

namespace flexsp::data {

constexpr char kIndexMagic[8] = {'F', 'L', 'X', 'I', 'D', 'X', '0', '1'};
constexpr int kFormatVersion = 1;

inline std::string shard_bin_name(std::uint32_t i) {
  char b[32];
  std::snprintf(b, sizeof b, "shard-%05u.bin", i);
  return b;
}
inline std::string shard_idx_name(std::uint32_t i) {
  char b[32];
  std::snprintf(b, sizeof b, "shard-%05u.idx", i);
  return b;
}


/// "FLXIDX01", u64 n, n + 1 u64 offsets.
inline std::string encode_offsets(const std::vector<std::uint64_t>& offsets) {
  std::string out(kIndexMagic, 8);
  const std::uint64_t n = offsets.size() - 1;
  out.append(reinterpret_cast<const char*>(&n), 8);
  out.append(reinterpret_cast<const char*>(offsets.data()), offsets.size() * 8);
  return out;
}

struct shard_entry {
  std::uint32_t index = 0;
  std::uint64_t documents = 0;
  std::uint64_t tokens = 0;
  std::uint64_t checksum = 0;
  std::uint64_t text_bytes = 0;
  std::uint64_t batches_end = 0;  // progress only: batches read when the shard closed
  nlohmann::json to_json() const {
    char sum[17];
    std::snprintf(sum, sizeof sum, "%016llx", static_cast<unsigned long long>(checksum));
    return {{"tokens_file", shard_bin_name(index)}, {"index_file", shard_idx_name(index)},
            {"documents", documents},               {"tokens", tokens},
            {"text_bytes", text_bytes},             {"checksum", sum}};
  }
  static std::optional<shard_entry> from_json(const nlohmann::json& j) {
    try {
      shard_entry e;
      const auto file = j.at("tokens_file").get<std::string>();
      unsigned idx = 0;
      if (std::sscanf(file.c_str(), "shard-%05u.bin", &idx) != 1 || file != shard_bin_name(idx)) return std::nullopt;
      e.index = idx;
      e.documents = j.at("documents").get<std::uint64_t>();
      e.tokens = j.at("tokens").get<std::uint64_t>();
      e.text_bytes = j.value("text_bytes", std::uint64_t{0});
      e.checksum = std::stoull(j.at("checksum").get<std::string>(), nullptr, 16);
      return e;
    } catch (const std::exception&) {
      return std::nullopt;
    }
  }
};

struct dataset_index {
  std::string tokenizer_id, tokenizer_kind;
  std::int64_t vocab_size = 0;
  std::int32_t end_of_document = -1;
  int width = 2;
  std::vector<shard_entry> shards;
  std::uint64_t documents = 0, tokens = 0, text_bytes = 0;
  std::vector<std::string> inputs;

  nlohmann::json to_json() const {
    nlohmann::json s = nlohmann::json::array();
    for (const auto& e : shards) s.push_back(e.to_json());
    return {{"format", "flexsp-tokens"},
            {"version", kFormatVersion},
            {"tokenizer", {{"id", tokenizer_id}, {"kind", tokenizer_kind}, {"vocab_size", vocab_size},
                           {"end_of_document", end_of_document}}},
            {"dtype", width == 2 ? "uint16" : "uint32"},
            {"documents", documents},
            {"tokens", tokens},
            {"text_bytes", text_bytes},
            {"inputs", inputs},
            {"shards", s}};
  }
};

/// Reads the index of `dir`; errors name the file.
expected<dataset_index> read_index(const std::filesystem::path& dir);

/// Whether a shard's two files exist with the sizes and checksum its entry records.
bool verify_shard(const std::filesystem::path& dir, const shard_entry& e, int width);

/// Writes `text` to `path` through a temporary file and a rename.
expected<void> write_atomically(const std::filesystem::path& path, const std::string& text);

}  // namespace flexsp::data
