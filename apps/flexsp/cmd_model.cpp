// `flexsp export`, `flexsp import`, `flexsp generate`, `flexsp eval`: checkpoints to and from Hugging Face
// model directories, sampling text from a checkpoint, and its loss on held-out data.
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "flexsp/data/dataset.hpp"
#include "flexsp/actors/job_controller.hpp"
#include "flexsp/kernels/data.hpp"
#include "flexsp/kernels/hf_interchange.hpp"
#include "flexsp/kernels/model.hpp"

namespace flexsp::app {

namespace {

namespace fs = std::filesystem;

int fail_with(std::string_view what, const error& e) {
  fmt::print(stderr, "flexsp {}: {}\n", what, e.to_string());
  return 1;
}

/// A checkpoint given as a file, as a sharded checkpoint (a directory of shard files), or as a
/// job's checkpoint directory (its latest.json).
expected<fs::path> checkpoint_file(const std::string& given) {
  const fs::path p = given;
  std::error_code ec;
  if (!fs::is_directory(p, ec)) return p;
  std::ifstream in{p / "latest.json"};
  if (!in) {
    for (const auto& e : fs::directory_iterator{p, ec})
      if (e.path().filename().string().starts_with("shard-")) return p;
    return make_error(errc::not_found, "{} is a directory with neither latest.json nor shard files", given);
  }
  auto j = nlohmann::json::parse(in, nullptr, false);
  if (!j.is_object() || !j.contains("file") || !j["file"].is_string())
    return make_error(errc::invalid_argument, "{}/latest.json does not name a checkpoint file", given);
  return p / j["file"].get<std::string>();
}

expected<kernels::model> load_model(const std::string& given) {
  FLEXSP_TRY_ASSIGN(const auto file, checkpoint_file(given));
  FLEXSP_TRY_ASSIGN(const auto config, kernels::read_checkpoint_config(file));
  FLEXSP_TRY_ASSIGN(auto m, kernels::model::create(config, 0));
  FLEXSP_TRY(kernels::load_checkpoint(file, m));
  return m;
}

int run_export(const std::string& checkpoint, const std::string& out, const std::string& dtype) {
  auto m = load_model(checkpoint);
  if (!m) return fail_with("export", m.error());
  const auto type = dtype == "bf16" ? kernels::st_dtype::bf16 : kernels::st_dtype::f32;
  if (auto r = kernels::export_hugging_face(m->config(), m->host_params(), out, type); !r) return fail_with("export", r.error());
  fmt::print("exported a {} model ({} layers, d_model {}, {} parameters) after {} optimizer steps to {} "
             "(config.json, model.safetensors in {})\n",
             kernels::to_string(m->config().family), m->config().layers, m->config().d_model, m->size(), m->steps(),
             out, dtype);
  return 0;
}

int run_import(const std::string& dir, const std::string& out, std::uint64_t seed) {
  auto hf = kernels::import_hugging_face(dir);
  if (!hf) return fail_with("import", hf.error());
  auto m = kernels::model::create(hf->config, 0);
  if (!m) return fail_with("import", m.error());
  if (auto r = m->upload_params(hf->params); !r) return fail_with("import", r.error());
  std::error_code ec;
  fs::create_directories(out, ec);
  const fs::path file = fs::absolute(fs::path{out} / "step-000000.ckpt");
  if (auto r = kernels::save_checkpoint(file, *m); !r) return fail_with("import", r.error());
  if (auto r = actors::write_checkpoint_index(fs::absolute(out).string(), {0, file.string(), seed, 0}, "import"); !r)
    return fail_with("import", r.error());
  const auto& c = hf->config;
  fmt::print("imported a {} model ({} layers, d_model {}, {} heads, {} K/V heads, vocab {}, {} parameters) into {}\n"
             "train from it: the same shape in the job (model.family {}, ...) with checkpoint.dir {} and seed {}\n",
             kernels::to_string(c.family), c.layers, c.d_model, c.heads, c.kv(), c.vocab, m->size(), out,
             kernels::to_string(c.family), fs::absolute(out).string(), seed);
  return 0;
}

struct generate_flags {
  std::string checkpoint;
  std::string prompt = "The ";
  int tokens = 200;
  int top_k = 0;
  double temperature = 1.0;
  std::uint64_t seed = 1;
};

int run_generate(const generate_flags& f) {
  auto m = load_model(f.checkpoint);
  if (!m) return fail_with("generate", m.error());
  const auto& c = m->config();
  if (c.vocab < 256) return fail_with("generate", error{errc::invalid_argument, "the model's vocabulary is not bytes"});
  std::vector<std::int32_t> ids;
  for (unsigned char ch : f.prompt) ids.push_back(ch);
  if (ids.empty()) ids.push_back('\n');
  std::mt19937_64 rng{f.seed};
  std::fwrite(f.prompt.data(), 1, f.prompt.size(), stdout);
  for (int step = 0; step < f.tokens; ++step) {
    // The last max_positions tokens, all of them again (no KV cache: small models only).
    const auto window = std::min<std::size_t>(ids.size(), static_cast<std::size_t>(c.max_positions));
    std::vector<std::int32_t> seq(ids.end() - static_cast<std::ptrdiff_t>(window), ids.end());
    seq.push_back(0);  // a target for the last position; its loss is not used
    const std::vector<std::int64_t> lengths{static_cast<std::int64_t>(window)};
    auto layout = kernels::ulysses_layout::make(lengths, 1, 0, c.heads);
    if (!layout) return fail_with("generate", layout.error());
    auto in = kernels::shard_inputs(*layout, std::vector<std::vector<std::int32_t>>{seq});
    if (!in) return fail_with("generate", in.error());
    auto out = m->forward_backward(*in, lengths, 1.0f, {.backward = false, .keep_logits = true});
    if (!out) return fail_with("generate", out.error());
    const auto logits = out->logits.span().subspan(static_cast<std::size_t>((window - 1) * c.vocab),
                                                  static_cast<std::size_t>(c.vocab));
    std::int32_t next = 0;
    if (f.top_k == 1 || f.temperature <= 0) {
      next = static_cast<std::int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    } else {
      std::vector<std::pair<float, std::int32_t>> ranked;
      for (std::int64_t v = 0; v < c.vocab; ++v) ranked.emplace_back(logits[static_cast<std::size_t>(v)], v);
      std::sort(ranked.begin(), ranked.end(), std::greater<>{});
      if (f.top_k > 0 && static_cast<std::size_t>(f.top_k) < ranked.size()) ranked.resize(static_cast<std::size_t>(f.top_k));
      std::vector<double> weights;
      for (const auto& [l, _] : ranked) weights.push_back(std::exp((l - ranked.front().first) / f.temperature));
      std::discrete_distribution<std::size_t> pick{weights.begin(), weights.end()};
      next = ranked[pick(rng)].second;
    }
    ids.push_back(next);
    if (next < 256) std::fputc(next, stdout);
    std::fflush(stdout);
  }
  std::fputc('\n', stdout);
  return 0;
}

/// Mean token loss of a checkpoint on a prepared dataset (forward only): documents in order, cut
/// into pieces of the model's context, until `max_tokens`.
int run_eval(const std::string& checkpoint, const std::string& dir, std::uint64_t max_tokens, bool json) {
  auto m = load_model(checkpoint);
  if (!m) return fail_with("eval", m.error());
  auto ds = data::dataset::open(dir);
  if (!ds) return fail_with("eval", ds.error());
  const auto& c = m->config();
  if ((*ds)->vocab_size() > c.vocab)
    return fail_with("eval", error{errc::invalid_argument,
                                   fmt::format("{} holds ids of {} ({} ids); the model has {}", dir,
                                               (*ds)->tokenizer_id(), (*ds)->vocab_size(), c.vocab)});
  const auto ctx = static_cast<std::uint64_t>(c.max_positions);
  constexpr std::uint64_t kTokensPerPass = 8192;
  double loss = 0;
  std::uint64_t tokens = 0, sequences = 0;
  std::vector<std::vector<std::int32_t>> batch;
  std::vector<std::int64_t> lengths;
  std::uint64_t in_batch = 0;
  auto flush = [&]() -> expected<void> {
    if (batch.empty()) return {};
    FLEXSP_TRY_ASSIGN(auto layout, kernels::ulysses_layout::make(lengths, 1, 0, c.heads));
    FLEXSP_TRY_ASSIGN(auto in, kernels::shard_inputs(layout, batch));
    FLEXSP_TRY_ASSIGN(auto out, m->forward_backward(in, lengths, 1.0f, {.backward = false}));
    loss += out.loss_sum;
    batch.clear();
    lengths.clear();
    in_batch = 0;
    return {};
  };
  for (std::uint64_t d = 0; d < (*ds)->documents() && tokens < max_tokens; ++d) {
    const auto n = (*ds)->length(d);
    for (std::uint64_t b = 0; b + 1 < n && tokens < max_tokens; b += ctx) {
      std::vector<std::int32_t> ids;
      (*ds)->read(d, b, b + ctx + 1, ids);
      const auto len = ids.size() - 1;
      if (in_batch + len > kTokensPerPass)
        if (auto r = flush(); !r) return fail_with("eval", r.error());
      lengths.push_back(static_cast<std::int64_t>(len));
      batch.push_back(std::move(ids));
      in_batch += len;
      tokens += len;
      ++sequences;
    }
  }
  if (auto r = flush(); !r) return fail_with("eval", r.error());
  if (tokens == 0) return fail_with("eval", error{errc::invalid_argument, fmt::format("{} holds no sequence", dir)});
  const double mean = loss / static_cast<double>(tokens);
  if (json) {
    fmt::print("{}\n", nlohmann::json{{"checkpoint", checkpoint}, {"data", dir},       {"tokens", tokens},
                                      {"sequences", sequences},   {"loss", mean},      {"perplexity", std::exp(mean)},
                                      {"steps", m->steps()}}
                             .dump());
  } else {
    fmt::print("held-out loss {:.4f} (perplexity {:.1f}) over {} tokens in {} sequences of {} after {} optimizer "
               "steps\n",
               mean, std::exp(mean), tokens, sequences, dir, m->steps());
  }
  return 0;
}

}  // namespace

void add_model_commands(CLI::App& root) {
  auto* ex = root.add_subcommand("export", "Write a checkpoint as a Hugging Face model directory (config.json + "
                                           "model.safetensors; GPT2LMHeadModel or LlamaForCausalLM)");
  auto ex_ckpt = std::make_shared<std::string>(), ex_out = std::make_shared<std::string>();
  auto ex_dtype = std::make_shared<std::string>("f32");
  ex->add_option("CHECKPOINT", *ex_ckpt,
                 "checkpoint file, a sharded checkpoint (its directory of shard files), or a job's checkpoint "
                 "directory (its latest)")
      ->required();
  ex->add_option("OUT_DIR", *ex_out, "directory to write (created if missing)")->required();
  ex->add_option("--dtype", *ex_dtype, "tensor type: f32 or bf16")->check(CLI::IsMember({"f32", "bf16"}))->capture_default_str();
  ex->callback([=]() {
    if (const int rc = run_export(*ex_ckpt, *ex_out, *ex_dtype); rc != 0) std::exit(rc);
  });

  auto* im = root.add_subcommand("import", "Turn a Hugging Face model directory (GPT-2 or LLaMA) into a checkpoint "
                                           "directory a job can start from");
  auto im_dir = std::make_shared<std::string>(), im_out = std::make_shared<std::string>();
  auto im_seed = std::make_shared<std::uint64_t>(1);
  im->add_option("HF_DIR", *im_dir, "directory with config.json and model.safetensors")->required();
  im->add_option("CHECKPOINT_DIR", *im_out, "checkpoint directory to write (step 0 and latest.json)")->required();
  im->add_option("--seed", *im_seed, "the seed of the job that will train from it (its data order)")->capture_default_str();
  im->callback([=]() {
    if (const int rc = run_import(*im_dir, *im_out, *im_seed); rc != 0) std::exit(rc);
  });

  auto* ev = root.add_subcommand("eval", "Mean token loss of a checkpoint on a prepared dataset (held-out data)");
  auto ev_ckpt = std::make_shared<std::string>(), ev_data = std::make_shared<std::string>();
  auto ev_tokens = std::make_shared<std::uint64_t>(200000);
  auto ev_json = std::make_shared<bool>(false);
  ev->add_option("CHECKPOINT", *ev_ckpt, "checkpoint file, sharded checkpoint, or a job's checkpoint directory")->required();
  ev->add_option("--data", *ev_data, "prepared dataset (flexsp data prepare) to score")->required();
  ev->add_option("--max-tokens", *ev_tokens, "score at most this many tokens")->capture_default_str()->check(positive_number);
  ev->add_flag("--json", *ev_json, "print JSON");
  ev->callback([=]() {
    if (const int rc = run_eval(*ev_ckpt, *ev_data, *ev_tokens, *ev_json); rc != 0) std::exit(rc);
  });

  auto* gen = root.add_subcommand("generate", "Sample text from a checkpoint (byte-level models)");
  auto g = std::make_shared<generate_flags>();
  gen->add_option("CHECKPOINT", g->checkpoint, "checkpoint file, or a checkpoint directory (its latest)")->required();
  gen->add_option("--prompt", g->prompt, "text to continue")->capture_default_str();
  gen->add_option("--tokens", g->tokens, "tokens to generate")->check(CLI::Range(1, 100000))->capture_default_str();
  gen->add_option("--top-k", g->top_k, "sample among the k likeliest (1: greedy; 0: all)")->capture_default_str();
  gen->add_option("--temperature", g->temperature, "softmax temperature (0: greedy)")->capture_default_str();
  gen->add_option("--seed", g->seed, "sampling seed")->capture_default_str();
  gen->callback([g]() {
    if (const int rc = run_generate(*g); rc != 0) std::exit(rc);
  });
}

}  // namespace flexsp::app
