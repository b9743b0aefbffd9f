#pragma once
/// \file
/// Causal multi-head self-attention over packed variable-length sequences (cu_seqlens style,
/// no padding), tiled with an online softmax: memory is O(tokens * heads * head_dim), never
/// O(L^2), so a 32K-token sequence fits easily. The backward pass recomputes each score tile
/// from Q, K and the saved log-sum-exp.
///
/// Launcher convention: `can_implement(args)`, `workspace_size(args)` (floats), then
/// `run(args, workspace)`. Q, K, V, O and their gradients are [tokens, heads, head_dim] with row
/// stride heads*head_dim; sequence s occupies tokens [cu_seqlens[s], cu_seqlens[s+1]).

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "flexsp/core/error.hpp"

namespace flexsp::kernels::attention {

/// Tile sizes (rows of Q and of K per tile).
inline constexpr std::int64_t kTileQ = 64;
inline constexpr std::int64_t kTileK = 64;

/// Arguments of the forward pass.
struct forward_args {
  std::span<const std::int64_t> cu_seqlens;  // [sequences + 1], cu_seqlens[0] == 0, non-decreasing
  std::int64_t heads = 0;
  std::int64_t head_dim = 0;
  const float* q = nullptr;  // [tokens, heads, head_dim]
  const float* k = nullptr;  // [tokens, heads, head_dim]
  const float* v = nullptr;  // [tokens, heads, head_dim]
  float* out = nullptr;      // [tokens, heads, head_dim]
  float* lse = nullptr;      // [tokens, heads]   log-sum-exp of the scaled scores, saved for backward
  int threads = 0;           ///< worker threads; 0: one per hardware thread
  std::string_view variant{};///< instruction-set variant (supported_variants()); empty: the best
};

/// Arguments of the backward pass: the forward's inputs and outputs plus the output gradient.
struct backward_args {
  std::span<const std::int64_t> cu_seqlens;
  std::int64_t heads = 0;
  std::int64_t head_dim = 0;
  const float* q = nullptr;
  const float* k = nullptr;
  const float* v = nullptr;
  const float* out = nullptr;   // [tokens, heads, head_dim]  forward output
  const float* lse = nullptr;   // [tokens, heads]            from forward
  const float* dout = nullptr;  // [tokens, heads, head_dim]
  float* dq = nullptr;          // [tokens, heads, head_dim]  overwritten
  float* dk = nullptr;          // [tokens, heads, head_dim]  overwritten
  float* dv = nullptr;          // [tokens, heads, head_dim]  overwritten
  int threads = 0;              ///< worker threads; 0: one per hardware thread
  std::string_view variant{};   ///< instruction-set variant (supported_variants()); empty: the best
};

/// The instruction-set variants of the tile loops this CPU runs, best first ("avx512", "avx2",
/// "baseline"). They differ only in rounding (fused multiply-add), never by thread count.
std::vector<std::string_view> supported_variants();

/// Ok, or errc::invalid_argument naming the bad field (cu_seqlens not monotone, null buffers
/// with tokens > 0, non-positive head_dim).
expected<void> can_implement(const forward_args& args);
expected<void> can_implement(const backward_args& args);

/// Workspace in floats: K and V copied head-major (2 x tokens x heads x head_dim; 4x in
/// backward, with dK and dV), so each head's key tiles are contiguous, plus a few tiles of
/// scratch per worker thread. Work is split over (sequence, head, query tile) in forward and
/// (sequence, head) in backward, so every thread writes disjoint outputs and results do not
/// depend on the thread count.
std::int64_t workspace_size(const forward_args& args);
std::int64_t workspace_size(const backward_args& args);

/// Runs the pass. Preconditions: can_implement(args) succeeded; workspace.size() >= workspace_size(args).
void run(const forward_args& args, std::span<float> workspace);
void run(const backward_args& args, std::span<float> workspace);

/// Multiply-adds counted as 2 flops: forward 4*L*(L+1)/2*head_dim per head and sequence (causal
/// half of QK^T and PV); backward counts 2.5x the forward (five tile products instead of two).
double forward_flops(std::span<const std::int64_t> cu_seqlens, std::int64_t heads, std::int64_t head_dim);
double backward_flops(std::span<const std::int64_t> cu_seqlens, std::int64_t heads, std::int64_t head_dim);

}  // namespace flexsp::kernels::attention
