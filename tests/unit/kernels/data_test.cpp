#include "flexsp/kernels/data.hpp"

#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>
#include <unistd.h>

namespace flexsp::kernels {
namespace {

std::filesystem::path scratch_dir(const char* name) {
  auto d = std::filesystem::temp_directory_path() / (std::string{name} + "_" + std::to_string(::getpid()));
  std::filesystem::remove_all(d);
  std::filesystem::create_directories(d);
  return d;
}

TEST(ByteTokenizer, RoundTripsAnyBytes) {
  byte_tokenizer tok;
  const std::string text = std::string{"caf\xc3\xa9 \x01\xff"};
  auto ids = tok.encode(text);
  EXPECT_EQ(ids.size(), text.size());
  EXPECT_EQ(ids.back(), 255);
  EXPECT_EQ(tok.decode(ids).value(), text);
  const std::vector<std::int32_t> bad{256};
  EXPECT_EQ(tok.decode(bad).error().kind(), errc::invalid_argument);
}

TEST(JsonLines, ReadsTextFieldsAndNamesTheBadLine) {
  auto d = scratch_dir("flexsp_jsonl");
  {
    std::ofstream f{d / "ok.jsonl"};
    f << R"({"text": "first doc", "id": 1})" << "\n\n" << R"({"text": "second"})" << "\n";
    std::ofstream g{d / "bad.jsonl"};
    g << R"({"text": "x"})" << "\n" << R"({"title": "no text"})" << "\n";
  }
  auto docs = load_jsonl_documents(d / "ok.jsonl").value();
  EXPECT_EQ(docs, (std::vector<std::string>{"first doc", "second"}));
  auto bad = load_jsonl_documents(d / "bad.jsonl");
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message().find(":2:"), std::string::npos) << bad.error().message();
  EXPECT_EQ(load_jsonl_documents(d / "absent.jsonl").error().kind(), errc::not_found);
  std::filesystem::remove_all(d);
}

TEST(TextDirectory, ReadsOneDocumentPerFileInNameOrder) {
  auto d = scratch_dir("flexsp_textdir");
  std::ofstream{d / "b.txt"} << "bee";
  std::ofstream{d / "a.txt"} << "ay";
  auto docs = load_text_documents(d).value();
  EXPECT_EQ(docs, (std::vector<std::string>{"ay", "bee"}));
  EXPECT_EQ(tokenize_corpus(docs).size(), 2u + 1u + 3u + 1u);
  EXPECT_EQ(load_text_documents(d / "nope").error().kind(), errc::not_found);
  std::filesystem::remove_all(d);
}

TEST(Sequences, AreSeededAndCarryOneExtraTarget) {
  const std::vector<std::int64_t> lengths{0, 3, 10};
  auto a = synthetic_sequences(lengths, 9), b = synthetic_sequences(lengths, 9), c = synthetic_sequences(lengths, 10);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  EXPECT_EQ(a[2].size(), 11u);
  std::vector<std::int32_t> corpus(20);
  for (int i = 0; i < 20; ++i) corpus[i] = i;
  auto s = sample_sequences(corpus, lengths, 1).value();
  for (const auto& seq : s)
    for (std::size_t i = 1; i < seq.size(); ++i) EXPECT_EQ(seq[i], seq[i - 1] + 1);
  const std::vector<std::int64_t> too_long{20};
  EXPECT_FALSE(sample_sequences(corpus, too_long, 1));
}

}  // namespace
}  // namespace flexsp::kernels
