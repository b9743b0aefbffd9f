#include "flexsp/kernels/ulysses.hpp"

#include <algorithm>

#include "flexsp/core/check.hpp"

namespace flexsp::kernels {
namespace {

// Calls fn(sequence, position in the sequence) for rank r's tokens, in r's local order.
template <class F>
void for_each_local_token(const ulysses_layout& l, int r, F&& fn) {
  for (std::size_t s = 0; s < l.lengths().size(); ++s) {
    const auto sh = l.token_share(s, r);
    for (std::int64_t i = 0; i < sh.size; ++i) fn(s, sh.begin + i);
  }
}

// Floats exchanged with each peer r by the head all-to-alls: `tokens_side[r]` is this rank's
// tokens x r's heads, `heads_side[r]` is r's tokens x this rank's heads. scatter_heads sends
// tokens_side and receives heads_side; gather_heads does the reverse.
struct exchange_counts {
  std::vector<std::int64_t> tokens_side, heads_side;
  std::int64_t tokens_total = 0, heads_total = 0;
};

exchange_counts head_exchange_counts(const ulysses_layout& l, std::int64_t C, std::int64_t Dh) {
  exchange_counts c;
  const auto d = static_cast<std::size_t>(l.degree());
  c.tokens_side.resize(d);
  c.heads_side.resize(d);
  const std::int64_t hm = l.head_share(l.rank()).size;
  for (std::size_t r = 0; r < d; ++r) {
    c.tokens_side[r] = l.local_tokens() * C * l.head_share(static_cast<int>(r)).size * Dh;
    c.heads_side[r] = l.local_tokens(static_cast<int>(r)) * C * hm * Dh;
    c.tokens_total += c.tokens_side[r];
    c.heads_total += c.heads_side[r];
  }
  return c;
}

}  // namespace

share split_evenly(std::int64_t total, int parts, int part) noexcept {
  const std::int64_t base = total / parts, rem = total % parts;
  return {part * base + std::min<std::int64_t>(part, rem), base + (part < rem ? 1 : 0)};
}

expected<ulysses_layout> ulysses_layout::make(std::vector<std::int64_t> lengths, int degree, int rank,
                                              std::int64_t heads) {
  if (degree < 1 || rank < 0 || rank >= degree)
    return make_error(errc::invalid_argument, "ulysses layout: rank {} of degree {}", rank, degree);
  if (heads < 1) return make_error(errc::invalid_argument, "ulysses layout: {} heads", heads);
  ulysses_layout l;
  l.degree_ = degree;
  l.rank_ = rank;
  l.heads_ = heads;
  l.cu_seqlens_.assign(1, 0);
  l.local_tokens_.assign(static_cast<std::size_t>(degree), 0);
  for (std::size_t s = 0; s < lengths.size(); ++s) {
    if (lengths[s] < 0) return make_error(errc::invalid_argument, "ulysses layout: length {} of sequence {}", lengths[s], s);
    l.cu_seqlens_.push_back(l.cu_seqlens_.back() + lengths[s]);
    for (int r = 0; r < degree; ++r) l.local_tokens_[static_cast<std::size_t>(r)] += split_evenly(lengths[s], degree, r).size;
  }
  l.lengths_ = std::move(lengths);
  return l;
}

std::vector<std::int32_t> ulysses_layout::local_positions() const {
  std::vector<std::int32_t> pos;
  pos.reserve(static_cast<std::size_t>(local_tokens()));
  for_each_local_token(*this, rank_, [&pos](std::size_t, std::int64_t p) { pos.push_back(static_cast<std::int32_t>(p)); });
  return pos;
}

std::vector<std::int64_t> ulysses_layout::local_to_global() const {
  std::vector<std::int64_t> idx;
  idx.reserve(static_cast<std::size_t>(local_tokens()));
  for_each_local_token(*this, rank_, [this, &idx](std::size_t s, std::int64_t p) { idx.push_back(cu_seqlens_[s] + p); });
  return idx;
}

ulysses_layout::exchange_plan ulysses_layout::scatter_plan(std::int64_t C, std::int64_t Dh) const {
  exchange_plan plan;
  const auto counts = head_exchange_counts(*this, C, Dh);
  plan.send_counts = counts.tokens_side;
  plan.recv_counts = counts.heads_side;
  plan.send_total = counts.tokens_total;
  plan.recv_total = counts.heads_total;
  const std::int64_t H = heads_, n_me = local_tokens(), N = total_tokens(), hm = head_share(rank_).size;
  // Pack: for each head holder r, rows (token, component) of my tokens, r's heads.
  std::int64_t out = 0;
  for (int r = 0; r < degree_; ++r) {
    const auto hs = head_share(r);
    if (n_me * C > 0 && hs.size > 0)
      plan.pack.push_back({hs.begin * Dh, out, H * Dh, hs.size * Dh, n_me * C, hs.size * Dh});
    out += n_me * C * hs.size * Dh;
  }
  // Unpack: each token holder r's share of each sequence is a run of consecutive tokens; its
  // component c lands at [c, token, my heads].
  std::int64_t in = 0;
  for (int r = 0; r < degree_; ++r)
    for (std::size_t s = 0; s < lengths_.size(); ++s) {
      const auto sh = token_share(s, r);
      if (sh.size == 0) continue;
      const std::int64_t g0 = cu_seqlens_[s] + sh.begin;
      if (hm > 0)
        for (std::int64_t c = 0; c < C; ++c)
          plan.unpack.push_back({in + c * hm * Dh, (c * N + g0) * hm * Dh, C * hm * Dh, hm * Dh, sh.size, hm * Dh});
      in += sh.size * C * hm * Dh;
    }
  return plan;
}

ulysses_layout::exchange_plan ulysses_layout::gather_plan(std::int64_t C, std::int64_t Dh) const {
  // The exact reverse of scatter_plan: its unpack packs and its pack unpacks.
  exchange_plan plan = scatter_plan(C, Dh);
  std::swap(plan.pack, plan.unpack);
  std::swap(plan.send_counts, plan.recv_counts);
  std::swap(plan.send_total, plan.recv_total);
  for (auto* list : {&plan.pack, &plan.unpack})
    for (auto& b : *list) {
      std::swap(b.src_offset, b.dst_offset);
      std::swap(b.src_pitch, b.dst_pitch);
    }
  return plan;
}

namespace {

// Runs one exchange on host buffers: pack, all-to-all-v, unpack.
expected<void> exchange_on_host(communicator& group, const ulysses_layout::exchange_plan& plan,
                                std::span<const float> src, std::span<float> dst, std::vector<float>& scratch) {
  scratch.resize(static_cast<std::size_t>(plan.send_total + plan.recv_total));
  float* send = scratch.data();
  float* recv = scratch.data() + plan.send_total;
  copy_blocks(plan.pack, src.data(), send);
  FLEXSP_TRY(group.all_to_all_v({send, static_cast<std::size_t>(plan.send_total)}, plan.send_counts,
                                {recv, static_cast<std::size_t>(plan.recv_total)}, plan.recv_counts));
  copy_blocks(plan.unpack, recv, dst.data());
  return {};
}

}  // namespace

expected<void> ulysses_layout::scatter_heads(communicator& group, std::span<const float> src, std::span<float> dst,
                                             std::int64_t C, std::int64_t Dh, std::vector<float>& scratch) const {
  FLEXSP_EXPECTS(group.size() == degree_ && group.rank() == rank_, "group {}/{} vs layout {}/{}", group.rank(),
                 group.size(), rank_, degree_);
  FLEXSP_EXPECTS(static_cast<std::int64_t>(src.size()) == local_tokens() * C * heads_ * Dh &&
                     static_cast<std::int64_t>(dst.size()) == C * total_tokens() * head_share(rank_).size * Dh,
                 "scatter_heads: src {} dst {}", src.size(), dst.size());
  return exchange_on_host(group, scatter_plan(C, Dh), src, dst, scratch);
}

expected<void> ulysses_layout::gather_heads(communicator& group, std::span<const float> src, std::span<float> dst,
                                            std::int64_t C, std::int64_t Dh, std::vector<float>& scratch) const {
  FLEXSP_EXPECTS(group.size() == degree_ && group.rank() == rank_, "group {}/{} vs layout {}/{}", group.rank(),
                 group.size(), rank_, degree_);
  FLEXSP_EXPECTS(static_cast<std::int64_t>(src.size()) == C * total_tokens() * head_share(rank_).size * Dh &&
                     static_cast<std::int64_t>(dst.size()) == local_tokens() * C * heads_ * Dh,
                 "gather_heads: src {} dst {}", src.size(), dst.size());
  return exchange_on_host(group, gather_plan(C, Dh), src, dst, scratch);
}

expected<local_inputs> shard_inputs(const ulysses_layout& layout, std::span<const std::vector<std::int32_t>> sequences) {
  if (sequences.size() != layout.lengths().size())
    return make_error(errc::invalid_argument, "shard_inputs: {} sequences for a layout of {}", sequences.size(),
                      layout.lengths().size());
  local_inputs li;
  const auto n = static_cast<std::size_t>(layout.local_tokens());
  li.tokens.reserve(n);
  li.targets.reserve(n);
  for (std::size_t s = 0; s < sequences.size(); ++s) {
    const auto L = layout.lengths()[s];
    if (static_cast<std::int64_t>(sequences[s].size()) != L + 1)
      return make_error(errc::invalid_argument, "shard_inputs: sequence {} has {} ids, expected length + 1 = {}", s,
                        sequences[s].size(), L + 1);
    const auto sh = layout.token_share(s, layout.rank());
    for (std::int64_t i = sh.begin; i < sh.begin + sh.size; ++i) {
      li.tokens.push_back(sequences[s][static_cast<std::size_t>(i)]);
      li.targets.push_back(sequences[s][static_cast<std::size_t>(i + 1)]);
    }
  }
  li.positions = layout.local_positions();
  return li;
}

}  // namespace flexsp::kernels
