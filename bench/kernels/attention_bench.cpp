// Throughput of the tiled variable-length causal attention, forward and backward, on one 4K
// sequence, a packed long-tail batch and one 32K sequence (peak memory reported). Correctness:
// a sample of output rows is compared with a double-precision naive computation (#wrong).
// Threads: FLEXSP_CPU_THREADS (default: every core).
#include <sys/resource.h>

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "bench_util.hpp"
#include "flexsp/kernels/attention.hpp"
#include "flexsp/kernels/ops.hpp"

using namespace flexsp::kernels;

namespace {
int check_rows(const std::vector<std::int64_t>& cu, std::int64_t H, std::int64_t Dh, const std::vector<float>& q,
               const std::vector<float>& k, const std::vector<float>& v, const std::vector<float>& out) {
  int wrong = 0;
  const double scale = 1.0 / std::sqrt(static_cast<double>(Dh));
  for (std::size_t s = 0; s + 1 < cu.size(); ++s) {
    for (std::int64_t i : {cu[s], (cu[s] + cu[s + 1]) / 2, cu[s + 1] - 1}) {
      if (i < cu[s] || i >= cu[s + 1]) continue;
      const std::int64_t h = i % H;
      std::vector<double> p;
      double mx = -1e300, sum = 0;
      for (std::int64_t j = cu[s]; j <= i; ++j) {
        double d = 0;
        for (std::int64_t e = 0; e < Dh; ++e) d += q[(i * H + h) * Dh + e] * k[(j * H + h) * Dh + e];
        p.push_back(d * scale);
        mx = std::max(mx, p.back());
      }
      for (auto& x : p) sum += (x = std::exp(x - mx));
      for (std::int64_t e = 0; e < Dh; ++e) {
        double acc = 0;
        for (std::int64_t j = cu[s]; j <= i; ++j) acc += p[j - cu[s]] * v[(j * H + h) * Dh + e];
        if (std::abs(acc / sum - out[(i * H + h) * Dh + e]) > 1e-4) ++wrong;
      }
    }
  }
  return wrong;
}

int run_case(const char* name, const std::vector<std::int64_t>& lengths, std::int64_t H, std::int64_t Dh) {
  std::vector<std::int64_t> cu{0};
  for (auto l : lengths) cu.push_back(cu.back() + l);
  const std::int64_t N = cu.back();
  std::mt19937 rng{3};
  std::normal_distribution<float> dist;
  std::vector<float> q(N * H * Dh), k(q.size()), v(q.size()), out(q.size()), lse(N * H), dout(q.size());
  std::vector<float> dq(q.size()), dk(q.size()), dv(q.size());
  for (auto* t : {&q, &k, &v, &dout})
    for (auto& e : *t) e = dist(rng);
  const int threads = cpu_math_threads();  // FLEXSP_CPU_THREADS, else every core
  attention::forward_args fa{cu, H, Dh, q.data(), k.data(), v.data(), out.data(), lse.data(), threads};
  attention::backward_args ba{cu,         H,           Dh,        q.data(),  k.data(),  v.data(), out.data(),
                              lse.data(), dout.data(), dq.data(), dk.data(), dv.data(), threads};
  std::vector<float> ws(attention::workspace_size(fa)), bws(attention::workspace_size(ba));
  const double tf = flexsp::bench::median_seconds(3, [&] { attention::run(fa, ws); });
  const double tb = flexsp::bench::median_seconds(3, [&] { attention::run(ba, bws); });
  const int wrong = check_rows(cu, H, Dh, q, k, v, out);
  std::printf("%-28s tokens %6lld  fwd %7.2f GFLOP/s (%.3f s)  bwd %7.2f GFLOP/s (%.3f s)  #wrong %d\n", name,
              static_cast<long long>(N), attention::forward_flops(cu, H, Dh) / tf * 1e-9, tf,
              attention::backward_flops(cu, H, Dh) / tb * 1e-9, tb, wrong);
  return wrong;
}
}  // namespace

int main() {
  int wrong = 0;
  wrong += run_case("one 4096 seq, 8 heads x 32", {4096}, 8, 32);
  wrong += run_case("long-tail 8 seqs, 8 x 32", {4096, 1500, 900, 600, 400, 300, 200, 100}, 8, 32);
  wrong += run_case("one 8192 seq, 1 head x 64", {8192}, 1, 64);
  wrong += run_case("one 32768 seq, 1 head x 32", {32768}, 1, 32);
  // One 32K x 32K fp32 score matrix alone would be 4 GiB.
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  std::printf("peak resident memory of the whole run: %.1f MiB\n", static_cast<double>(usage.ru_maxrss) / 1024.0);
  return wrong == 0 ? 0 : 1;
}
