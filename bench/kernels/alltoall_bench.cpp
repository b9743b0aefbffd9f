// All-to-all bandwidth between ranks that are threads of this process, over Gloo's TCP loopback
// (each rank with its own connections) and through memory (the in-process communicator), each
// as a ratio of memcpy bandwidth measured in the same run. Bandwidth is bytes each rank sends to
// others per second; the memcpy reference copies the same bytes once. Correctness: every
// received block carries its sender's and receiver's rank (#wrong).
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "bench_util.hpp"
#include "flexsp/kernels/gloo_communicator.hpp"
#include "flexsp/kernels/process_communicator.hpp"

using namespace flexsp::kernels;
using namespace std::chrono_literals;

int main() {
  int wrong = 0;
  std::printf("%-9s %5s %9s %10s %12s %8s %7s\n", "transport", "ranks", "MiB/rank", "a2a GB/s", "memcpy GB/s", "ratio",
              "#wrong");
  for (const std::string transport : {"gloo", "memory"}) {
    for (int n : {2, 4}) {
      for (std::int64_t mib : {1, 16, 64}) {
        const std::int64_t floats = mib * (1 << 20) / 4;  // per rank, split evenly over peers
        const std::int64_t block = floats / n;
        memory_store store;
        std::vector<double> seconds(n);
        std::vector<int> bad(n);
        std::vector<std::thread> threads;
        const auto key = transport + "/" + std::to_string(n) + "/" + std::to_string(mib);
        for (int r = 0; r < n; ++r)
          threads.emplace_back([&, r] {
            auto comm = (transport == "gloo" ? make_gloo_communicator(store, key, r, n, gloo_options{.timeout = 120s})
                                             : make_process_communicator(key, r, n, 120s))
                            .value();
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
        std::printf("%-9s %5d %9lld %10.2f %12.2f %8.3f %7d\n", transport.c_str(), n, static_cast<long long>(mib),
                    bytes / t * 1e-9, bytes / tm * 1e-9, tm / t, wrong);
      }
    }
  }
  return wrong == 0 ? 0 : 1;
}
