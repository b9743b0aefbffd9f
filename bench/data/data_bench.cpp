// Data pipeline benchmarks (label perf), on text this machine has (the packages' copyright files
// under /usr/share/doc, or generated text where there are none):
//   1. `prepare` throughput (MB/s of text) with a SentencePiece model against SentencePiece's own
//      `spm_encode` on the same lines and model, both on one thread, in one run;
//   2. building a global batch from the prepared shards (what the scheduler does every step)
//      against the step time of the default job trained on those shards, in one run.
//
//   build/bench/flexsp_bench_data [--quick]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <sys/wait.h>
#include <unistd.h>

#include "flexsp/actors/data_source.hpp"
#include "flexsp/actors/embedded.hpp"
#include "flexsp/core/log.hpp"
#include "flexsp/data/dataset.hpp"

namespace {

using namespace flexsp;
namespace fs = std::filesystem;
using clock_type = std::chrono::steady_clock;

double seconds_since(clock_type::time_point t) {
  return std::chrono::duration<double>(clock_type::now() - t).count();
}

/// Lines of text: the copyright files (up to `limit` bytes), else generated prose.
std::vector<std::string> corpus_lines(std::size_t limit) {
  std::vector<fs::path> files;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator{"/usr/share/doc", fs::directory_options::skip_permission_denied, ec};
       !ec && it != fs::recursive_directory_iterator{}; it.increment(ec))
    if (it->path().filename() == "copyright" && it->is_regular_file(ec)) files.push_back(it->path());
  std::sort(files.begin(), files.end());
  std::vector<std::string> lines;
  std::size_t bytes = 0;
  for (const auto& f : files) {
    std::ifstream in{f};
    std::string line;
    while (bytes < limit && std::getline(in, line)) {
      if (line.empty()) continue;
      bytes += line.size();
      lines.push_back(std::move(line));
    }
  }
  if (lines.empty()) {
    std::mt19937 rng{1};
    static const char* words[] = {"the", "software", "is", "provided", "as", "is", "without", "warranty", "of", "any",
                                  "kind", "copyright", "holders", "license", "permission", "granted"};
    while (bytes < limit) {
      std::string l;
      for (int w = 0; w < 12; ++w) l += std::string{words[rng() % std::size(words)]} + " ";
      bytes += l.size();
      lines.push_back(std::move(l));
    }
  }
  return lines;
}

