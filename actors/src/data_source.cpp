#include "flexsp/actors/data_source.hpp"

#include <algorithm>
#include <filesystem>

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

expected<std::unique_ptr<batch_source>> batch_source::create(const job_spec& spec) {
  std::unique_ptr<batch_source> s{new batch_source{}};
  s->spec_ = spec;
  const std::size_t window = static_cast<std::size_t>(spec.model.max_seq) + 1;
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
