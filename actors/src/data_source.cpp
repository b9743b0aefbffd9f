#include "flexsp/actors/data_source.hpp"

#include <algorithm>
#include <filesystem>

#include <cmath>
#include <random>

#include <fmt/format.h>

#include "flexsp/data/dataset.hpp"
#include "flexsp/kernels/data.hpp"
#include "flexsp/scheduler/synthetic.hpp"

namespace flexsp::actors {

std::string_view batch_source::builtin_text() {
  return "The harbour town woke slowly. Fishing boats came in with the tide, and the gulls followed them, "
         "crying over the nets. On the quay an old woman sold bread from a cart, and the smell of it drifted "
         "up the narrow streets where children ran to school. The baker had risen at four, as he did every "
         "day, and by seven his shelves were empty.\n"
         "In the hills above the town the farmers cut hay. The summer had been dry, and the grass was short, "
         "but the weather held, and the wagons went down the lanes loaded high. At noon the workers sat in the "
         "shade of the hedges and ate cheese and apples and drank cold water from the spring.\n"
         "The river ran brown after the storm. It carried branches and leaves and once a whole tree, which "
         "turned slowly in the current and caught against the bridge. The men of the town came out with ropes "
         "and hooks and worked for an hour to free it, while the children watched from the bank.\n"
         "At the market on Saturday there were plums and pears, eggs in baskets, and cloth from the city. The "
         "traders called out their prices, and the buyers argued, and in the end everyone went home with "
         "something. The clock on the church struck twelve, and the square emptied as quickly as it had filled.\n"
         "In the evening the lighthouse keeper climbed the stairs to light the lamp. There were one hundred and "
         "twelve steps, and he knew each of them. From the top he could see the whole coast, the lights of the "
         "town, the dark line of the hills, and far out at sea the lamps of the boats that were still working.\n"
         "The garden behind the school had beans and peas and rows of potatoes. The teacher showed the children "
         "how to weed and how to water in the cool of the evening, and in the autumn they dug the potatoes and "
         "carried them in sacks to the kitchen, where the cook made soup for everyone.\n";
}

/// One prepared dataset as a stream of training sequences: its pieces (a document, or a
/// max_seq-token piece of one) in an order shuffled per epoch.
struct batch_source::prepared {
  std::shared_ptr<data::dataset> data;
  struct piece {
    std::uint64_t doc;
    std::uint64_t begin;  // first id; the piece holds ids [begin, begin + length + 1)
  };
  std::vector<piece> pieces;
  std::uint64_t seed = 0;
  std::uint64_t split = 0, dropped = 0;  // documents cut into pieces, left out
  mutable std::mutex mutex;
  mutable std::uint64_t epoch = ~std::uint64_t{0};
  mutable std::vector<std::uint32_t> order;  // the epoch's permutation of pieces (64-bit when needed)
  mutable std::vector<std::uint64_t> order64;

