// GPU benchmark: causal varlen attention forward and backward, GEMM through the device's cuBLAS
// path, and full training steps of the reference GPT. Every figure comes with a correctness
// check against the CPU kernels (#wrong, as nccl-tests print it). Writes one JSON object per
// measurement to --json so that bench/gpu/torch_reference.py can put PyTorch's figures
// (scaled_dot_product_attention with the FlashAttention backend, torch.matmul = cuBLAS) on
// the same shapes next to ours.
//
//   flexsp_bench_gpu [--json FILE] [--quick]
// Exit status: 0 when every check passed, 1 on a wrong result or error, 77 without a GPU.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "flexsp/kernels/attention.hpp"
#include "flexsp/kernels/data.hpp"
#include "flexsp/kernels/gpu.hpp"
#include "flexsp/kernels/model.hpp"
#include "flexsp/kernels/model.hpp"
#include "flexsp/kernels/ops.hpp"

using namespace flexsp;
using namespace flexsp::kernels;

namespace {

int g_wrong = 0;
std::ofstream g_json;

std::vector<float> random_vector(std::size_t n, std::uint64_t seed) {
  std::mt19937_64 rng{seed};
  std::normal_distribution<float> dist;
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

template <class T>
T must(expected<T> r, const char* what) {
  if (!r) {
    std::fprintf(stderr, "%s: %s\n", what, r.error().to_string().c_str());
    std::exit(1);
  }
  return std::move(*r);
}
void must(expected<void> r, const char* what) {
  if (!r) {
    std::fprintf(stderr, "%s: %s\n", what, r.error().to_string().c_str());
    std::exit(1);
  }
}

// Median GPU milliseconds of `reps` runs after one warm-up.
template <class Fn>
double median_ms(gpu::device& dev, int reps, Fn&& fn) {
  must(dev.time_ms(fn), "warm-up");
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) t.push_back(must(dev.time_ms(fn), "timed run"));
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

gpu::buffer upload(gpu::device& dev, const std::vector<float>& host) {
  auto b = must(dev.allocate(host.size() * sizeof(float)), "allocate");
  must(dev.copy_to_device(b.get(), host.data(), host.size() * sizeof(float)), "upload");
  return b;
}
std::vector<float> download(gpu::device& dev, const void* ptr, std::size_t n) {
  std::vector<float> host(n);
  must(dev.copy_to_host(host.data(), ptr, n * sizeof(float)), "download");
  return host;
}

// Elements with |a - b| > atol + rtol |b|.
int count_wrong(const std::vector<float>& got, const std::vector<float>& want, float atol, float rtol) {
  int bad = 0;
  for (std::size_t i = 0; i < got.size(); ++i)
    if (!(std::abs(got[i] - want[i]) <= atol + rtol * std::abs(want[i]))) ++bad;
  return bad;
}

std::string join(const std::vector<std::int64_t>& v) {
  std::string s;
  for (auto x : v) s += (s.empty() ? "" : ",") + std::to_string(x);
  return s;
}

// ---- attention -------------------------------------------------------------------------

struct attention_shape {
  const char* name;
  std::vector<std::int64_t> lengths;
  std::int64_t heads, head_dim;
};

void bench_attention(gpu::device& dev, const attention_shape& sh, int reps, gpu::dtype type) {
  std::vector<std::int64_t> cu{0};
  for (auto l : sh.lengths) cu.push_back(cu.back() + l);
  const std::int64_t N = cu.back(), H = sh.heads, Dh = sh.head_dim;
  const auto elems = static_cast<std::size_t>(N * H * Dh);
  const bool bf16 = type == gpu::dtype::bf16;
  const std::size_t esz = bf16 ? 2 : 4;
  // Inputs in the element type: fp32 draws, rounded to bf16 on the device for the bf16 runs.
  auto input = [&](std::uint64_t seed) {
    auto f32 = upload(dev, random_vector(elems, seed));
    if (!bf16) return f32;
    auto b = must(dev.allocate(elems * 2), "bf16 input");
    must(dev.to_bf16(f32.as<float>(), b.as<std::uint16_t>(), static_cast<std::int64_t>(elems)), "to_bf16");
    return b;
  };
  auto q = input(1), k = input(2), v = input(3), dout = input(4);
  auto out = must(dev.allocate(elems * esz), "out"), lse = must(dev.allocate(static_cast<std::size_t>(N * H) * 4), "lse");
  auto dq = must(dev.allocate(elems * esz), "dq"), dk = must(dev.allocate(elems * esz), "dk"),
       dv = must(dev.allocate(elems * esz), "dv");
  gpu::attention_forward_args fa{cu, H, Dh, q.get(), k.get(), v.get(), out.get(), lse.as<float>(), type};
  gpu::attention_backward_args ba{cu,       H,        Dh,       q.get(),         k.get(), v.get(), out.get(),
                                  lse.as<float>(), dout.get(), dq.get(), dk.get(), dv.get(), type};
  must(dev.can_implement(fa), "attention forward");
  must(dev.can_implement(ba), "attention backward");
  auto fws = must(dev.allocate(dev.workspace_size(fa)), "workspace");
  auto bws = must(dev.allocate(dev.workspace_size(ba)), "workspace");
  const double fwd_ms = median_ms(dev, reps, [&] { return dev.run(fa, fws.get()); });
  const double bwd_ms = median_ms(dev, reps, [&] { return dev.run(ba, bws.get()); });
  const double ff = attention::forward_flops(cu, H, Dh), bf = attention::backward_flops(cu, H, Dh);

  // Check head 0 of every sequence against the CPU kernel (on the same, possibly rounded, inputs).
  auto head0 = [&](const gpu::buffer& b) {
    std::vector<float> all;
    if (bf16) {
      auto f32 = must(dev.allocate(elems * 4), "fp32 copy");
      must(dev.from_bf16(b.as<std::uint16_t>(), f32.as<float>(), static_cast<std::int64_t>(elems)), "from_bf16");
      all = download(dev, f32.get(), elems);
    } else {
      all = download(dev, b.get(), elems);
    }
    std::vector<float> h(static_cast<std::size_t>(N * Dh));
    for (std::int64_t t = 0; t < N; ++t)
      std::copy_n(all.begin() + t * H * Dh, Dh, h.begin() + t * Dh);
    return h;
  };
  const auto hq = head0(q), hk = head0(k), hv = head0(v), hdo = head0(dout);
  std::vector<float> ro(hq.size()), rl(static_cast<std::size_t>(N)), rdq(hq.size()), rdk(hq.size()), rdv(hq.size());
  attention::forward_args cfa{cu, 1, Dh, hq.data(), hk.data(), hv.data(), ro.data(), rl.data()};
  std::vector<float> ws(static_cast<std::size_t>(attention::workspace_size(cfa)));
  attention::run(cfa, ws);
  attention::backward_args cba{cu, 1, Dh, hq.data(), hk.data(), hv.data(), ro.data(), rl.data(), hdo.data(),
                               rdq.data(), rdk.data(), rdv.data()};
  ws.resize(static_cast<std::size_t>(attention::workspace_size(cba)));
  attention::run(cba, ws);
  // bf16 stores round to 2^-8 relative; gradients also see the rounded O in delta.
  const float out_atol = bf16 ? 1e-2f : 2e-5f, out_rtol = bf16 ? 8e-3f : 1e-4f;
  const float grad_atol = bf16 ? 3e-2f : 1e-4f, grad_rtol = bf16 ? 3e-2f : 1e-3f;
  const int wrong = count_wrong(head0(out), ro, out_atol, out_rtol) + count_wrong(head0(dq), rdq, grad_atol, grad_rtol) +
                    count_wrong(head0(dk), rdk, grad_atol, grad_rtol) + count_wrong(head0(dv), rdv, grad_atol, grad_rtol);
  g_wrong += wrong;
  const char* dt = bf16 ? "bf16" : "f32";
  std::printf("attention %-14s %-4s %3zu seqs %6lld tokens H=%lld Dh=%lld | fwd %8.3f ms %6.2f TFLOP/s | bwd %8.3f ms "
              "%6.2f TFLOP/s | #wrong %d\n",
              sh.name, dt, sh.lengths.size(), static_cast<long long>(N), static_cast<long long>(H),
              static_cast<long long>(Dh), fwd_ms, ff / fwd_ms / 1e9, bwd_ms, bf / bwd_ms / 1e9, wrong);
  g_json << "{\"kind\":\"attention\",\"name\":\"" << sh.name << "\",\"lengths\":[" << join(sh.lengths)
         << "],\"heads\":" << H << ",\"head_dim\":" << Dh << ",\"fwd_ms\":" << fwd_ms << ",\"bwd_ms\":" << bwd_ms
         << ",\"fwd_flops\":" << ff << ",\"bwd_flops\":" << bf << ",\"dtype\":\"" << dt << "\",\"wrong\":" << wrong
         << "}\n";
}

// ---- GEMM ------------------------------------------------------------------------------

struct gemm_shape {
  const char* name;
  std::int64_t m, n, k;
};

void bench_gemm(gpu::device& dev, const gemm_shape& sh, int reps, bool check) {
  const auto a32 = random_vector(static_cast<std::size_t>(sh.m * sh.k), 11);
  const auto b32 = random_vector(static_cast<std::size_t>(sh.k * sh.n), 12);
  auto a = upload(dev, a32), b = upload(dev, b32);
  const auto cn = static_cast<std::size_t>(sh.m * sh.n);
  auto c = must(dev.allocate(cn * 4), "c");
  auto a16 = must(dev.allocate(a32.size() * 2), "a16"), b16 = must(dev.allocate(b32.size() * 2), "b16"),
       c16 = must(dev.allocate(cn * 2), "c16");
  must(dev.to_bf16(a.as<float>(), a16.as<std::uint16_t>(), static_cast<std::int64_t>(a32.size())), "to_bf16");
  must(dev.to_bf16(b.as<float>(), b16.as<std::uint16_t>(), static_cast<std::int64_t>(b32.size())), "to_bf16");
  std::vector<float> ref;
  if (check) {
    ref.resize(cn);
    gemm(false, false, sh.m, sh.n, sh.k, 1.0f, a32.data(), sh.k, b32.data(), sh.n, 0.0f, ref.data(), sh.n);
  }
  const double flops = 2.0 * static_cast<double>(sh.m) * static_cast<double>(sh.n) * static_cast<double>(sh.k);
  struct variant {
    const char* label;
    gpu::dtype type;
    gpu::gemm_math math;
    float atol, rtol;
  };
  for (const variant& var : {variant{"f32", gpu::dtype::f32, gpu::gemm_math::fp32, 1e-3f, 1e-3f},
                             variant{"tf32", gpu::dtype::f32, gpu::gemm_math::tf32, 0.5f, 0.02f},
                             variant{"bf16", gpu::dtype::bf16, gpu::gemm_math::fp32, 2.0f, 0.05f}}) {
    const bool half = var.type == gpu::dtype::bf16;
    gpu::gemm_args g{.m = sh.m, .n = sh.n, .k = sh.k, .a = half ? a16.get() : a.get(), .lda = sh.k,
                     .b = half ? b16.get() : b.get(), .ldb = sh.n, .c = half ? c16.get() : c.get(), .ldc = sh.n,
                     .type = var.type, .math = var.math};
    const double ms = median_ms(dev, reps, [&] { return dev.gemm(g); });
    int wrong = 0;
    if (check) {
      if (half) must(dev.from_bf16(c16.as<std::uint16_t>(), c.as<float>(), static_cast<std::int64_t>(cn)), "from_bf16");
      // Errors grow like sqrt(k) for random inputs; the tolerances are per unit of sqrt(k).
      const float grow = std::sqrt(static_cast<float>(sh.k));
      wrong = count_wrong(download(dev, c.get(), cn), ref, var.atol * grow / 64.0f, var.rtol);
    }
    g_wrong += wrong;
    std::printf("gemm %-18s m=%5lld n=%5lld k=%5lld %-4s | %8.3f ms %7.2f TFLOP/s | #wrong %d%s\n", sh.name,
                static_cast<long long>(sh.m), static_cast<long long>(sh.n), static_cast<long long>(sh.k), var.label,
                ms, flops / ms / 1e9, wrong, check ? "" : " (not checked)");
    g_json << "{\"kind\":\"gemm\",\"name\":\"" << sh.name << "\",\"m\":" << sh.m << ",\"n\":" << sh.n
           << ",\"k\":" << sh.k << ",\"dtype\":\"" << var.label << "\",\"ms\":" << ms << ",\"flops\":" << flops
           << ",\"wrong\":" << wrong << "}\n";
  }
}

// ---- training step ---------------------------------------------------------------------

void bench_step(const std::shared_ptr<gpu::device>& dev, const char* name, const model_config& cfg, const std::vector<std::int64_t>& lengths,
                int steps, bool check_loss_on_cpu, gpu::dtype attention = gpu::dtype::f32,
                gpu::gemm_math math = gpu::gemm_math::fp32) {
  auto cpu = must(model::create(cfg, 1), "model");
  auto replica = must(model::create(dev, cfg, 1), "replica");
  replica.set_attention_type(attention);
  replica.set_gemm_math(math);
  const bool mixed = attention == gpu::dtype::bf16 || math == gpu::gemm_math::tf32;
  const double loss_tolerance = mixed ? 1e-2 : 1e-4;  // bf16 Q/K/V/O, tf32 GEMM inputs
  const auto tokens = std::accumulate(lengths.begin(), lengths.end(), std::int64_t{0});
  auto layout = must(ulysses_layout::make(lengths, 1, 0, cfg.heads), "layout");
  const float scale = 1.0f / static_cast<float>(tokens);
  std::vector<double> ms;
  double first_loss = 0, last_loss = 0;
  int wrong = 0;
  for (int step = 0; step <= steps; ++step) {
    auto in = must(shard_inputs(layout, synthetic_sequences(lengths, 10 + static_cast<std::uint64_t>(step), cfg.vocab)),
                   "inputs");
    if (step == 0 && check_loss_on_cpu) {
      auto comm = make_local_communicator();
      auto ref = must(cpu.forward_backward(*comm, layout, in, scale, {.backward = false}), "cpu forward");
      auto loss = must(replica.forward_backward(in, lengths, scale), "gpu forward").loss_sum;
      if (std::abs(loss - ref.loss_sum) > loss_tolerance * std::abs(ref.loss_sum)) ++wrong;
      must(replica.zero_grads(), "zero");
    }
    double loss = 0;
    const auto t = must(dev->time_ms([&]() -> expected<void> {
      FLEXSP_TRY(replica.zero_grads());
      FLEXSP_TRY_ASSIGN(const auto r, replica.forward_backward(in, lengths, scale));
      loss = r.loss_sum;
      FLEXSP_TRY(replica.optimizer_step(adamw_params{}, 1.0));
      return {};
    }), "step");
    if (step > 0) ms.push_back(t);  // step 0 grows the scratch buffers
    (step == 0 ? first_loss : last_loss) = loss / static_cast<double>(tokens);
  }
  std::sort(ms.begin(), ms.end());
  const double med = ms[ms.size() / 2];
  // A fresh model predicts about uniformly: the first loss is near ln(vocab); training lowers it.
  if (!std::isfinite(last_loss) || std::abs(first_loss - std::log(static_cast<double>(cfg.vocab))) > 0.3) ++wrong;
  g_wrong += wrong;
  const char* att = attention == gpu::dtype::bf16 ? "bf16" : "fp32";
  const char* mm = math == gpu::gemm_math::tf32 ? "tf32" : "fp32";
  std::printf("train step %-10s attn %s gemm %s %lld layers d=%lld H=%lld V=%lld %lld params | %zu seqs %lld tokens | "
              "%8.2f ms/step %9.0f tokens/s | loss %.3f -> %.3f | #wrong %d\n",
              name, att, mm, static_cast<long long>(cfg.layers), static_cast<long long>(cfg.d_model),
              static_cast<long long>(cfg.heads), static_cast<long long>(cfg.vocab),
              static_cast<long long>(cfg.parameter_count()), lengths.size(), static_cast<long long>(tokens), med,
              static_cast<double>(tokens) / med * 1e3, first_loss, last_loss, wrong);
  g_json << "{\"kind\":\"train_step\",\"name\":\"" << name << "\",\"attention\":\"" << att << "\",\"matmul\":\"" << mm << "\",\"tokens\":" << tokens << ",\"ms\":" << med
         << ",\"params\":" << cfg.parameter_count() << ",\"wrong\":" << wrong << "}\n";
}

}  // namespace

int main(int argc, char** argv) {
  std::string json_path = "gpu_bench.jsonl";
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--json") == 0 && i + 1 < argc) json_path = argv[++i];
    else if (std::strcmp(argv[i], "--quick") == 0) quick = true;
    else {
      std::fprintf(stderr, "usage: %s [--json FILE] [--quick]\n", argv[0]);
      return 2;
    }
  }
  auto opened = gpu::open_device(0);
  if (!opened) {
    std::printf("SKIP: no GPU to benchmark: %s\n", opened.error().to_string().c_str());
    return 77;
  }
  g_json.open(json_path);
  std::shared_ptr<gpu::device> dev{std::move(*opened)};
  std::printf("device: %s\n", dev->description().c_str());
  const int reps = quick ? 3 : 10;

