// Tokenizers: bytes, and SentencePiece trained here on a generated corpus.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>

#include "flexsp/data/tokenizer.hpp"

namespace flexsp::data {
namespace {

namespace fs = std::filesystem;

fs::path scratch(const std::string& name) {
  auto d = fs::temp_directory_path() / fmt::format("flexsp-tok-{}-{}", name, ::getpid());
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

/// Lines of words drawn from a small vocabulary (with accents and CJK), deterministic.
std::string corpus(std::size_t lines) {
  static const char* words[] = {"the", "model", "trains", "on", "long", "sequences", "while", "short", "ones",
                                "skip", "the", "all-to-all", "café", "naïve", "日本語", "данные", "1234", "x86-64"};
  std::mt19937 rng{7};
  std::string out;
  for (std::size_t l = 0; l < lines; ++l) {
    const int n = 3 + static_cast<int>(rng() % 12);
    for (int w = 0; w < n; ++w) {
      if (w) out += ' ';
      out += words[rng() % std::size(words)];
    }
    out += '\n';
  }
  return out;
}

TEST(Tokenizer, BytesRoundTripAnyText) {
  auto t = make_byte_tokenizer();
  std::vector<std::int32_t> ids;
  const std::string text = "héllo\n\x01";
  ASSERT_TRUE(t->encode(text, ids));
  EXPECT_EQ(ids.size(), text.size());
  EXPECT_EQ(t->decode(ids), text);
  EXPECT_EQ(t->vocab_size(), 256);
  EXPECT_EQ(t->id(), "bytes");
  EXPECT_EQ(load_tokenizer("bytes").value()->kind(), "bytes");
}

TEST(Tokenizer, SentencePieceTrainsLoadsAndRoundTrips) {
  const auto dir = scratch("spm");
  {
    std::ofstream f{dir / "corpus.txt"};
    f << corpus(3000);
  }
  sentencepiece_training o;
  o.inputs = {dir / "corpus.txt"};
  o.vocab_size = 300;
  o.out = dir / "tok";
  o.threads = 2;
  auto model = train_sentencepiece(o);
  ASSERT_TRUE(model) << model.error().to_string();
  EXPECT_EQ(*model, dir / "tok.model");
  auto t = load_tokenizer(model->string());
  ASSERT_TRUE(t) << t.error().to_string();
  EXPECT_EQ((*t)->kind(), "sentencepiece");
  EXPECT_EQ((*t)->vocab_size(), 300);
  EXPECT_TRUE((*t)->id().starts_with("sentencepiece:"));
  EXPECT_GE((*t)->end_of_document(), 0);
  const std::string text = "the model trains on long sequences, café 日本語";
  std::vector<std::int32_t> ids;
  ASSERT_TRUE((*t)->encode(text, ids));
  EXPECT_LT(ids.size(), text.size()) << "pieces are longer than bytes";
  for (auto i : ids) EXPECT_TRUE(i >= 0 && i < 300);
  EXPECT_EQ((*t)->decode(ids), text);
  // The same model file gives the same id; invalid UTF-8 is named by offset.
  EXPECT_EQ(load_tokenizer(model->string()).value()->id(), (*t)->id());
  std::vector<std::int32_t> bad;
  auto r = (*t)->encode(std::string{"ok \xff"}, bad);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("byte 3"), std::string::npos) << r.error().message();
  fs::remove_all(dir);
}

TEST(Tokenizer, BadTokenizerSpecsAreClearErrors) {
  auto missing = load_tokenizer("/nonexistent/tok.model");
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().kind(), errc::not_found);
  const auto dir = scratch("bad");
  {
    std::ofstream f{dir / "junk.model"};
    f << "not a model";
  }
  auto junk = load_tokenizer((dir / "junk.model").string());
  ASSERT_FALSE(junk);
  EXPECT_NE(junk.error().message().find("junk.model"), std::string::npos) << junk.error().message();
  sentencepiece_training o;
  o.inputs = {dir / "absent.txt"};
  o.out = dir / "x";
  EXPECT_EQ(train_sentencepiece(o).error().kind(), errc::not_found);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace flexsp::data