  /// The piece at position `at` of the stream.
  const piece& at(std::uint64_t at) const {
    const std::uint64_t n = pieces.size();
    const std::uint64_t e = at / n;
    std::lock_guard lock{mutex};
    if (e != epoch) {
      std::mt19937_64 rng{seed ^ (0x9E3779B97F4A7C15ull * (e + 1))};
      if (n <= 0xffffffffull) {
        order.resize(n);
        for (std::uint64_t i = 0; i < n; ++i) order[i] = static_cast<std::uint32_t>(i);
        for (std::uint64_t i = n; i > 1; --i) std::swap(order[i - 1], order[rng() % i]);
      } else {
        order64.resize(n);
        for (std::uint64_t i = 0; i < n; ++i) order64[i] = i;
        for (std::uint64_t i = n; i > 1; --i) std::swap(order64[i - 1], order64[rng() % i]);
      }
      epoch = e;
    }
    return pieces[n <= 0xffffffffull ? order[at % n] : order64[at % n]];
  }
};

batch_source::~batch_source() = default;

namespace {
/// Opens a prepared dataset of the job, refusing one whose ids do not fit model.vocab.
expected<std::shared_ptr<data::dataset>> open_prepared(const job_spec::prepared_data& p, const job_spec& spec) {
  auto ds = data::dataset::open(p.dir);
  if (!ds) return unexpected<error>{error{ds.error()}.with_context("data.prepared")};
  if ((*ds)->vocab_size() > spec.model.vocab)
    return make_error(errc::invalid_argument,
                      "data.prepared: {} was tokenized with {} ({} ids), more than model.vocab ({})", p.dir,
                      (*ds)->tokenizer_id(), (*ds)->vocab_size(), spec.model.vocab);
  return ds;
}
}  // namespace

expected<void> batch_source::check(const job_spec& spec) {
  for (const auto& p : spec.prepared) FLEXSP_TRY(open_prepared(p, spec));
  return {};
}

std::string batch_source::describe() const { return description_; }

expected<std::unique_ptr<batch_source>> batch_source::create(const job_spec& spec) {
  std::unique_ptr<batch_source> s{new batch_source{}};
  s->spec_ = spec;
  const std::size_t window = static_cast<std::size_t>(spec.model.max_seq) + 1;
  if (!spec.prepared.empty()) {
    const std::uint64_t max_seq = spec.model.max_seq;
    double total_weight = 0;
    for (const auto& p : spec.prepared) total_weight += p.weight;
    std::vector<std::string> parts;
    for (std::size_t i = 0; i < spec.prepared.size(); ++i) {
      const auto& p = spec.prepared[i];
      FLEXSP_TRY_ASSIGN(auto ds, open_prepared(p, spec));
      auto src = std::make_shared<prepared>();
      src->data = ds;
      src->seed = spec.seed * 0x2545F4914F6CDD1Dull + i;
      for (std::uint64_t d = 0; d < ds->documents(); ++d) {
        const auto n = ds->length(d);
        if (n < 2) continue;  // a sequence needs an input and a target
        if (n - 1 <= max_seq) {
          src->pieces.push_back({d, 0});
        } else if (spec.drop_long_documents) {
          ++src->dropped;
        } else {
          ++src->split;
          for (std::uint64_t b = 0; b + 1 < n; b += max_seq) src->pieces.push_back({d, b});
        }
      }
      if (src->pieces.empty())
        return make_error(errc::invalid_argument, "data.prepared: {} holds no document of at least 2 tokens{}", p.dir,
                          src->dropped ? fmt::format(" within model.max_seq ({} dropped)", src->dropped) : "");
      parts.push_back(fmt::format("{} ({} documents, {} tokens, {}; {} sequences, {} documents longer than max_seq "
                                  "{} {})",
                                  p.dir, ds->documents(), ds->tokens(), ds->tokenizer_id(),
                                  src->pieces.size(), spec.drop_long_documents ? src->dropped : src->split,
                                  max_seq, spec.drop_long_documents ? "dropped" : "split into pieces"));
      s->prepared_.push_back(std::move(src));
    }
    // Each dataset's share of a batch: its weight, rounded by largest remainder.
    const auto n = spec.batch_size;
    std::vector<std::pair<double, std::size_t>> rest;
    std::uint32_t given = 0;
    for (std::size_t i = 0; i < spec.prepared.size(); ++i) {
      const double exact = n * spec.prepared[i].weight / total_weight;
      s->shares_.push_back(static_cast<std::uint32_t>(std::floor(exact)));
      given += s->shares_.back();
      rest.emplace_back(exact - std::floor(exact), i);
    }
    std::stable_sort(rest.begin(), rest.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
    for (std::size_t k = 0; given < n; ++k, ++given) ++s->shares_[rest[k % rest.size()].second];
    s->description_ = fmt::format("data: {}", fmt::join(parts, "; "));
    if (s->prepared_.size() > 1) s->description_ += fmt::format("; sequences per batch {}", fmt::join(s->shares_, "/"));
    return s;
  }
  if (spec.data_path.empty()) {
    kernels::byte_tokenizer tok;
    auto base = tok.encode(builtin_text());
    while (s->corpus_.size() < 2 * window + 1) s->corpus_.insert(s->corpus_.end(), base.begin(), base.end());
    return s;
  }
  std::vector<std::string> docs;
  const std::filesystem::path path{spec.data_path};
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    auto d = kernels::load_text_documents(path);
    if (!d) return unexpected<error>{error{d.error()}.with_context("data.path")};
    docs = std::move(*d);
  } else {
    auto d = kernels::load_jsonl_documents(path);
    if (!d) return unexpected<error>{error{d.error()}.with_context("data.path")};
    docs = std::move(*d);
  }
  kernels::byte_tokenizer tok;
  for (const auto& doc : docs) {
    auto ids = tok.encode(doc);
    if (ids.size() < 2) continue;
    if (ids.size() > window) ids.resize(window);
    s->documents_.push_back(std::move(ids));
  }
  if (s->documents_.empty())
    return make_error(errc::invalid_argument, "data.path: {} holds no document of at least 2 bytes", spec.data_path);
  return s;
}

training_batch batch_source::batch(std::uint64_t index) const {
  training_batch b;
  b.index = index;
  const std::size_t n = spec_.batch_size;
  if (!prepared_.empty()) {
    const std::uint64_t max_seq = spec_.model.max_seq;
    for (std::size_t i = 0; i < prepared_.size(); ++i) {
      const auto& src = *prepared_[i];
      for (std::uint32_t k = 0; k < shares_[i]; ++k) {
        const auto& p = src.at(index * shares_[i] + k);
        std::vector<std::int32_t> ids;
        src.data->read(p.doc, p.begin, p.begin + max_seq + 1, ids);
        b.lengths.push_back(static_cast<std::int64_t>(ids.size()) - 1);
        b.tokens.push_back(std::move(ids));
      }
    }
    return b;
  }
  if (!documents_.empty()) {
    for (std::size_t i = 0; i < n; ++i) {
      const auto& doc = documents_[(index * n + i) % documents_.size()];
      b.lengths.push_back(static_cast<std::int64_t>(doc.size()) - 1);
      b.tokens.push_back(doc);
    }
    return b;
  }
  const std::uint64_t seed = spec_.seed * 0x9E3779B97F4A7C15ull + index;
  auto raw = scheduler::synthetic_lengths(n, seed, spec_.synthetic).value();
  const double scale = static_cast<double>(spec_.model.max_seq) / 4096.0;
  for (auto l : raw)
    b.lengths.push_back(std::clamp<std::int64_t>(static_cast<std::int64_t>(static_cast<double>(l) * scale + 0.5), 8,
                                                 spec_.model.max_seq));
  b.tokens = kernels::sample_sequences(corpus_, b.lengths, seed ^ 0x5bd1e995ull).value();
  return b;
}

}  // namespace flexsp::actors