  // Long-tail batch (Wikipedia-like: a few long documents, many short ones) and uniform ones.
  const std::vector<std::int64_t> longtail{8192, 3001, 2048, 1024, 700, 513, 300, 200, 120, 80, 33, 20, 7, 1};
  const std::vector<attention_shape> shapes{
      {"longtail-16k", longtail, 16, 64},
      {"longtail-16k", longtail, 8, 128},
      {"uniform-4x4k", {4096, 4096, 4096, 4096}, 16, 128},
      {"single-16k", {16384}, 16, 64},
      {"short-512x64", std::vector<std::int64_t>(64, 512), 16, 64},
  };
  for (const auto type : {gpu::dtype::f32, gpu::dtype::bf16})
    for (const auto& s : shapes) bench_attention(*dev, s, reps, type);

  const std::vector<gemm_shape> gemms{
      {"qkv 16k x 1024", 16384, 3072, 1024},
      {"fc 16k x 1024", 16384, 4096, 1024},
      {"proj 16k x 4096", 16384, 1024, 4096},
      {"square 4096", 4096, 4096, 4096},
      {"square 8192", 8192, 8192, 8192},
  };
  for (const auto& g : gemms) bench_gemm(*dev, g, reps, g.m * g.n * g.k <= 4096LL * 4096 * 4096);

