// Gloo all-to-all bandwidth over TCP loopback (ranks as threads of this process, each with its
// own TCP connections) as a ratio of memcpy bandwidth measured in the same run. Bandwidth is
// bytes each rank sends to others per second; the memcpy reference copies the same bytes once.
// Correctness: every received block carries its sender's and receiver's rank (#wrong).
#include <chrono>
#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>

#include "bench_util.hpp"
#include "flexsp/kernels/gloo_communicator.hpp"

using namespace flexsp::kernels;
using namespace std::chrono_literals;

int main() {
  int wrong = 0;
  std::printf("%5s %12s %14s %14s %8s %7s\n", "ranks", "MiB/rank", "a2a GB/s", "memcpy GB/s", "ratio", "#wrong");
  for (int n : {2, 4}) {
    for (std::int64_t mib : {1, 16, 64}) {
      const std::int64_t floats = mib * (1 << 20) / 4;  // per rank, split evenly over peers
      const std::int64_t block = floats / n;
      memory_store store;
      std::vector<double> seconds(n);
      std::vector<int> bad(n);
      std::vector<std::thread> threads;
      for (int r = 0; r < n; ++r)
        threads.emplace_back([&, r] {
          auto comm = make_gloo_communicator(store, "a2a", r, n, gloo_options{.timeout = 120s}).value();
          std::vector<float> send(block * n), recv(block * n);
          for (int d = 0; d < n; ++d) std::fill_n(send.begin() + d * block, block, static_cast<float>(r * 100 + d));
          std::vector<std::int64_t> counts(n, block);
          seconds[r] = flexsp::bench::median_seconds(5, [&] { (void)comm->all_to_all_v(send, counts, recv, counts); });
          for (int s = 0; s < n; ++s)
            if (recv[s * block] != static_cast<float>(s * 100 + r) || recv[(s + 1) * block - 1] != recv[s * block])
              ++bad[r];
        });
      for (auto& t : threads) t.join();
      double t = 0;
      for (double s : seconds) t = std::max(t, s);
      for (int b : bad) wrong += b;
      const double bytes = static_cast<double>(block * (n - 1) * 4);  // leaves each rank
      std::vector<char> a(block * (n - 1) * 4, 1), b(a.size());
      const double tm = flexsp::bench::median_seconds(5, [&] { std::memcpy(b.data(), a.data(), a.size()); });
      std::printf("%5d %12lld %14.2f %14.2f %8.3f %7d\n", n, static_cast<long long>(mib), bytes / t * 1e-9,
                  bytes / tm * 1e-9, tm / t, wrong);
    }
  }
  return wrong == 0 ? 0 : 1;
}
