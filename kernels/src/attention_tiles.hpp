#pragma once
// The tile loops of the CPU attention kernel, compiled once per instruction set
// (attention_tiles.inl included by attention_isa_*.cpp) and chosen once at run time by what the
// CPU supports. Private to the CPU kernels.

#include <cstdint>

#include "flexsp/kernels/attention.hpp"

namespace flexsp::kernels::attention::detail {

/// One forward work item: query rows [i0, i0 + kTileQ) of head `head` of the sequence at
/// tokens [base, base + len).
struct tile_item {
  std::int64_t base, len, head, i0;
  std::int64_t cost;
};

/// Key tiles per backward_key_tile item.
inline constexpr std::int64_t kKeyTilesPerItem = 4;

/// Scratch floats per worker thread.
std::int64_t forward_scratch(std::int64_t head_dim);
std::int64_t backward_scratch(std::int64_t head_dim);

/// K and V (and the dK, dV accumulators in backward) copied head-major, [heads][tokens][head_dim],
/// so that the key tiles of one head are contiguous: in the [tokens, heads, head_dim] layout
/// one head's rows lie heads * head_dim floats apart, a 4 KB page holds only a few of them, and
/// the hardware prefetchers (which stop at page boundaries) cannot stream the sweep over keys.
struct head_major {
  const float* k = nullptr;
  const float* v = nullptr;
  float* dk = nullptr;  // backward only; zero on entry, summed into by backward_head
  float* dv = nullptr;
  std::int64_t tokens = 0;
  std::int64_t head_dim = 0;
  std::int64_t at(std::int64_t head, std::int64_t token) const { return (head * tokens + token) * head_dim; }
};

struct tile_kernels {
  const char* isa;
  /// Writes out and lse of the item's query rows.
  void (*forward_tile)(const forward_args& a, const head_major& kv, const tile_item& item, float* scratch);
  /// Writes dq of one head of one whole sequence and adds its dK and dV into kv.dk and kv.dv.
  void (*backward_head)(const backward_args& a, const head_major& kv, std::int64_t base, std::int64_t len,
                        std::int64_t head, float* scratch);
  /// The same work split for a head too long for one thread: dK and dV of the
  /// kKeyTilesPerItem key tiles from row `tile` (every query tile that sees them), or dq of
  /// query tile `tile` (every key tile up to it).
  /// P and dS are computed twice (7 tile products instead of 5); the bits are backward_head's.
  void (*backward_key_tile)(const backward_args& a, const head_major& kv, std::int64_t base, std::int64_t len,
                            std::int64_t head, std::int64_t tile, float* scratch);
  void (*backward_query_tile)(const backward_args& a, const head_major& kv, std::int64_t base, std::int64_t len,
                              std::int64_t head, std::int64_t tile, float* scratch);
};

/// The widest variant this CPU runs (AVX-512, AVX2+FMA, or the baseline build). Results differ
/// between variants only by rounding (fused multiply-add), never between thread counts.
const tile_kernels& best_tile_kernels();

namespace avx512 {
extern const tile_kernels kernels;
}
namespace avx2 {
extern const tile_kernels kernels;
}
namespace baseline {
extern const tile_kernels kernels;
}

}  // namespace flexsp::kernels::attention::detail
