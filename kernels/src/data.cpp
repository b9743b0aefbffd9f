#include "flexsp/kernels/data.hpp"

#include <algorithm>
#include <fstream>
#include <random>

#include <nlohmann/json.hpp>

namespace flexsp::kernels {

std::vector<std::int32_t> byte_tokenizer::encode(std::string_view text) const {
  std::vector<std::int32_t> ids(text.size());
  std::transform(text.begin(), text.end(), ids.begin(),
                 [](char ch) { return static_cast<std::int32_t>(static_cast<unsigned char>(ch)); });
  return ids;
}

expected<std::string> byte_tokenizer::decode(std::span<const std::int32_t> ids) const {
  std::string s(ids.size(), '\0');
  for (std::size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= kVocab)
      return make_error(errc::invalid_argument, "token id {} at index {} is not a byte", ids[i], i);
    s[i] = static_cast<char>(static_cast<unsigned char>(ids[i]));
  }
  return s;
}

expected<std::vector<std::string>> load_jsonl_documents(const std::filesystem::path& file) {
  std::ifstream in{file};
  if (!in) return make_error(errc::not_found, "cannot open JSON-lines file {}", file.string());
  std::vector<std::string> docs;
  std::string line;
  for (std::size_t lineno = 1; std::getline(in, line); ++lineno) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) return make_error(errc::invalid_argument, "{}:{}: not valid JSON", file.string(), lineno);
    if (!j.is_object() || !j.contains("text") || !j["text"].is_string())
      return make_error(errc::invalid_argument, "{}:{}: no string field \"text\"", file.string(), lineno);
    docs.push_back(j["text"].get<std::string>());
  }
  return docs;
}

expected<std::vector<std::string>> load_text_documents(const std::filesystem::path& dir) {
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec))
    return make_error(errc::not_found, "text directory {} does not exist", dir.string());
  std::vector<std::filesystem::path> files;
  for (const auto& e : std::filesystem::directory_iterator{dir, ec})
    if (e.is_regular_file()) files.push_back(e.path());
  if (ec) return make_error(errc::io, "cannot list {}: {}", dir.string(), ec.message());
  std::sort(files.begin(), files.end());
  std::vector<std::string> docs;
  for (const auto& f : files) {
    std::ifstream in{f, std::ios::binary};
    if (!in) return make_error(errc::io, "cannot read {}", f.string());
    docs.emplace_back(std::istreambuf_iterator<char>{in}, std::istreambuf_iterator<char>{});
  }
  return docs;
}

std::vector<std::int32_t> tokenize_corpus(std::span<const std::string> documents, std::int32_t separator) {
  byte_tokenizer tok;
  std::vector<std::int32_t> ids;
  for (const auto& d : documents) {
    auto e = tok.encode(d);
    ids.insert(ids.end(), e.begin(), e.end());
    if (separator >= 0) ids.push_back(separator);
  }
  return ids;
}

expected<std::vector<std::vector<std::int32_t>>> sample_sequences(std::span<const std::int32_t> corpus,
                                                                  std::span<const std::int64_t> lengths,
                                                                  std::uint64_t seed) {
  std::mt19937_64 rng{seed};
  std::vector<std::vector<std::int32_t>> out;
  out.reserve(lengths.size());
  for (std::size_t i = 0; i < lengths.size(); ++i) {
    const auto L = lengths[i];
    if (L < 0 || static_cast<std::size_t>(L) + 1 > corpus.size())
      return make_error(errc::invalid_argument, "sequence {} of length {} does not fit a corpus of {} tokens", i, L,
                        corpus.size());
    const auto span_count = corpus.size() - static_cast<std::size_t>(L);  // valid start offsets
    const auto start = static_cast<std::size_t>(rng() % span_count);
    out.emplace_back(corpus.begin() + static_cast<std::ptrdiff_t>(start),
                     corpus.begin() + static_cast<std::ptrdiff_t>(start + static_cast<std::size_t>(L) + 1));
  }
  return out;
}

std::vector<std::vector<std::int32_t>> synthetic_sequences(std::span<const std::int64_t> lengths, std::uint64_t seed,
                                                           std::int64_t vocab) {
  std::mt19937_64 rng{seed};
  std::vector<std::vector<std::int32_t>> out;
  out.reserve(lengths.size());
  for (auto L : lengths) {
    std::vector<std::int32_t> s(static_cast<std::size_t>(std::max<std::int64_t>(L, 0)) + 1);
    for (auto& id : s) id = static_cast<std::int32_t>(rng() % static_cast<std::uint64_t>(vocab));
    out.push_back(std::move(s));
  }
  return out;
}

}  // namespace flexsp::kernels
