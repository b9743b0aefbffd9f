#include "flexsp/kernels/ulysses.hpp"

#include <algorithm>

#include "flexsp/core/check.hpp"

namespace flexsp::kernels {

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
  for (std::size_t s = 0; s < lengths_.size(); ++s) {
    const auto sh = token_share(s, rank_);
    for (std::int64_t i = 0; i < sh.size; ++i) pos.push_back(static_cast<std::int32_t>(sh.begin + i));
  }
  return pos;
}

std::vector<std::int64_t> ulysses_layout::local_to_global() const {
  std::vector<std::int64_t> idx;
  idx.reserve(static_cast<std::size_t>(local_tokens()));
  for (std::size_t s = 0; s < lengths_.size(); ++s) {
    const auto sh = token_share(s, rank_);
    for (std::int64_t i = 0; i < sh.size; ++i) idx.push_back(cu_seqlens_[s] + sh.begin + i);
  }
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
  const auto d = static_cast<std::size_t>(degree_);
  std::vector<std::int64_t> send_counts(d), recv_counts(d);
  std::int64_t send_total = 0, recv_total = 0;
  for (int r = 0; r < degree_; ++r) {
    send_counts[static_cast<std::size_t>(r)] = n_me * C * head_share(r).size * Dh;
    recv_counts[static_cast<std::size_t>(r)] = local_tokens(r) * C * my_heads.size * Dh;
    send_total += send_counts[static_cast<std::size_t>(r)];
    recv_total += recv_counts[static_cast<std::size_t>(r)];
  }
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
  for (int r = 0; r < degree_; ++r) {
    for (std::size_t s = 0; s < lengths_.size(); ++s) {
      const auto sh = token_share(s, r);
      for (std::int64_t i = 0; i < sh.size; ++i) {
        const std::int64_t g = cu_seqlens_[s] + sh.begin + i;
        for (std::int64_t c = 0; c < C; ++c) {
          std::copy(in, in + hm * Dh, dst.data() + (c * N + g) * hm * Dh);
          in += hm * Dh;
        }
      }
    }
  }
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
  const auto d = static_cast<std::size_t>(degree_);
  std::vector<std::int64_t> send_counts(d), recv_counts(d);
  std::int64_t send_total = 0, recv_total = 0;
  for (int r = 0; r < degree_; ++r) {
    send_counts[static_cast<std::size_t>(r)] = local_tokens(r) * C * hm * Dh;
    recv_counts[static_cast<std::size_t>(r)] = n_me * C * head_share(r).size * Dh;
    send_total += send_counts[static_cast<std::size_t>(r)];
    recv_total += recv_counts[static_cast<std::size_t>(r)];
  }
  scratch.resize(static_cast<std::size_t>(send_total + recv_total));
  float* send = scratch.data();
  float* recv = scratch.data() + send_total;
  float* out = send;
  for (int r = 0; r < degree_; ++r) {
    for (std::size_t s = 0; s < lengths_.size(); ++s) {
      const auto sh = token_share(s, r);
      for (std::int64_t i = 0; i < sh.size; ++i) {
        const std::int64_t g = cu_seqlens_[s] + sh.begin + i;
        for (std::int64_t c = 0; c < C; ++c) {
          const float* from = src.data() + (c * N + g) * hm * Dh;
          out = std::copy(from, from + hm * Dh, out);
        }
      }
    }
  }
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
