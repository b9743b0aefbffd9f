// `flexsp data train-tokenizer|prepare|stats`: from raw text to token shards a job trains on.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <thread>

#include <unistd.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "flexsp/data/dataset.hpp"
#include "flexsp/data/tokenizer.hpp"

namespace flexsp::app {

namespace {

namespace fs = std::filesystem;

int fail(const char* what, const error& e) {
  fmt::print(stderr, "flexsp data {}: {}\n", what, e.message());
  return e.kind() == errc::invalid_argument || e.kind() == errc::not_found ? 2 : 1;
}

struct prepare_flags {
  std::vector<std::string> inputs;
  std::string tokenizer = "bytes";
  std::string out;
  std::string field = "text";
  std::string glob = "*";
  int threads = 0;
  double shard_mb = 64;
  bool quiet = false;
  bool skip_invalid = false;
};

int run_prepare(const prepare_flags& f) {
  auto tok = data::load_tokenizer(f.tokenizer);
  if (!tok) return fail("prepare", tok.error());
  data::prepare_options o;
  for (const auto& i : f.inputs) o.inputs.emplace_back(i);
  o.out = f.out;
  o.field = f.field;
  o.glob = f.glob;
  o.threads = f.threads > 0 ? f.threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  o.shard_bytes = static_cast<std::uint64_t>(f.shard_mb * 1024 * 1024);
  o.skip_invalid_utf8 = f.skip_invalid;
  const auto t0 = std::chrono::steady_clock::now();
  auto last = t0;
  const bool tty = ::isatty(2);
  if (!f.quiet)
    o.progress = [&](std::uint64_t bytes, std::uint64_t tokens, std::uint64_t docs) {
      const auto now = std::chrono::steady_clock::now();
      if (now - last < std::chrono::milliseconds{tty ? 200 : 5000}) return;
      last = now;
      const double s = std::chrono::duration<double>(now - t0).count();
      fmt::print(stderr, "{}prepare: {:.1f} MB of text, {} documents, {} tokens, {:.1f} MB/s{}", tty ? "\r" : "",
                 static_cast<double>(bytes) / 1e6, docs, tokens, static_cast<double>(bytes) / 1e6 / std::max(1e-9, s),
                 tty ? "   " : "\n");
    };
  fmt::print(stderr, "prepare: tokenizer {} ({} ids), {} threads -> {}\n", (*tok)->id(), (*tok)->vocab_size(),
             o.threads, f.out);
  auto r = data::prepare(**tok, o);
  if (!f.quiet && tty) fmt::print(stderr, "\n");
  if (!r) return fail("prepare", r.error());
  if (!r->finished) {
    fmt::print("stopped after {} shards; run the same command again to finish\n", r->shards);
    return 0;
  }
  fmt::print("prepared {} documents, {} tokens in {} shards ({}{}{:.1f} MB of text in {:.1f} s, {:.1f} MB/s) -> {}\n",
             r->documents, r->tokens, r->shards,
             r->skipped ? fmt::format("{} documents with invalid UTF-8 left out; ", r->skipped) : "",
             r->resumed_shards ? fmt::format("{} shards kept from an interrupted run; ", r->resumed_shards) : "",
             static_cast<double>(r->text_bytes) / 1e6, r->seconds,
             static_cast<double>(r->text_bytes) / 1e6 / std::max(1e-9, r->seconds), f.out);
  return 0;
}

int run_stats(const std::string& dir, const std::string& svg, bool json, bool verify) {
  auto ds = data::dataset::open(dir, verify);
  if (!ds) return fail("stats", ds.error());
  const auto s = data::stats_of(**ds);
  if (!svg.empty()) {
    std::ofstream out{svg};
    out << data::stats_svg(s, fmt::format("{}: {} documents, {} tokens", fs::path{dir}.filename().string(),
                                          s.documents, s.tokens));
    if (!out.flush()) return fail("stats", error{errc::io, fmt::format("cannot write {}", svg)});
  }
  if (json) {
    nlohmann::json j{{"dataset", dir},           {"tokenizer", (*ds)->tokenizer_id()}, {"vocab_size", (*ds)->vocab_size()},
                     {"documents", s.documents}, {"tokens", s.tokens},                 {"mean", s.mean}};
    for (const auto& [p, v] : s.percentiles) j["percentiles"][fmt::format("p{}", p)] = v;
    for (const auto& [t, share] : s.tokens_above) j["share_of_tokens_above"][fmt::format("{}K", t / 1024)] = share;
    for (const auto& b : s.histogram)
      j["histogram"].push_back({{"from", b.from}, {"documents", b.documents}, {"tokens", b.tokens}});
    fmt::print("{}\n", j.dump(2));
    return 0;
  }
  fmt::print("{}: {} documents, {} tokens (tokenizer {}, {} ids), mean length {:.1f}\n", dir, s.documents, s.tokens,
             (*ds)->tokenizer_id(), (*ds)->vocab_size(), s.mean);
  fmt::print("length percentiles:");
  for (const auto& [p, v] : s.percentiles) fmt::print("  p{} {}", p, v);
  fmt::print("\nshare of tokens in documents longer than:");
  for (const auto& [t, share] : s.tokens_above) fmt::print("  {}K {:.2f}%", t / 1024, 100 * share);
  fmt::print("\n{:>10} {:>10} {:>8} {:>8}\n", "from", "documents", "docs %", "tokens %");
  for (const auto& b : s.histogram)
    if (b.documents > 0)
      fmt::print("{:>10} {:>10} {:>7.2f}% {:>7.2f}%\n", b.from, b.documents,
                 100.0 * static_cast<double>(b.documents) / static_cast<double>(s.documents),
                 100.0 * static_cast<double>(b.tokens) / static_cast<double>(std::max<std::uint64_t>(1, s.tokens)));
  if (!svg.empty()) fmt::print("histogram written to {}\n", svg);
  return 0;
}

}  // namespace

void add_data_commands(CLI::App& root) {
  auto* data = root.add_subcommand("data", "Tokenizers and prepared token datasets");
  data->require_subcommand(1);

  auto* tt = data->add_subcommand("train-tokenizer", "Train a SentencePiece model on text files");
  auto topt = std::make_shared<data::sentencepiece_training>();
  auto tin = std::make_shared<std::vector<std::string>>();
  auto tout = std::make_shared<std::string>();
  tt->add_option("--input", *tin, "text files (one sentence per line)")->required()->check(CLI::ExistingFile);
  tt->add_option("--vocab-size", topt->vocab_size, "pieces in the model")->capture_default_str()->check(CLI::Range(8, 1 << 20));
  tt->add_option("--out", *tout, "model file to write (.model added when missing)")->required();
  tt->add_flag("--bpe", topt->bpe, "a BPE model instead of unigram");
  tt->add_option("--threads", topt->threads, "training threads (default: the machine's cores)");
  tt->add_option("--max-sentences", topt->max_sentences, "sentences sampled from the input")->capture_default_str();
  tt->callback([topt, tin, tout]() {
    for (const auto& i : *tin) topt->inputs.emplace_back(i);
    topt->out = *tout;
    fmt::print(stderr, "train-tokenizer: {} pieces from {} files...\n", topt->vocab_size, topt->inputs.size());
    auto m = data::train_sentencepiece(*topt);
    if (!m) std::exit(fail("train-tokenizer", m.error()));
    auto t = data::load_tokenizer(m->string());
    if (!t) std::exit(fail("train-tokenizer", t.error()));
    fmt::print("wrote {} ({}, {} pieces)\n", m->string(), (*t)->id(), (*t)->vocab_size());
  });

  auto* pr = data->add_subcommand("prepare", "Tokenize text into memory-mapped token shards");
  auto pf = std::make_shared<prepare_flags>();
  pr->add_option("--input", pf->inputs,
                 "JSON-lines files (.jsonl/.json), text files or directories of them (recursive), optionally .gz "
                 "or .zst")
      ->required();
  pr->add_option("--tokenizer", pf->tokenizer, "bytes, a SentencePiece .model, or a tokenizer.json (or its directory)")
      ->capture_default_str();
  pr->add_option("--out", pf->out, "dataset directory to write (an unfinished one is resumed)")->required();
  pr->add_option("--field", pf->field, "JSON lines: the field holding the text")->capture_default_str();
  pr->add_option("--glob", pf->glob, "files to take from directories: shell patterns, comma-separated (any)")
      ->capture_default_str();
  pr->add_option("--threads", pf->threads, "tokenizer threads (default: the machine's cores)");
  pr->add_option("--shard-mb", pf->shard_mb, "text per shard, MB")->capture_default_str()->check(positive_number);
  pr->add_flag("--quiet", pf->quiet, "no progress line");
  pr->add_flag("--skip-invalid-utf8", pf->skip_invalid,
               "leave out (and count) documents that are not valid UTF-8 instead of stopping at the first");
  pr->callback([pf]() {
    if (const int rc = run_prepare(*pf); rc != 0) std::exit(rc);
  });

  auto* st = data->add_subcommand("stats", "Length distribution of a prepared dataset");
  auto dir = std::make_shared<std::string>();
  auto svg = std::make_shared<std::string>();
  auto json = std::make_shared<bool>(false);
  auto verify = std::make_shared<bool>(false);
  st->add_option("DIR", *dir, "prepared dataset")->required();
  st->add_option("--svg", *svg, "also write the histogram as an SVG image");
  st->add_flag("--json", *json, "print JSON");
  st->add_flag("--verify", *verify, "check every shard's checksum first");
  st->callback([dir, svg, json, verify]() {
    if (const int rc = run_stats(*dir, *svg, *json, *verify); rc != 0) std::exit(rc);
  });
}

}  // namespace flexsp::app
