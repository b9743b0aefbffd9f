// Matmul throughput of the model's linear layers (forward and both backward products) against
// plain OpenBLAS cblas_sgemm on the same shapes in the same run. Goal: ratio >= 0.8.
// Correctness: each kernel's output is compared with the direct sgemm result (#wrong).
#include <cblas.h>

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "bench_util.hpp"
#include "flexsp/kernels/ops.hpp"

using namespace flexsp::kernels;

int main() {
  struct shape {
    const char* name;
    std::int64_t n, in, out;
  };
  // Reference config: 4096 tokens, d_model 256.
  const shape shapes[] = {{"qkv   ", 4096, 256, 768}, {"o_proj", 4096, 256, 256}, {"fc    ", 4096, 256, 1024},
                          {"proj  ", 4096, 1024, 256}};
  std::mt19937 rng{1};
  std::normal_distribution<float> dist;
  int wrong = 0;
  double total_ours = 0, total_ref = 0, total_flops = 0;
  std::printf("%-8s %-5s %10s %10s %8s %7s\n", "layer", "pass", "ours GF/s", "sgemm GF/s", "ratio", "#wrong");
  for (const auto& s : shapes) {
    std::vector<float> x(s.n * s.in), w(s.in * s.out), dy(s.n * s.out), y(s.n * s.out), y_ref(s.n * s.out);
    std::vector<float> dx(s.n * s.in), dx_ref(s.n * s.in), dw(s.in * s.out), dw_ref(s.in * s.out);
    for (auto* v : {&x, &w, &dy})
      for (auto& e : *v) e = dist(rng);
    const double product = 2.0 * s.n * s.in * s.out;
    auto report = [&](const char* pass, double flops, double t_ours, double t_ref, const std::vector<float>& a,
                      const std::vector<float>& b) {
      int bad = 0;
      for (std::size_t i = 0; i < a.size(); ++i)
        if (std::abs(a[i] - b[i]) > 1e-3f * (1.0f + std::abs(b[i]))) ++bad;
      wrong += bad;
      total_ours += t_ours;
      total_ref += t_ref;
      total_flops += flops;
      std::printf("%-8s %-5s %10.1f %10.1f %8.3f %7d\n", s.name, pass, flops / t_ours * 1e-9, flops / t_ref * 1e-9,
                  t_ref / t_ours, bad);
    };
    // forward: y = x w
    const auto [f_ours, f_ref] = flexsp::bench::paired_median_seconds(
        9, [&] { linear_forward(x, w, {}, y, s.n, s.in, s.out); },
        [&] {
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, s.n, s.out, s.in, 1.0f, x.data(), s.in, w.data(),
                      s.out, 0.0f, y_ref.data(), s.out);
        });
    report("fwd", product, f_ours, f_ref, y, y_ref);
    // backward: dx = dy w^T and dw += x^T dy (dw zeroed before each run)
    const auto [b_ours, b_ref] = flexsp::bench::paired_median_seconds(
        9,
        [&] {
          std::fill(dw.begin(), dw.end(), 0.0f);
          linear_backward(dy, x, w, dx, dw, {}, s.n, s.in, s.out);
        },
        [&] {
          std::fill(dw_ref.begin(), dw_ref.end(), 0.0f);
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, s.n, s.in, s.out, 1.0f, dy.data(), s.out, w.data(),
                      s.out, 0.0f, dx_ref.data(), s.in);
          cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, s.in, s.out, s.n, 1.0f, x.data(), s.in, dy.data(),
                      s.out, 1.0f, dw_ref.data(), s.out);
        });
    report("bwd", 2 * product, b_ours, b_ref, dx, dx_ref);
  }
  std::printf("overall: ours %.1f GFLOP/s, sgemm %.1f GFLOP/s, ratio %.3f (goal >= 0.8), #wrong %d\n",
              total_flops / total_ours * 1e-9, total_flops / total_ref * 1e-9, total_ref / total_ours, wrong);
  return wrong == 0 ? 0 : 1;
}
