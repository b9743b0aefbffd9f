// Checks the byte-level BPE tokenizer against encodings recorded from Hugging Face `tokenizers`
// (fixtures/make_fixtures.py builds the tokenizer.json files and their expected.json).

#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "flexsp/data/tokenizer.hpp"

#ifndef FLEXSP_DATA_FIXTURES
#define FLEXSP_DATA_FIXTURES "tests/unit/data/fixtures"
#endif

namespace flexsp::data {
namespace {

namespace fs = std::filesystem;

fs::path fixture(const std::string& name) { return fs::path{FLEXSP_DATA_FIXTURES} / name; }

nlohmann::json read_json(const fs::path& p) {
  std::ifstream in{p, std::ios::binary};
  EXPECT_TRUE(in) << p;
  return nlohmann::json::parse(std::string{std::istreambuf_iterator<char>{in}, std::istreambuf_iterator<char>{}});
}

// A scratch directory per test, removed afterwards.
class scratch {
public:
  scratch() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() / fmt::format("flexsp-bpe-{}-{}", info->name(), ::getpid());
    fs::create_directories(dir_);
  }
  ~scratch() {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  fs::path write(const std::string& name, const std::string& text) const {
    const auto p = dir_ / name;
    std::ofstream{p, std::ios::binary} << text;
    return p;
  }

private:
  fs::path dir_;
};

std::unique_ptr<tokenizer> load(const fs::path& p) {
  auto t = load_bpe_tokenizer(p);
  if (!t) ADD_FAILURE() << t.error().to_string();
  return t ? std::move(*t) : nullptr;
}

std::vector<std::int32_t> ids_of(const nlohmann::json& j) { return j.get<std::vector<std::int32_t>>(); }

void check_cases(const tokenizer& tok, const nlohmann::json& cases) {
  ASSERT_FALSE(cases.empty());
  int matched = 0;
  for (const auto& c : cases) {
    const auto text = c.at("text").get<std::string>();
    std::vector<std::int32_t> got;
    const auto r = tok.encode(text, got);
    ASSERT_TRUE(r) << r.error().to_string();
    EXPECT_EQ(got, ids_of(c.at("ids"))) << "text: " << nlohmann::json(text).dump();
    EXPECT_EQ(tok.decode(got), text) << "text: " << nlohmann::json(text).dump();
    if (got == ids_of(c.at("ids"))) ++matched;
  }
  EXPECT_EQ(matched, static_cast<int>(cases.size()));
}

std::int64_t expected_vocab_size(const nlohmann::json& spec) {
  std::int64_t max_id = -1;
  for (const auto& [k, v] : spec.at("model").at("vocab").items()) max_id = std::max(max_id, v.get<std::int64_t>());
  for (const auto& t : spec.at("added_tokens")) max_id = std::max(max_id, t.at("id").get<std::int64_t>());
  return max_id + 1;
}

TEST(BpeTokenizer, Gpt2StyleMatchesHuggingFace) {
  const auto tok = load(fixture("gpt2_style/tokenizer.json"));
  ASSERT_TRUE(tok);
  const auto spec = read_json(fixture("gpt2_style/tokenizer.json"));
  EXPECT_EQ(tok->kind(), "bpe");
  EXPECT_EQ(tok->vocab_size(), expected_vocab_size(spec));
  EXPECT_EQ(tok->end_of_document(), spec.at("added_tokens").at(0).at("id").get<std::int32_t>());
  EXPECT_EQ(tok->decode(std::vector<std::int32_t>{tok->end_of_document()}), "<|endoftext|>");
  check_cases(*tok, read_json(fixture("gpt2_style/expected.json")).at("cases"));
}

TEST(BpeTokenizer, Llama3StyleMatchesHuggingFace) {
  const auto tok = load(fixture("llama3_style/tokenizer.json"));
  ASSERT_TRUE(tok);
  const auto spec = read_json(fixture("llama3_style/tokenizer.json"));
  EXPECT_EQ(tok->vocab_size(), expected_vocab_size(spec));
  std::int32_t end_of_text = -1;
  for (const auto& t : spec.at("added_tokens"))
    if (t.at("content") == "<|end_of_text|>") end_of_text = t.at("id").get<std::int32_t>();
  EXPECT_GE(end_of_text, 0);
  EXPECT_EQ(tok->end_of_document(), end_of_text);
  check_cases(*tok, read_json(fixture("llama3_style/expected.json")).at("cases"));
}

TEST(BpeTokenizer, IgnoreMergesEmitsWholeWords) {
  const auto tok = load(fixture("llama3_style/tokenizer.json"));
  ASSERT_TRUE(tok);
  const auto spec = read_json(fixture("llama3_style/tokenizer.json"));
  std::vector<std::int32_t> got;
  ASSERT_TRUE(tok->encode("a qqqq", got));
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[1], spec.at("model").at("vocab").at("\xc4\xa0qqqq").get<std::int32_t>());
}

TEST(BpeTokenizer, AddPrefixSpaceMatchesHuggingFace) {
  scratch tmp;
  auto spec = read_json(fixture("gpt2_style/tokenizer.json"));
  spec["pre_tokenizer"]["add_prefix_space"] = true;
  const auto tok = load(tmp.write("tokenizer.json", spec.dump()));
  ASSERT_TRUE(tok);
  const auto cases = read_json(fixture("gpt2_style/expected.json")).at("prefix_space_cases");
  for (const auto& c : cases) {
    std::vector<std::int32_t> got;
    ASSERT_TRUE(tok->encode(c.at("text").get<std::string>(), got));
    EXPECT_EQ(got, ids_of(c.at("ids"))) << c.at("text").dump();
  }
}

TEST(BpeTokenizer, IdFingerprintsTheFile) {
  const auto a = load(fixture("gpt2_style/tokenizer.json"));
  const auto b = load(fixture("gpt2_style/tokenizer.json"));
  const auto c = load(fixture("llama3_style/tokenizer.json"));
  ASSERT_TRUE(a && b && c);
  EXPECT_EQ(a->id(), b->id());
  EXPECT_NE(a->id(), c->id());
  ASSERT_EQ(a->id().size(), 4u + 16u);
  EXPECT_EQ(a->id().substr(0, 4), "bpe:");
  EXPECT_EQ(a->id().find_first_not_of("0123456789abcdef", 4), std::string::npos);
}

TEST(BpeTokenizer, LoadsFromTheDirectory) {
  const auto tok = load(fixture("gpt2_style"));
  ASSERT_TRUE(tok);
  EXPECT_EQ(tok->kind(), "bpe");
}

TEST(BpeTokenizer, InvalidUtf8NamesTheOffset) {
  const auto tok = load(fixture("gpt2_style/tokenizer.json"));
  ASSERT_TRUE(tok);
  std::vector<std::int32_t> out;
  auto r = tok->encode(std::string_view{"ab\xff" "cd"}, out);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().kind(), errc::invalid_argument);
  EXPECT_NE(r.error().message().find("offset 2"), std::string::npos) << r.error().message();
  r = tok->encode(std::string_view{"abc\xe6\x97"}, out);  // truncated three-byte sequence
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("offset 3"), std::string::npos) << r.error().message();
  r = tok->encode(std::string_view{"\xed\xa0\x80"}, out);  // a UTF-16 surrogate
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("offset 0"), std::string::npos) << r.error().message();
  EXPECT_TRUE(out.empty());
}