/// Wall seconds of `spm_encode` over `input` on one thread, or a negative value when it is missing.
double time_spm_encode(const fs::path& model, const fs::path& input) {
  if (std::system("command -v spm_encode > /dev/null 2>&1") != 0) return -1;
  const auto cmd = fmt::format("spm_encode --model={} --output_format=id --input={} --output=/dev/null", model.string(),
                               input.string());
  const auto t0 = clock_type::now();
  if (std::system(cmd.c_str()) != 0) return -1;
  return seconds_since(t0);
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) {
      quick = true;
    } else {
      fmt::print(stderr, "usage: {} [--quick]\n", argv[0]);
      return 2;
    }
  }
  (void)log::configure("warn");
  const auto dir = fs::temp_directory_path() / fmt::format("flexsp-bench-data-{}", ::getpid());
  fs::remove_all(dir);
  fs::create_directories(dir);
  int rc = 0;

  // 1. prepare against spm_encode, one thread each, the same lines and model.
  const auto lines = corpus_lines(quick ? (4u << 20) : (24u << 20));
  std::uint64_t text_bytes = 0;
  {
    std::ofstream txt{dir / "corpus.txt"}, jsonl{dir / "corpus.jsonl"};
    for (const auto& l : lines) {
      txt << l << '\n';
      jsonl << nlohmann::json{{"text", l}}.dump() << '\n';
      text_bytes += l.size();
    }
  }
  data::sentencepiece_training t;
  t.inputs = {dir / "corpus.txt"};
  t.vocab_size = 2048;
  t.out = dir / "tok";
  t.max_sentences = 200000;
  auto model = data::train_sentencepiece(t);
  if (!model) {
    fmt::print(stderr, "train_sentencepiece: {}\n", model.error().to_string());
    return 1;
  }
  auto tok = data::load_tokenizer(model->string());
  if (!tok) return 1;
  fmt::print("## prepare vs spm_encode: {} lines, {:.1f} MB of text, SentencePiece unigram 2048, one thread each\n",
             lines.size(), static_cast<double>(text_bytes) / 1e6);
  fmt::print("| run | tool | seconds | MB/s | ours / spm_encode |\n|---|---|---|---|---|\n");
  const int rounds = quick ? 1 : 3;
  double ours_best = 1e30, spm_best = 1e30;
  for (int r = 0; r < rounds; ++r) {
    data::prepare_options o;
    o.inputs = {dir / "corpus.jsonl"};
    o.out = dir / fmt::format("prepared-{}", r);
    o.threads = 1;
    auto p = data::prepare(**tok, o);
    if (!p) {
      fmt::print(stderr, "prepare: {}\n", p.error().to_string());
      return 1;
    }
    const double spm = time_spm_encode(*model, dir / "corpus.txt");
    ours_best = std::min(ours_best, p->seconds);
    if (spm > 0) spm_best = std::min(spm_best, spm);
    const double mb = static_cast<double>(text_bytes) / 1e6;
    fmt::print("| {} | flexsp data prepare | {:.2f} | {:.1f} | {} |\n", r + 1, p->seconds, mb / p->seconds,
               spm > 0 ? fmt::format("{:.2f}x", spm / p->seconds) : std::string{"-"});
    if (spm > 0) fmt::print("| {} | spm_encode | {:.2f} | {:.1f} | |\n", r + 1, spm, mb / spm);
  }
  const double mb = static_cast<double>(text_bytes) / 1e6;
  nlohmann::json j1{{"bench", "prepare"},
                    {"text_mb", mb},
                    {"ours_mb_per_s", mb / ours_best},
                    {"spm_encode_mb_per_s", spm_best < 1e30 ? mb / spm_best : -1.0},
                    {"ratio", spm_best < 1e30 ? spm_best / ours_best : -1.0}};
  fmt::print("{}\n", j1.dump());

  // 2. building a batch vs a step of the default job, on whole documents: the copyright files
  //    (each one document; a long tail of lengths), else the lines above.
  std::string docs = (dir / "prepared-0").string();
  {
    data::prepare_options o;
    o.inputs = {"/usr/share/doc"};
    o.glob = "copyright";
    o.out = dir / "documents";
    o.skip_invalid_utf8 = true;
    if (auto p = data::prepare(**tok, o); p && p->documents > 100) docs = o.out.string();
  }
  actors::job_spec spec;
  spec.name = "data-bench";
  spec.steps = quick ? 4 : 10;
  spec.model.vocab = 2048;
  spec.prepared.push_back({docs, 1.0});
  spec.calibrate = false;
  spec.checkpoints_off = true;
  auto source = actors::batch_source::create(spec);
  if (!source) {
    fmt::print(stderr, "batch_source: {}\n", source.error().to_string());
    return 1;
  }
  const int batches = quick ? 50 : 200;
  const auto t0 = clock_type::now();
  std::uint64_t tokens = 0;
  for (int i = 0; i < batches; ++i) tokens += (*source)->batch(static_cast<std::uint64_t>(i)).total_tokens();
  const double batch_ms = 1000 * seconds_since(t0) / batches;
  auto cluster = actors::embedded_cluster::start(1, 8);
  if (!cluster) return 1;
  double step_ms = 0;
  std::uint64_t steps = 0;
  auto job = (*cluster)->jobs().submit(spec, [&](const actors::step_metrics& m) {
    step_ms += m.step_ms;
    ++steps;
  });
  if (!job) return 1;
  const auto st = (*job)->wait();
  if (st.state != actors::job_state::succeeded || steps == 0) rc = 1;
  step_ms /= static_cast<double>(std::max<std::uint64_t>(1, steps));
  fmt::print("## batch building vs step: default job (GPT 2x64, batch 64, max_seq 1024) on 8 CPU devices, {}\n", docs);
  fmt::print("| batch from shards, ms | tokens per batch | step, ms | batch / step |\n|---|---|---|---|\n");
  fmt::print("| {:.3f} | {} | {:.0f} | {:.3f}% |\n", batch_ms, tokens / static_cast<std::uint64_t>(batches), step_ms,
             100 * batch_ms / std::max(1e-9, step_ms));
  fmt::print("{}\n", nlohmann::json{{"bench", "batch_loading"},
                                    {"batch_ms", batch_ms},
                                    {"step_ms", step_ms},
                                    {"share", batch_ms / std::max(1e-9, step_ms)}}
                         .dump());
  fs::remove_all(dir);
  return rc;
}
