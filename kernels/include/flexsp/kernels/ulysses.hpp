#pragma once
/// \file
/// Ulysses sequence parallelism over variable-length sequences.
///
/// In an SP group of degree d, rank r holds a contiguous share of every sequence: a sequence of
/// length L is cut into d shares of L/d tokens, the first L%d shares one token longer, so any
/// length works and a rank may hold no token of a short sequence. A rank's local tokens are its
/// shares of sequence 0, 1, ... back to back. Attention heads are split the same way (H/d each,
/// the first H%d ranks one more): **head counts not divisible by d are supported** by this uneven
/// split, and d > H leaves some ranks without heads (they still take part in the all-to-alls).
///
/// Around attention, `scatter_heads` turns [my tokens, C, all heads, head_dim] into
/// [C, all tokens of the group in sequence order, my heads, head_dim] with one all-to-all-v, and
/// `gather_heads` is its inverse; the backward pass uses them mirrored.

#include <cstdint>
#include <span>
#include <vector>

#include "flexsp/core/error.hpp"
#include "flexsp/kernels/collectives.hpp"
#include "flexsp/kernels/ops.hpp"

namespace flexsp::kernels {

/// Start and size of part `part` when `total` items are cut into `parts` contiguous parts,
/// the first total%parts of them one item larger.
struct share {
  std::int64_t begin = 0;
  std::int64_t size = 0;
};
share split_evenly(std::int64_t total, int parts, int part) noexcept;

/// The token and head layout of one rank in an SP group.
class ulysses_layout {
public:
  /// errc::invalid_argument when degree < 1, rank outside [0, degree), heads < 1 or a length < 0.
  static expected<ulysses_layout> make(std::vector<std::int64_t> lengths, int degree, int rank, std::int64_t heads);

  int degree() const noexcept { return degree_; }
  int rank() const noexcept { return rank_; }
  std::int64_t heads() const noexcept { return heads_; }
  const std::vector<std::int64_t>& lengths() const noexcept { return lengths_; }

  /// Rank r's share of sequence s.
  share token_share(std::size_t s, int r) const noexcept { return split_evenly(lengths_[s], degree_, r); }
  /// Rank r's heads.
  share head_share(int r) const noexcept { return split_evenly(heads_, degree_, r); }
  /// Tokens rank r holds (sum of its shares).
  std::int64_t local_tokens(int r) const noexcept { return local_tokens_[static_cast<std::size_t>(r)]; }
  std::int64_t local_tokens() const noexcept { return local_tokens(rank_); }
  /// Tokens of all sequences of the group.
  std::int64_t total_tokens() const noexcept { return cu_seqlens_.back(); }
  /// Prefix sums of the full sequence lengths: [sequences + 1].
  const std::vector<std::int64_t>& cu_seqlens() const noexcept { return cu_seqlens_; }

  /// Positions within their sequences of this rank's local tokens: [local_tokens].
  std::vector<std::int32_t> local_positions() const;
  /// For each of this rank's local tokens, its index in the group's packed token order.
  std::vector<std::int64_t> local_to_global() const;

  /// How one head exchange moves data, as copies any memory can run (host: kernels::copy_blocks,
  /// GPU: gpu::device::copy_blocks): `pack` fills the send buffer from the source tensor, the
  /// all-to-all-v moves send_counts / recv_counts floats per rank, `unpack` fills the destination
  /// tensor from the receive buffer. Wire layout of the block between a token holder t and a
  /// head holder h, both directions: [tokens of t in t's local order, C, heads of h, head_dim].
  struct exchange_plan {
    std::vector<row_block> pack, unpack;
    std::vector<std::int64_t> send_counts, recv_counts;
    std::int64_t send_total = 0, recv_total = 0;
  };
  /// The plan of scatter_heads / gather_heads for `components` x `head_dim`.
  exchange_plan scatter_plan(std::int64_t components, std::int64_t head_dim) const;
  exchange_plan gather_plan(std::int64_t components, std::int64_t head_dim) const;

  /// [local_tokens, C, heads, head_dim] -> [C, total_tokens, my heads, head_dim]. Collective:
  /// every rank of `group` calls it. `scratch` is resized as needed.
  expected<void> scatter_heads(communicator& group, std::span<const float> src, std::span<float> dst,
                               std::int64_t components, std::int64_t head_dim, std::vector<float>& scratch) const;

  /// Inverse of scatter_heads: [C, total_tokens, my heads, head_dim] -> [local_tokens, C, heads, head_dim].
  expected<void> gather_heads(communicator& group, std::span<const float> src, std::span<float> dst,
                              std::int64_t components, std::int64_t head_dim, std::vector<float>& scratch) const;

private:
  std::vector<std::int64_t> lengths_;
  std::vector<std::int64_t> cu_seqlens_;
  std::vector<std::int64_t> local_tokens_;
  int degree_ = 1;
  int rank_ = 0;
  std::int64_t heads_ = 1;
};

/// A rank's inputs for one micro-batch: its shares of the group's sequences.
struct local_inputs {
  std::vector<std::int32_t> tokens;     // [local_tokens]
  std::vector<std::int32_t> targets;    // [local_tokens]  next token of each input token
  std::vector<std::int32_t> positions;  // [local_tokens]
};

/// Cuts this rank's shares out of full sequences. Each sequence s holds lengths()[s] + 1 token
/// ids (inputs are tokens [0, L), targets tokens [1, L]). errc::invalid_argument on a size mismatch.
expected<local_inputs> shard_inputs(const ulysses_layout& layout, std::span<const std::vector<std::int32_t>> sequences);

}  // namespace flexsp::kernels