TEST(BpeTokenizer, DecodeSkipsOutOfRangeIds) {
  const auto tok = load(fixture("gpt2_style/tokenizer.json"));
  ASSERT_TRUE(tok);
  std::vector<std::int32_t> ids;
  ASSERT_TRUE(tok->encode("hello", ids));
  std::vector<std::int32_t> with_junk{-1};
  with_junk.insert(with_junk.end(), ids.begin(), ids.end());
  with_junk.push_back(static_cast<std::int32_t>(tok->vocab_size()));
  EXPECT_EQ(tok->decode(with_junk), "hello");
}

TEST(BpeTokenizer, EncodeIsSafeFromSeveralThreads) {
  const auto tok = load(fixture("llama3_style/tokenizer.json"));
  ASSERT_TRUE(tok);
  const auto cases = read_json(fixture("llama3_style/expected.json")).at("cases");
  std::vector<int> mismatches(4, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 20; ++round)
        for (const auto& c : cases) {
          std::vector<std::int32_t> got;
          if (!tok->encode(c.at("text").get<std::string>(), got) || got != ids_of(c.at("ids"))) ++mismatches[t];
        }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(mismatches, std::vector<int>(4, 0));
}

TEST(BpeTokenizer, MissingFileIsNotFound) {
  auto t = load_bpe_tokenizer("/nonexistent/flexsp/tokenizer.json");
  ASSERT_FALSE(t);
  EXPECT_EQ(t.error().kind(), errc::not_found);
  EXPECT_NE(t.error().message().find("/nonexistent/flexsp/tokenizer.json"), std::string::npos);
}

TEST(BpeTokenizer, MalformedJsonIsInvalidArgument) {
  scratch tmp;
  const auto p = tmp.write("broken.json", "{\"model\": {");
  auto t = load_bpe_tokenizer(p);
  ASSERT_FALSE(t);
  EXPECT_EQ(t.error().kind(), errc::invalid_argument);
  EXPECT_NE(t.error().message().find(p.string()), std::string::npos) << t.error().message();
}

TEST(BpeTokenizer, UnsupportedRegexIsUnimplemented) {
  scratch tmp;
  auto spec = read_json(fixture("llama3_style/tokenizer.json"));
  spec["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "\\w+|\\s+";
  auto t = load_bpe_tokenizer(tmp.write("tokenizer.json", spec.dump()));
  ASSERT_FALSE(t);
  EXPECT_EQ(t.error().kind(), errc::unimplemented);
  EXPECT_NE(t.error().message().find("\\w+|\\s+"), std::string::npos) << t.error().message();
}

TEST(BpeTokenizer, OtherModelTypesAreUnimplemented) {
  scratch tmp;
  auto spec = read_json(fixture("gpt2_style/tokenizer.json"));
  spec["model"]["type"] = "WordPiece";
  auto t = load_bpe_tokenizer(tmp.write("tokenizer.json", spec.dump()));
  ASSERT_FALSE(t);
  EXPECT_EQ(t.error().kind(), errc::unimplemented);
  EXPECT_NE(t.error().message().find("WordPiece"), std::string::npos) << t.error().message();
}

}  // namespace
}  // namespace flexsp::data
