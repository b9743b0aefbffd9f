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

// Wire layout of one all-to-all block between a token-holder t and a head-holder h:
// [tokens of t in t's local order, C, heads of h, head_dim]. Both exchanges use it, in
// opposite directions.
expected<void> ulysses_layout::scatter_heads(communicator& group, std::span<const float> src, std::span<float> dst,
                                             std::int64_t C, std::int64_t Dh, std::vector<float>& scratch) const {
  FLEXSP_EXPECTS(group.size() == degree_ && group.rank() == rank_, "group {}/{} vs layout {}/{}", group.rank(),
                 group.size(), rank_, degree_);
  const std::int64_t H = heads_, n_me = local_tokens(), N = total_tokens();
  const auto my_heads = head_share(rank_);
  FLEXSP_EXPECTS(static_cast<std::int64_t>(src.size()) == n_me * C * H * Dh &&
                     static_cast<std::int64_t>(dst.size()) == C * N * my_heads.size * Dh,
                 "scatter_heads: src {} dst {}", src.size(), dst.size());
  const auto counts = head_exchange_counts(*this, C, Dh);
  const auto& send_counts = counts.tokens_side;
  const auto& recv_counts = counts.heads_side;
  const std::int64_t send_total = counts.tokens_total, recv_total = counts.heads_total;
  scratch.resize(static_cast<std::size_t>(send_total + recv_total));
  float* send = scratch.data();
  float* recv = scratch.data() + send_total;
  float* out = send;
  for (int r = 0; r < degree_; ++r) {
    const auto hs = head_share(r);
    for (std::int64_t t = 0; t < n_me; ++t)
      for (std::int64_t c = 0; c < C; ++c) {
        const float* from = src.data() + ((t * C + c) * H + hs.begin) * Dh;
        out = std::copy(from, from + hs.size * Dh, out);
      }
  }
  FLEXSP_TRY(group.all_to_all_v({send, static_cast<std::size_t>(send_total)}, send_counts,
                                {recv, static_cast<std::size_t>(recv_total)}, recv_counts));
  const std::int64_t hm = my_heads.size;
  const float* in = recv;
  for (int r = 0; r < degree_; ++r)
    for_each_local_token(*this, r, [&](std::size_t s, std::int64_t p) {
      const std::int64_t g = cu_seqlens_[s] + p;
      for (std::int64_t c = 0; c < C; ++c) {
        std::copy(in, in + hm * Dh, dst.data() + (c * N + g) * hm * Dh);
        in += hm * Dh;
      }
    });
  return {};
}

expected<void> ulysses_layout::gather_heads(communicator& group, std::span<const float> src, std::span<float> dst,
                                            std::int64_t C, std::int64_t Dh, std::vector<float>& scratch) const {
  FLEXSP_EXPECTS(group.size() == degree_ && group.rank() == rank_, "group {}/{} vs layout {}/{}", group.rank(),
                 group.size(), rank_, degree_);
  const std::int64_t H = heads_, n_me = local_tokens(), N = total_tokens();
  const auto my_heads = head_share(rank_);
  const std::int64_t hm = my_heads.size;
  FLEXSP_EXPECTS(static_cast<std::int64_t>(src.size()) == C * N * hm * Dh &&
                     static_cast<std::int64_t>(dst.size()) == n_me * C * H * Dh,
                 "gather_heads: src {} dst {}", src.size(), dst.size());
  const auto counts = head_exchange_counts(*this, C, Dh);
  const auto& send_counts = counts.heads_side;
  const auto& recv_counts = counts.tokens_side;
  const std::int64_t send_total = counts.heads_total, recv_total = counts.tokens_total;
  scratch.resize(static_cast<std::size_t>(send_total + recv_total));
  float* send = scratch.data();
  float* recv = scratch.data() + send_total;
  float* out = send;
  for (int r = 0; r < degree_; ++r)
    for_each_local_token(*this, r, [&](std::size_t s, std::int64_t p) {
      const std::int64_t g = cu_seqlens_[s] + p;
      for (std::int64_t c = 0; c < C; ++c) {
        const float* from = src.data() + (c * N + g) * hm * Dh;
        out = std::copy(from, from + hm * Dh, out);
      }
    });
  FLEXSP_TRY(group.all_to_all_v({send, static_cast<std::size_t>(send_total)}, send_counts,
                                {recv, static_cast<std::size_t>(recv_total)}, recv_counts));
  const float* in = recv;
  for (int r = 0; r < degree_; ++r) {
    const auto hs = head_share(r);
    for (std::int64_t t = 0; t < n_me; ++t)
      for (std::int64_t c = 0; c < C; ++c) {
        std::copy(in, in + hs.size * Dh, dst.data() + ((t * C + c) * H + hs.begin) * Dh);
        in += hs.size * Dh;
      }
  }
  return {};
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
