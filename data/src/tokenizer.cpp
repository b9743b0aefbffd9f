#include "flexsp/data/tokenizer.hpp"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <fmt/format.h>

#include <fstream>
#include <iterator>
#include <thread>

#include "flexsp/core/fnv.hpp"
#include "utf8.hpp"

namespace flexsp::data {

namespace {


class byte_tokenizer final : public tokenizer {
public:
  std::string_view kind() const noexcept override { return "bytes"; }
  std::string id() const override { return "bytes"; }
  std::int64_t vocab_size() const noexcept override { return 256; }
  expected<void> encode(std::string_view text, std::vector<std::int32_t>& out) const override {
    // Appended without an exact reserve: the caller appends document after document, and an
    // exact reserve would reallocate (and copy everything) on each of them.
    out.insert(out.end(), reinterpret_cast<const unsigned char*>(text.data()),
               reinterpret_cast<const unsigned char*>(text.data()) + text.size());
    return {};
  }
  std::string decode(std::span<const std::int32_t> ids) const override {
    std::string s;
    s.reserve(ids.size());
    for (auto i : ids)
      if (i >= 0 && i < 256) s.push_back(static_cast<char>(i));
    return s;
  }
  std::int32_t end_of_document() const noexcept override { return -1; }
};

class sentencepiece_tokenizer final : public tokenizer {
public:
  sentencepiece_tokenizer(std::string serialized, std::string id) : id_{std::move(id)} {
    proto_ = std::move(serialized);
  }
  expected<void> load(const std::string& where) {
    if (const auto st = sp_.LoadFromSerializedProto(proto_); !st.ok())
      return make_error(errc::invalid_argument, "{}: not a SentencePiece model: {}", where, st.ToString());
    return {};
  }
  std::string_view kind() const noexcept override { return "sentencepiece"; }
  std::string id() const override { return id_; }
  std::int64_t vocab_size() const noexcept override { return sp_.GetPieceSize(); }
  expected<void> encode(std::string_view text, std::vector<std::int32_t>& out) const override {
    if (const auto bad = invalid_utf8_at(text); bad >= 0)
      return make_error(errc::invalid_argument, "invalid UTF-8 at byte {}", bad);
    std::vector<int> ids;
    if (const auto st = sp_.Encode(absl::string_view{text.data(), text.size()}, &ids); !st.ok())
      return make_error(errc::invalid_argument, "SentencePiece cannot encode: {}", st.ToString());
    out.insert(out.end(), ids.begin(), ids.end());
    return {};
  }
  std::string decode(std::span<const std::int32_t> ids) const override {
    std::vector<int> in;
    in.reserve(ids.size());
    for (auto i : ids)
      if (i >= 0 && i < sp_.GetPieceSize()) in.push_back(i);
    return sp_.DecodeIds(in);
  }
  std::int32_t end_of_document() const noexcept override { return sp_.eos_id(); }

private:
  sentencepiece::SentencePieceProcessor sp_;
  std::string proto_;
  std::string id_;
};

expected<std::string> read_all(const std::filesystem::path& p) {
  std::ifstream in{p, std::ios::binary};
  if (!in) return make_error(errc::not_found, "cannot open {}", p.string());
  std::string s{std::istreambuf_iterator<char>{in}, std::istreambuf_iterator<char>{}};
  if (in.bad()) return make_error(errc::io, "cannot read {}", p.string());
  return s;
}

}  // namespace

std::unique_ptr<tokenizer> make_byte_tokenizer() { return std::make_unique<byte_tokenizer>(); }

expected<std::unique_ptr<tokenizer>> load_sentencepiece(const std::filesystem::path& model) {
  FLEXSP_TRY_ASSIGN(auto bytes, read_all(model));
  auto id = "sentencepiece:" + fnv1a64_hex(bytes);
  auto t = std::make_unique<sentencepiece_tokenizer>(std::move(bytes), std::move(id));
  FLEXSP_TRY(t->load(model.string()));
  return std::unique_ptr<tokenizer>{std::move(t)};
}

expected<std::unique_ptr<tokenizer>> load_tokenizer(const std::string& spec) {
  if (spec == "bytes") return make_byte_tokenizer();
  std::filesystem::path p{spec};
  std::error_code ec;
  if (std::filesystem::is_directory(p, ec)) p /= "tokenizer.json";
  if (!std::filesystem::exists(p, ec))
    return make_error(errc::not_found, "tokenizer {} does not exist (give \"bytes\", a SentencePiece .model or a "
                                       "tokenizer.json)",
                      p.string());
  if (p.extension() == ".json") return load_bpe_tokenizer(p);
  return load_sentencepiece(p);
}

expected<std::filesystem::path> train_sentencepiece(const sentencepiece_training& o) {
  if (o.inputs.empty()) return make_error(errc::invalid_argument, "train-tokenizer: no input files");
  if (o.vocab_size < 8) return make_error(errc::invalid_argument, "vocab size {} is too small", o.vocab_size);
  std::string inputs;
  for (const auto& f : o.inputs) {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(f, ec))
      return make_error(errc::not_found, "input {} is not a readable file", f.string());
    if (!inputs.empty()) inputs += ',';
    inputs += f.string();
  }
  auto prefix = o.out;
  if (prefix.extension() == ".model") prefix.replace_extension();
  if (prefix.has_parent_path()) {
    std::error_code ec;
    std::filesystem::create_directories(prefix.parent_path(), ec);
    if (ec) return make_error(errc::io, "cannot create {}: {}", prefix.parent_path().string(), ec.message());
  }
  const int threads = o.threads > 0 ? o.threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const std::unordered_map<std::string, std::string> args{
      {"input", inputs},
      {"model_prefix", prefix.string()},
      {"vocab_size", std::to_string(o.vocab_size)},
      {"model_type", o.bpe ? "bpe" : "unigram"},
      {"num_threads", std::to_string(threads)},
      {"input_sentence_size", std::to_string(o.max_sentences)},
      {"shuffle_input_sentence", "true"},
      {"character_coverage", "0.9995"},
      {"byte_fallback", "true"},
      {"minloglevel", "2"},
  };
  if (const auto st = sentencepiece::SentencePieceTrainer::Train(args); !st.ok())
    return make_error(st.code() == sentencepiece::util::StatusCode::kInternal ? errc::failed : errc::invalid_argument,
                      "SentencePiece training failed: {}", st.ToString());
  auto model = prefix;
  model += ".model";
  return model;
}

}  // namespace flexsp::data
