// Prepared datasets: inputs of every kind, the same bytes at any thread count, resuming an
// unfinished run, corrupt files named, and length statistics.
#include <gtest/gtest.h>
#include <zlib.h>

#include <filesystem>
#include <fstream>
#include <random>

#include <nlohmann/json.hpp>

#include "flexsp/data/dataset.hpp"

namespace flexsp::data {
namespace {

namespace fs = std::filesystem;

fs::path scratch(const std::string& name) {
  auto d = fs::temp_directory_path() / fmt::format("flexsp-ds-{}-{}", name, ::getpid());
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

void write(const fs::path& p, const std::string& text) {
  fs::create_directories(p.parent_path());
  std::ofstream f{p, std::ios::binary};
  f << text;
}

std::string read(const fs::path& p) {
  std::ifstream f{p, std::ios::binary};
  return {std::istreambuf_iterator<char>{f}, std::istreambuf_iterator<char>{}};
}

void write_gzip(const fs::path& p, const std::string& text) {
  gzFile g = gzopen(p.c_str(), "wb");
  ASSERT_NE(g, nullptr);
  gzwrite(g, text.data(), static_cast<unsigned>(text.size()));
  gzclose(g);
}

/// Documents of long-tailed lengths (deterministic).
std::vector<std::string> documents(std::size_t n, unsigned seed) {
  std::mt19937 rng{seed};
  std::vector<std::string> out;
  for (std::size_t i = 0; i < n; ++i) {
    const auto len = 1 + static_cast<std::size_t>(std::exp(std::uniform_real_distribution<>(0, 8)(rng)));
    std::string d;
    for (std::size_t k = 0; k < len; ++k) d += static_cast<char>('a' + (rng() % 26));
    out.push_back(fmt::format("doc {} é {}", i, d));
  }
  return out;
}

std::string jsonl(const std::vector<std::string>& docs, const std::string& field = "text") {
  std::string out;
  for (const auto& d : docs) out += nlohmann::json{{field, d}, {"id", 1}}.dump() + "\n";
  return out;
}

/// A corpus of every input kind: JSON lines (plain and gzip), a text directory, zstd JSON lines.
fs::path make_inputs(const fs::path& dir) {
  const auto in = dir / "in";
  write(in / "a.jsonl", jsonl(documents(300, 1)));
  write_gzip(in / "b.jsonl.gz", jsonl(documents(200, 2)));
  const auto texts = documents(40, 3);
  for (std::size_t i = 0; i < texts.size(); ++i) write(in / "texts" / fmt::format("t{:03}.txt", i), texts[i]);
  write(in / "texts" / "skip.md", "not matched by the glob");
  write(in / "c.jsonl", jsonl(documents(100, 4)));
  EXPECT_EQ(std::system(fmt::format("zstd -q -f --rm {} -o {}", (in / "c.jsonl").string(),
                                    (in / "c.jsonl.zst").string()).c_str()),
            0);
  return in;
}

prepare_options options_for(const fs::path& in, const fs::path& out, int threads) {
  prepare_options o;
  o.inputs = {in / "a.jsonl", in / "b.jsonl.gz", in / "texts", in / "c.jsonl.zst"};
  o.glob = "*.txt";
  o.out = out;
  o.threads = threads;
  o.shard_bytes = 20000;  // several shards
  return o;
}

TEST(Prepare, EveryInputKindBecomesDocumentsInInputOrder) {
  const auto dir = scratch("kinds");
  const auto in = make_inputs(dir);
  auto tok = make_byte_tokenizer();
  auto r = prepare(*tok, options_for(in, dir / "out", 2));
  ASSERT_TRUE(r) << r.error().to_string();
  EXPECT_EQ(r->documents, 300u + 200 + 40 + 100);
  EXPECT_GT(r->shards, 2u);
  auto ds = dataset::open(dir / "out", true);
  ASSERT_TRUE(ds) << ds.error().to_string();
  EXPECT_EQ((*ds)->documents(), r->documents);
  EXPECT_EQ((*ds)->tokens(), r->tokens);
  EXPECT_EQ((*ds)->tokenizer_id(), "bytes");
  // Documents come back in input order: the first of a.jsonl, the first text file, the last of c.
  auto text_of = [&](std::uint64_t d) {
    std::vector<std::int32_t> ids;
    (*ds)->read(d, 0, (*ds)->length(d), ids);
    return tok->decode(ids);
  };
  EXPECT_EQ(text_of(0), documents(300, 1)[0]);
  EXPECT_EQ(text_of(500), documents(40, 3)[0]);
  EXPECT_EQ(text_of(639), documents(100, 4)[99]);
  std::vector<std::int32_t> part;
  (*ds)->read(0, 2, 5, part);
  EXPECT_EQ(tok->decode(part), documents(300, 1)[0].substr(2, 3));
  fs::remove_all(dir);
}

TEST(Prepare, OutputIsTheSameBytesAtAnyThreadCount) {
  const auto dir = scratch("threads");
  const auto in = make_inputs(dir);
  auto tok = make_byte_tokenizer();
  ASSERT_TRUE(prepare(*tok, options_for(in, dir / "one", 1)));
  ASSERT_TRUE(prepare(*tok, options_for(in, dir / "four", 4)));
  for (const auto& e : fs::directory_iterator{dir / "one"}) {
    const auto name = e.path().filename();
    if (name == "index.json") continue;  // it names the output files only; compared below
    EXPECT_EQ(read(e.path()), read(dir / "four" / name)) << name;
  }
  auto a = nlohmann::json::parse(read(dir / "one" / "index.json"));
  auto b = nlohmann::json::parse(read(dir / "four" / "index.json"));
  EXPECT_EQ(a["shards"], b["shards"]);
  fs::remove_all(dir);
}

TEST(Prepare, AnInterruptedRunResumesAndEndsWithTheSameBytes) {
  const auto dir = scratch("resume");
  const auto in = make_inputs(dir);
  auto tok = make_byte_tokenizer();
  ASSERT_TRUE(prepare(*tok, options_for(in, dir / "whole", 2)));
  auto o = options_for(in, dir / "parts", 3);
  o.stop_after_shards = 2;
  auto first = prepare(*tok, o);
  ASSERT_TRUE(first) << first.error().to_string();
  EXPECT_FALSE(first->finished);
  auto unfinished = dataset::open(dir / "parts");
  ASSERT_FALSE(unfinished);
  EXPECT_NE(unfinished.error().message().find("unfinished"), std::string::npos) << unfinished.error().message();
  // A partial shard beyond the recorded ones is rewritten.
  write(dir / "parts" / "shard-00002.bin.tmp", "garbage");
  o.stop_after_shards = 0;
  auto rest = prepare(*tok, o);
  ASSERT_TRUE(rest) << rest.error().to_string();
  EXPECT_EQ(rest->resumed_shards, 2u);
  EXPECT_TRUE(rest->finished);
  for (const auto& e : fs::directory_iterator{dir / "whole"})
    EXPECT_EQ(read(e.path()), read(dir / "parts" / e.path().filename())) << e.path().filename();
  // Other inputs into the same unfinished directory are refused.
  auto again = options_for(in, dir / "parts", 1);
  EXPECT_FALSE(prepare(*tok, again)) << "a finished dataset is not overwritten";
  fs::remove_all(dir);
}

TEST(Prepare, JsonLinesDecodeExactlyAsAFullJsonParserDoes) {
  const auto dir = scratch("json");
  const std::vector<std::string> lines = {
      R"({"text": "plain"})",
      R"({"id": 3, "text": "escapes \" \\ \/ \b\f\n\r\t end"})",
      R"({"meta": {"text": "not this one", "list": [1, "}", {"a": "]"}]}, "text": "nested keys skipped"})",
      R"({"text": "\u00e9\u65e5\ud83d\ude00 unicode escapes"})",
      R"(  {"n": -1.5e3, "t": true, "f": false, "z": null, "text": "after literals"}  )",
      R"({"text": "raw UTF-8: café 日本語 😀"})",
      R"({"text": "first", "text": "duplicate keys: the last wins"})",
      R"({"text":"no spaces","x":[]})",
  };
  std::string file;
  for (const auto& l : lines) file += l + "\n";
  write(dir / "in.jsonl", file);
  auto tok = make_byte_tokenizer();
  prepare_options o;
  o.inputs = {dir / "in.jsonl"};
  o.out = dir / "out";
  ASSERT_TRUE(prepare(*tok, o));
  auto ds = dataset::open(dir / "out").value();
  ASSERT_EQ(ds->documents(), lines.size());
  for (std::size_t i = 0; i < lines.size(); ++i) {
    std::vector<std::int32_t> ids;
    ds->read(i, 0, ds->length(i), ids);
    EXPECT_EQ(tok->decode(ids), nlohmann::json::parse(lines[i])["text"].get<std::string>()) << lines[i];
  }
  // A lone surrogate escape is refused by the full parser, which names the line.
  write(dir / "bad.jsonl", "{\"text\": \"ok\"}\n{\"text\": \"\\ud800 alone\"}\n");
  o.inputs = {dir / "bad.jsonl"};
  o.out = dir / "bad-out";
  auto r = prepare(*tok, o);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("bad.jsonl:2"), std::string::npos) << r.error().message();
  fs::remove_all(dir);
}