  bench_step(dev, "reference", {.layers = 4, .d_model = 256, .heads = 8, .vocab = 256, .max_positions = 4096},
             {4096, 1500, 900, 600, 400, 300, 200, 100}, quick ? 2 : 5, true);
  bench_step(dev, "reference", {.layers = 4, .d_model = 256, .heads = 8, .vocab = 256, .max_positions = 4096},
             {4096, 1500, 900, 600, 400, 300, 200, 100}, quick ? 2 : 5, true, gpu::dtype::bf16);
  bench_step(dev, "reference", {.layers = 4, .d_model = 256, .heads = 8, .vocab = 256, .max_positions = 4096},
             {4096, 1500, 900, 600, 400, 300, 200, 100}, quick ? 2 : 5, true, gpu::dtype::bf16, gpu::gemm_math::tf32);
  bench_step(dev, "gpt-small", {.layers = 12, .d_model = 768, .heads = 12, .vocab = 256, .max_positions = 8192},
             {8192, 3001, 2048, 1024, 700, 513, 300, 200, 120, 80, 33, 20, 7, 1}, quick ? 2 : 4, false);
  bench_step(dev, "gpt-small", {.layers = 12, .d_model = 768, .heads = 12, .vocab = 256, .max_positions = 8192},
             {8192, 3001, 2048, 1024, 700, 513, 300, 200, 120, 80, 33, 20, 7, 1}, quick ? 2 : 4, false,
             gpu::dtype::bf16, gpu::gemm_math::tf32);

  std::printf("total #wrong %d\n", g_wrong);
  return g_wrong == 0 ? 0 : 1;
}
