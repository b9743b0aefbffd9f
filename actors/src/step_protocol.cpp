#include "flexsp/actors/step_protocol.hpp"

#include <algorithm>

namespace flexsp::actors {

std::uint64_t training_batch::total_tokens() const {
  std::uint64_t n = 0;
  for (auto l : lengths) n += static_cast<std::uint64_t>(l);
  return n;
}

shard_assignment assign_shards(const std::vector<std::uint32_t>& world, sharding_mode mode, std::uint32_t group_size,
                               std::uint32_t per_node) {
  shard_assignment a;
  if (mode == sharding_mode::replicate || world.empty()) return a;
  const auto n = static_cast<std::uint32_t>(world.size());
  std::uint32_t g = mode == sharding_mode::zero3 ? n : group_size > 0 ? group_size : std::max<std::uint32_t>(1, per_node);
  g = std::min(g, n);
  while (n % g != 0) --g;
  a.group_size = static_cast<int>(g);
  for (std::uint32_t i = 0; i < n; ++i) {
    const auto first = i / g * g;
    std::vector<std::uint32_t> group{world.begin() + first, world.begin() + first + g};
    std::vector<std::uint32_t> replicas;
    for (std::uint32_t k = i % g; k < n; k += g) replicas.push_back(world[k]);
    a.group[world[i]] = std::move(group);
    a.replicas[world[i]] = std::move(replicas);
    a.shard[world[i]] = {static_cast<int>(g), static_cast<int>(i % g)};
  }
  return a;
}

std::vector<std::uint32_t> shard_sources(const std::map<std::uint32_t, std::pair<int, int>>& held) {
  std::map<int, std::vector<std::optional<std::uint32_t>>> by_count;
  std::map<int, int> copies;
  for (const auto& [d, s] : held) {
    const auto [count, index] = s;
    if (count <= 0 || index < 0 || index >= count) continue;
    auto& slots = by_count[count];
    slots.resize(static_cast<std::size_t>(count));
    if (!slots[static_cast<std::size_t>(index)]) slots[static_cast<std::size_t>(index)] = d;
    ++copies[count];
  }
  std::vector<std::uint32_t> best;
  int best_copies = -1;
  for (const auto& [count, slots] : by_count) {
    if (std::any_of(slots.begin(), slots.end(), [](const auto& s) { return !s.has_value(); })) continue;
    if (copies[count] <= best_copies) continue;
    best_copies = copies[count];
    best.clear();
    for (const auto& s : slots) best.push_back(*s);
  }
  return best;
}

expected<std::map<std::uint32_t, step_plan>> slice_plan(const scheduler::plan& p, const std::vector<std::uint32_t>& world,
                                                        const training_batch& batch, const step_header& h) {
  if (!std::is_sorted(world.begin(), world.end()))
    return make_error(errc::invalid_argument, "world devices must be in ascending order");
  std::map<std::uint32_t, step_plan> out;
  for (auto d : world) {
    auto& sp = out[d];
    sp.job_id = h.job_id;
    sp.step = h.step;
    sp.epoch = h.epoch;
    sp.attempt = h.attempt;
    sp.world = world;
    sp.global_tokens = batch.total_tokens();
    sp.sync_source = h.sync_source;
    sp.calibrate = h.calibrate;
    sp.comm_epoch = h.comm_epoch;
    sp.micro_batches.resize(p.micro_batches.size());
  }
  for (std::size_t m = 0; m < p.micro_batches.size(); ++m) {
    for (const auto& g : p.micro_batches[m].groups) {
      if (g.sequences.empty()) continue;
      device_micro_batch part;
      for (int d : g.devices) {
        if (d < 0 || static_cast<std::size_t>(d) >= world.size())
          return make_error(errc::invalid_argument, "micro-batch {} names device {} of a world of {}", m, d, world.size());
        part.group.push_back(world[static_cast<std::size_t>(d)]);
      }
      std::sort(part.group.begin(), part.group.end());
      for (int s : g.sequences) {
        if (s < 0 || static_cast<std::size_t>(s) >= batch.lengths.size())
          return make_error(errc::invalid_argument, "micro-batch {} names sequence {} of a batch of {}", m, s,
                            batch.lengths.size());
        const auto& ids = batch.tokens[static_cast<std::size_t>(s)];
        if (static_cast<std::int64_t>(ids.size()) != batch.lengths[static_cast<std::size_t>(s)] + 1)
          return make_error(errc::invalid_argument, "sequence {} has {} ids for length {}", s, ids.size(),
                            batch.lengths[static_cast<std::size_t>(s)]);
        part.lengths.push_back(static_cast<std::uint32_t>(batch.lengths[static_cast<std::size_t>(s)]));
        part.tokens.insert(part.tokens.end(), ids.begin(), ids.end());
      }
      part.predicted_ms = g.predicted_ms;
      for (auto d : part.group) {
        auto& slot = out[d].micro_batches[m];
        if (!slot.group.empty())
          return make_error(errc::invalid_argument, "device {} is in two groups of micro-batch {}", d, m);
        slot = part;
      }
    }
  }
  return out;
}

void commit_tracker::start(std::uint64_t step, std::uint64_t attempt, std::set<std::uint32_t> members) {
  active_ = true;
  step_ = step;
  attempt_ = attempt;
  members_ = std::move(members);
  reports_.clear();
}

commit_tracker::outcome commit_tracker::on_ready(const grad_ready& r) {
  if (!active_ || r.step != step_ || r.attempt != attempt_ || !members_.count(r.device) || reports_.count(r.device))
    return outcome::ignored;
  reports_.emplace(r.device, r);
  if (reports_.begin()->second.checksum != r.checksum) return outcome::mismatch;
  return reports_.size() == members_.size() ? outcome::commit : outcome::pending;
}

std::string commit_tracker::mismatch_detail() const {
  std::string s;
  for (const auto& [d, r] : reports_) s += fmt::format("{}device {}: {:016x}", s.empty() ? "" : ", ", d, r.checksum);
  return s;
}

}  // namespace flexsp::actors