TEST(Prepare, BadInputsAreNamedWithTheirPosition) {
  const auto dir = scratch("bad");
  auto tok = make_byte_tokenizer();
  write(dir / "x.jsonl", "{\"text\": \"fine\"}\n{\"body\": \"no text field\"}\n");
  prepare_options o;
  o.inputs = {dir / "x.jsonl"};
  o.out = dir / "o1";
  auto r = prepare(*tok, o);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("x.jsonl:2"), std::string::npos) << r.error().message();
  EXPECT_FALSE(fs::exists(dir / "o1" / "index.json")) << "nothing partial looks finished";
  write(dir / "t" / "bad.txt", std::string{"abc\xc3("});
  o.inputs = {dir / "t"};
  o.out = dir / "o2";
  r = prepare(*tok, o);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("bad.txt: invalid UTF-8 at byte 3"), std::string::npos) << r.error().message();
  // Asked to, prepare leaves such documents out and counts them.
  write(dir / "t" / "good.txt", "fine text");
  o.out = dir / "o2-skip";
  o.skip_invalid_utf8 = true;
  auto skipped = prepare(*tok, o);
  ASSERT_TRUE(skipped) << skipped.error().to_string();
  EXPECT_EQ(skipped->skipped, 1u);
  EXPECT_EQ(skipped->documents, 1u);
  o.skip_invalid_utf8 = false;
  write(dir / "broken.jsonl.gz", "this is not gzip data at all, not even close");
  o.inputs = {dir / "broken.jsonl.gz"};
  o.out = dir / "o3";
  r = prepare(*tok, o);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("broken.jsonl.gz"), std::string::npos) << r.error().message();
  o.inputs = {dir / "absent"};
  o.out = dir / "o4";
  EXPECT_EQ(prepare(*tok, o).error().kind(), errc::not_found);
  fs::remove_all(dir);
}

