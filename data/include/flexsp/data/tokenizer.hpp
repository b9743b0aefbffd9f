#pragma once
/// \file
/// Tokenizers: text to token ids and back. Three kinds:
/// - `bytes`: one id per byte (vocab 256), for tests and byte-level models;
/// - `sentencepiece`: a SentencePiece model file (`.model`), loaded with libsentencepiece, or
///   trained from a corpus (train_sentencepiece);
/// - `bpe`: byte-level BPE from a Hugging Face `tokenizer.json` (the GPT-2 and LLaMA-3 styles:
///   a regex pre-tokenizer, bytes mapped to printable characters, ranked merges).
///
/// A tokenizer travels with prepared data: its id (kind and a fingerprint of its model file)
/// and vocab size are written into the dataset's index, and a job checks them against its model.
/// encode/decode are const and safe to call from several threads at once.

#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "flexsp/core/error.hpp"

namespace flexsp::data {

class tokenizer {
public:
  virtual ~tokenizer() = default;
  /// "bytes", "sentencepiece" or "bpe".
  virtual std::string_view kind() const noexcept = 0;
  /// Kind and a fingerprint of the model ("sentencepiece:9f0c..."): equal ids, equal encodings.
  virtual std::string id() const = 0;
  /// Ids are in [0, vocab_size()).
  virtual std::int64_t vocab_size() const noexcept = 0;
  /// Appends the ids of `text` (UTF-8; errc::invalid_argument naming the byte offset of invalid
  /// UTF-8 for the kinds that need it) to `out`.
  virtual expected<void> encode(std::string_view text, std::vector<std::int32_t>& out) const = 0;
  /// The text of `ids` (ids out of range are skipped).
  virtual std::string decode(std::span<const std::int32_t> ids) const = 0;
  /// The id that ends a document (-1: none; documents are then separated by nothing).
  virtual std::int32_t end_of_document() const noexcept = 0;
};

/// `spec` is "bytes", a SentencePiece `.model` file, or a `tokenizer.json` (or a directory holding
/// one). errc::not_found / invalid_argument naming the file.
expected<std::unique_ptr<tokenizer>> load_tokenizer(const std::string& spec);

/// The byte tokenizer (vocab 256, no end-of-document id).
std::unique_ptr<tokenizer> make_byte_tokenizer();

/// A byte-level BPE tokenizer from a Hugging Face tokenizer.json.
expected<std::unique_ptr<tokenizer>> load_bpe_tokenizer(const std::filesystem::path& tokenizer_json);

/// A SentencePiece model file.
expected<std::unique_ptr<tokenizer>> load_sentencepiece(const std::filesystem::path& model);

/// Trains a SentencePiece model (unigram unless `bpe`) of `vocab_size` pieces on the text files
/// `inputs` (one sentence per line, as SentencePiece reads them), writing `out` (".model" is
/// added when missing; a ".vocab" file goes beside it). errc::invalid_argument for a vocab the
/// corpus cannot fill, errc::io for unwritable output.
struct sentencepiece_training {
  std::vector<std::filesystem::path> inputs;
  std::int64_t vocab_size = 8000;
  std::filesystem::path out;
  bool bpe = false;
  int threads = 0;                       ///< 0: the machine's cores
  std::int64_t max_sentences = 2000000;  ///< sampled from the inputs
};
expected<std::filesystem::path> train_sentencepiece(const sentencepiece_training& options);

}  // namespace flexsp::data