TEST(Dataset, TruncatedOrCorruptShardsAreNamed) {
  const auto dir = scratch("corrupt");
  const auto in = make_inputs(dir);
  auto tok = make_byte_tokenizer();
  ASSERT_TRUE(prepare(*tok, options_for(in, dir / "out", 2)));
  {
    std::fstream f{dir / "out" / "shard-00001.bin", std::ios::in | std::ios::out | std::ios::binary};
    f.seekp(10);
    f.put('!');
  }
  EXPECT_TRUE(dataset::open(dir / "out")) << "without verify the flipped byte goes unseen";
  auto v = dataset::open(dir / "out", true);
  ASSERT_FALSE(v);
  EXPECT_NE(v.error().message().find("shard 1"), std::string::npos) << v.error().message();
  fs::resize_file(dir / "out" / "shard-00000.idx", 20);
  auto t = dataset::open(dir / "out");
  ASSERT_FALSE(t);
  EXPECT_NE(t.error().message().find("shard-00000.idx"), std::string::npos) << t.error().message();
  auto none = dataset::open(dir / "nothing");
  ASSERT_FALSE(none);
  EXPECT_EQ(none.error().kind(), errc::not_found);
  fs::remove_all(dir);
}

TEST(Stats, PercentilesAndTheShareOfTokensInLongDocuments) {
  std::vector<std::uint64_t> lengths;
  for (int i = 0; i < 99; ++i) lengths.push_back(100);
  lengths.push_back(10000);  // one long document: half the tokens... 10000 of 19900
  const auto s = stats_of(lengths);
  EXPECT_EQ(s.documents, 100u);
  EXPECT_EQ(s.tokens, 19900u);
  EXPECT_EQ(s.percentiles.front().second, 100u);
  EXPECT_EQ(s.percentiles.back().second, 10000u);
  EXPECT_NEAR(s.tokens_above.front().second, 10000.0 / 19900.0, 1e-12) << "share above 4K";
  EXPECT_EQ(s.tokens_above.back().second, 0.0) << "nothing above 128K";
  std::uint64_t docs = 0;
  for (const auto& b : s.histogram) docs += b.documents;
  EXPECT_EQ(docs, 100u);
  const auto svg = stats_svg(s, "test");
  EXPECT_NE(svg.find("<svg"), std::string::npos);
  EXPECT_NE(svg.find("share of tokens"), std::string::npos);
}

}  // namespace
}  // namespace flexsp::data
