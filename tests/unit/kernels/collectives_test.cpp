#include <atomic>
#include <filesystem>
#include <numeric>
#include <random>
#include <thread>

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "flexsp/kernels/collectives.hpp"
#include "flexsp/kernels/gloo_communicator.hpp"
#include "flexsp/kernels/gpu.hpp"
#include "flexsp/kernels/nccl_collectives.hpp"
#include "flexsp/kernels/process_communicator.hpp"
#include "flexsp/kernels/rendezvous_store.hpp"

namespace flexsp::kernels {
namespace {

using namespace std::chrono_literals;

TEST(MemoryStore, GetWaitsForAKeySetByAnotherThread) {
  memory_store s;
  std::thread t{[&] { ASSERT_TRUE(s.set("k", std::vector<char>{'a', 'b'})); }};
  auto v = s.get("k", 10s);
  t.join();
  ASSERT_TRUE(v);
  EXPECT_EQ(*v, (std::vector<char>{'a', 'b'}));
}

TEST(MemoryStore, TimesOutOnAMissingKey) {
  memory_store s;
  auto v = s.get("missing", 1ms);
  ASSERT_FALSE(v);
  EXPECT_EQ(v.error().kind(), errc::timeout);
  const std::vector<std::string> keys{"missing"};
  EXPECT_EQ(s.wait(keys, 1ms).error().kind(), errc::timeout);
}

TEST(FileStore, RoundTripsKeysWithAnyCharacters) {
  const auto dir = std::filesystem::temp_directory_path() / ("flexsp_store_" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  auto s = file_store::open(dir).value();
  ASSERT_TRUE(s->set("group/0,1/rank 0", std::vector<char>{'x'}));
  auto v = s->get("group/0,1/rank 0", 1s);
  ASSERT_TRUE(v);
  EXPECT_EQ(*v, std::vector<char>{'x'});
  const std::vector<std::string> keys{"group/0,1/rank 0"};
  EXPECT_TRUE(s->wait(keys, 1s));
  EXPECT_EQ(s->get("absent", 1ms).error().kind(), errc::timeout);
  std::filesystem::remove_all(dir);
}

TEST(LocalCommunicator, CopiesAndFailsAfterAbort) {
  auto c = make_local_communicator();
  std::vector<float> a{1, 2}, b(2);
  const std::vector<std::int64_t> counts{2};
  ASSERT_TRUE(c->all_to_all_v(a, counts, b, counts));
  EXPECT_EQ(a, b);
  ASSERT_TRUE(c->all_reduce_sum(a));
  EXPECT_EQ(a[1], 2.0f);
  std::vector<float> shard(2);
  ASSERT_TRUE(c->reduce_scatter_sum(a, shard));
  EXPECT_EQ(shard, a);
  c->abort();
  EXPECT_TRUE(c->poisoned());
  EXPECT_EQ(c->barrier().error().kind(), errc::cancelled);
}

// A group of `size` ranks, one thread each, over Gloo (TCP) or through memory.
template <class Fn>
void run_group(const std::string& transport, int size, const std::string& key, Fn fn,
               std::chrono::milliseconds timeout = 20s) {
  memory_store store;
  std::vector<std::thread> threads;
  for (int r = 0; r < size; ++r) {
    threads.emplace_back([&, r] {
      gloo_options opt;
      opt.timeout = timeout;
      auto comm = transport == "gloo" ? make_gloo_communicator(store, key, r, size, opt)
                                      : make_process_communicator(key, r, size, timeout);
      ASSERT_TRUE(comm) << comm.error().to_string();
      EXPECT_EQ((*comm)->transport(), transport);
      fn(**comm, r);
    });
  }
  for (auto& t : threads) t.join();
}

// The same contract over TCP and through memory.
class Communicator : public ::testing::TestWithParam<std::string> {
protected:
  template <class Fn>
  void run_group(int size, const std::string& key, Fn fn, std::chrono::milliseconds timeout = 20s) {
    kernels::run_group(GetParam(), size, GetParam() + "/" + key, fn, timeout);
  }
};
INSTANTIATE_TEST_SUITE_P(Transports, Communicator, ::testing::Values("gloo", "memory"),
                         [](const auto& info) { return info.param; });

TEST_P(Communicator, AllToAllVMovesUnevenAndZeroCounts) {
  const int n = 3;
  // Rank s sends (s + 2*d) % 3 floats to rank d, valued s*100 + d*10 + i: some counts are 0.
  auto count = [](int s, int d) { return static_cast<std::int64_t>((s + 2 * d) % 3); };
  run_group(n, "a2av", [&](communicator& c, int r) {
    std::vector<std::int64_t> sc(n), rc(n);
    std::vector<float> send, recv;
    for (int d = 0; d < n; ++d) {
      sc[d] = count(r, d);
      rc[d] = count(d, r);
      for (std::int64_t i = 0; i < sc[d]; ++i) send.push_back(static_cast<float>(r * 100 + d * 10 + i));
    }
    recv.resize(std::accumulate(rc.begin(), rc.end(), std::int64_t{0}));
    ASSERT_TRUE(c.all_to_all_v(send, sc, recv, rc));
    std::size_t k = 0;
    for (int s = 0; s < n; ++s)
      for (std::int64_t i = 0; i < rc[s]; ++i) EXPECT_EQ(recv[k++], static_cast<float>(s * 100 + r * 10 + i));
  });
}

TEST_P(Communicator, AllReduceAllGatherBroadcastAndBarrierAgree) {
  run_group(3, "mixed", [](communicator& c, int r) {
    std::vector<float> v{static_cast<float>(r), 1.0f};
    ASSERT_TRUE(c.all_reduce_sum(v));
    EXPECT_EQ(v, (std::vector<float>{3.0f, 3.0f}));
    std::vector<float> mine{static_cast<float>(r)}, all(3);
    ASSERT_TRUE(c.all_gather(mine, all));
    EXPECT_EQ(all, (std::vector<float>{0, 1, 2}));
    std::vector<float> b{r == 2 ? 42.0f : 0.0f};
    ASSERT_TRUE(c.broadcast(b, 2));
    EXPECT_EQ(b[0], 42.0f);
    EXPECT_TRUE(c.barrier());
    EXPECT_EQ(c.broadcast(b, 3).error().kind(), errc::invalid_argument);
  });
}

TEST_P(Communicator, AllReduceSumsExactlyForEveryGroupSize) {
  for (int n = 2; n <= 7; ++n)
    run_group(n, "sizes" + std::to_string(n), [n](communicator& c, int r) {
      std::vector<float> v(1000);
      for (std::size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(r * 1000 + static_cast<int>(i));
      ASSERT_TRUE(c.all_reduce_sum(v)) << n;
      for (std::size_t i = 0; i < v.size(); i += 97)
        EXPECT_EQ(v[i], static_cast<float>(1000 * n * (n - 1) / 2 + n * static_cast<int>(i))) << "size " << n;
    });
}

// Each rank's chunk of the sum, bit for bit what all_reduce_sum gives for it, for uneven
// values and group sizes 2..5; a buffer that is not size() chunks is refused.
TEST_P(Communicator, ReduceScatterGivesEachRankItsChunkOfTheAllReduce) {
  for (int n = 2; n <= 5; ++n)
    run_group(n, "rs" + std::to_string(n), [n](communicator& c, int r) {
      const std::size_t chunk = 101;
      std::vector<float> send(chunk * static_cast<std::size_t>(n)), mine(chunk);
      for (std::size_t i = 0; i < send.size(); ++i) send[i] = 1.0f / static_cast<float>(1 + i + 7 * static_cast<std::size_t>(r));
      ASSERT_TRUE(c.reduce_scatter_sum(send, mine)) << n;
      std::vector<float> all = send;
      ASSERT_TRUE(c.all_reduce_sum(all));
      for (std::size_t i = 0; i < chunk; ++i)
        ASSERT_EQ(mine[i], all[static_cast<std::size_t>(r) * chunk + i]) << "size " << n << " rank " << r << " i " << i;
      std::vector<float> wrong(chunk + 1);
      EXPECT_EQ(c.reduce_scatter_sum(send, wrong).error().kind(), errc::invalid_argument);
    });
}

// Rank 1 stays connected but idle until rank 0 is done, so rank 0 sees a silent peer.
void wait_for(const std::atomic<bool>& flag) {
  const auto start = std::chrono::steady_clock::now();
  while (!flag && std::chrono::steady_clock::now() - start < 30s) std::this_thread::yield();
}

TEST_P(Communicator, TimesOutWhenAPeerNeverJoinsTheCollective) {
  std::atomic<bool> finished{false};
  run_group(2, "timeout", [&](communicator& c, int r) {
    if (r == 1) return wait_for(finished);
    auto res = c.barrier();
    finished = true;
    ASSERT_FALSE(res);
    EXPECT_EQ(res.error().kind(), errc::timeout) << res.error().to_string();
    EXPECT_TRUE(c.poisoned());
    EXPECT_FALSE(c.barrier());
  }, 300ms);
}

TEST_P(Communicator, AbortUnblocksAWaitingCollectiveInAnotherThread) {
  std::atomic<bool> finished{false};
  run_group(2, "abort", [&](communicator& c, int r) {
    EXPECT_TRUE(c.barrier());
    if (r == 1) return wait_for(finished);
    std::optional<error> err;
    const auto start = std::chrono::steady_clock::now();
    std::thread waiter{[&] {
      std::vector<float> v(4);
      auto res = c.all_reduce_sum(v);  // rank 1 never joins; the 20 s timeout is far away
      if (!res) err = res.error();
    }};
    c.abort();
    waiter.join();
    finished = true;
    ASSERT_TRUE(err.has_value());
    EXPECT_EQ(err->kind(), errc::cancelled);
    EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
  }, 20s);
}

TEST_P(Communicator, ARankThatAbortsFailsItsPeersInsteadOfLettingThemWait) {
  run_group(3, "peer-abort", [](communicator& c, int r) {
    EXPECT_TRUE(c.barrier());
    if (r == 2) {
      c.abort();
      return;
    }
    std::vector<float> v(16, 1.0f);
    const auto start = std::chrono::steady_clock::now();
    auto res = c.all_reduce_sum(v);  // the 20 s timeout is far away
    ASSERT_FALSE(res);
    EXPECT_EQ(res.error().kind(), errc::disconnected) << res.error().to_string();
    EXPECT_LT(std::chrono::steady_clock::now() - start, 10s);
  });
}

TEST(ProcessCommunicator, AllReduceGivesEveryRankTheSameBitsSummedInRankOrder) {
  const int n = 5;
  std::vector<std::vector<float>> inputs(n), outputs(n);
  std::mt19937 rng{7};
  std::uniform_real_distribution<float> u{-1.0f, 1.0f};
  for (auto& in : inputs) {
    in.resize(1003);
    for (auto& x : in) x = u(rng) * 1e3f;
  }
  run_group("memory", n, "bits", [&](communicator& c, int r) {
    outputs[r] = inputs[r];
    ASSERT_TRUE(c.all_reduce_sum(outputs[r]));
  });
  for (std::size_t i = 0; i < inputs[0].size(); ++i) {
    float expected = inputs[0][i];
    for (int p = 1; p < n; ++p) expected += inputs[p][i];
    for (int r = 0; r < n; ++r) ASSERT_EQ(outputs[r][i], expected) << "rank " << r << " element " << i;
  }
}

TEST(ProcessCommunicator, AMemberThatIsDestroyedFailsThePeersWaitingForIt) {
  memory_store store;
  std::unique_ptr<communicator> peer;
  std::thread joiner{[&] { peer = make_process_communicator("gone", 1, 2, 5s).value(); }};
  auto me = make_process_communicator("gone", 0, 2, 5s);
  joiner.join();
  ASSERT_TRUE(me);
  // Whether the peer goes before or while this rank waits, the barrier fails at once.
  std::thread killer{[&] { peer.reset(); }};
  auto res = (*me)->barrier();
  killer.join();
  ASSERT_FALSE(res);
  EXPECT_EQ(res.error().kind(), errc::disconnected) << res.error().to_string();
  EXPECT_TRUE((*me)->poisoned());
}

TEST(ProcessCommunicator, AnAbortedAttemptStopsWaitingForTheOtherRanksAtOnce) {
  // The peer never joins (its process was stopped); the attempt is aborted while the rank
  // waits (the third time it asks): the wait ends then, not at the 30 s timeout.
  int polls = 0;
  const auto start = std::chrono::steady_clock::now();
  auto r = make_process_communicator("aborted", 0, 2, 30s, [&] { return ++polls >= 3; });
  const auto took = std::chrono::steady_clock::now() - start;
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().kind(), errc::cancelled) << r.error().to_string();
  EXPECT_LT(took, 5s);
}

TEST(ProcessCommunicator, JoiningChecksRankAndSizeAndGivesUpTogether) {
  EXPECT_EQ(make_process_communicator("bad", 2, 2, 1s).error().kind(), errc::invalid_argument);
  EXPECT_EQ(make_process_communicator("bad", 0, 0, 1s).error().kind(), errc::invalid_argument);
  // Ranks 0 and 1 of 3 join, rank 2 never does: rank 0 gives up after its 200 ms, and rank 1,
  // which would wait 5 s, learns at once that the group is gone.
  const auto start = std::chrono::steady_clock::now();
  expected<std::unique_ptr<communicator>> patient = make_error(errc::failed, "not run");
  std::thread other{[&] { patient = make_process_communicator("incomplete", 1, 3, 5s); }};
  auto impatient = make_process_communicator("incomplete", 0, 3, 200ms);
  other.join();
  ASSERT_FALSE(impatient);
  EXPECT_EQ(impatient.error().kind(), errc::timeout);
  ASSERT_FALSE(patient);
  EXPECT_EQ(patient.error().kind(), errc::disconnected) << patient.error().to_string();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 3s);
  auto one = make_process_communicator("one", 0, 1, 1s);
  ASSERT_TRUE(one);
  std::vector<float> v{3.0f};
  EXPECT_TRUE((*one)->all_reduce_sum(v));
  EXPECT_EQ(v[0], 3.0f);
}

TEST(ProcessCommunicator, MismatchedSizesFailEveryRankWithInvalidArgument) {
  run_group("memory", 2, "sizes", [](communicator& c, int r) {
    std::vector<float> v(r == 0 ? 4 : 5, 1.0f);
    auto res = c.all_reduce_sum(v);
    ASSERT_FALSE(res);
    EXPECT_TRUE(res.error().kind() == errc::invalid_argument || res.error().kind() == errc::disconnected)
        << res.error().to_string();
  });
}

TEST(ProcessCommunicator, ATokenNamesThisProcess) {
  EXPECT_EQ(process_token(), process_token());
  EXPECT_NE(process_token().find(std::to_string(::getpid())), std::string::npos);
}

// Gloo writes to its peers with writev(): without this, a peer that dies mid-collective would
// kill the surviving process with SIGPIPE instead of failing the collective.
TEST(GlooCommunicator, AProcessUsingGlooSurvivesWritingToAClosedConnection) {
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::signal(SIGPIPE, SIG_DFL);
    if (!make_gloo_device({})) ::_exit(3);
    int fds[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM, 0, fds) != 0) ::_exit(4);
    ::close(fds[1]);
    const char byte = 1;
    const auto n = ::write(fds[0], &byte, 1);
    ::_exit(n < 0 && errno == EPIPE ? 0 : 5);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_FALSE(WIFSIGNALED(status)) << "killed by signal " << WTERMSIG(status);
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

// A handler the program installed is its own business: the Gloo device leaves it in place.
TEST(GlooCommunicator, KeepsASigpipeHandlerTheProgramInstalled) {
  static std::atomic<int> caught{0};
  struct sigaction mine{}, before{};
  mine.sa_handler = [](int) { caught = 1; };
  sigemptyset(&mine.sa_mask);
  ASSERT_EQ(::sigaction(SIGPIPE, &mine, &before), 0);
  ASSERT_TRUE(make_gloo_device({}));
  struct sigaction now{};
  ::sigaction(SIGPIPE, nullptr, &now);
  EXPECT_EQ(now.sa_handler, mine.sa_handler);
  ::sigaction(SIGPIPE, &before, nullptr);
}

// Devices in one process: groups go through memory, or over Gloo when that is turned off.
class CommunicatorCache : public ::testing::TestWithParam<bool> {};
INSTANTIATE_TEST_SUITE_P(InProcess, CommunicatorCache, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "Memory" : "Gloo"; });

TEST_P(CommunicatorCache, CachesGroupsOfDifferentSizesPerDeviceSet) {
  memory_store store;
  const int devices = 3;
  const bool in_process = GetParam();
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int dev = 0; dev < devices; ++dev) {
    threads.emplace_back([&, dev] {
      communicator_cache cache{store, dev, gloo_options{.hostname = "127.0.0.1", .timeout = 20s, .in_process = in_process}};
      const std::vector<int> world{2, 0, 1};
      auto w = cache.get(world);
      if (!w || (*w)->size() != 3 || (*w)->rank() != dev) ++failures;
      if (w && std::string_view{(*w)->transport()} != (in_process ? "memory" : "gloo")) ++failures;
      // Devices 0 and 1 form a pair; device 2 is alone (a local communicator).
      std::vector<int> mine = dev < 2 ? std::vector<int>{0, 1} : std::vector<int>{2};
      auto g = cache.get(mine);
      if (!g || (*g)->size() != static_cast<int>(mine.size())) ++failures;
      if (g && dev == 2 && std::string_view{(*g)->transport()} != "local") ++failures;
      auto again = cache.get(mine);
      if (!again || again->get() != g->get()) ++failures;
      std::vector<float> v{1.0f};
      if (!(*g)->all_reduce_sum(v) || v[0] != static_cast<float>(mine.size())) ++failures;
      if (!(*w)->all_reduce_sum(v)) ++failures;
      if (cache.size() != 2) ++failures;
      const std::vector<int> foreign{7, 8};
      if (cache.get(foreign)) ++failures;
      (void)(*w)->barrier();
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures, 0);
}

}  // namespace
}  // namespace flexsp::kernels

namespace flexsp::kernels {
namespace {

TEST(NcclCommunicatorCache, AGroupOfOneIsLocalAndNeedsNoGpu) {
  memory_store store;
  nccl_communicator_cache cache{store, 3, 0, nccl_options{}};
  const std::vector<int> me{3}, others{1, 2};
  auto a = cache.get(me, 1);
  ASSERT_TRUE(a) << a.error().to_string();
  EXPECT_EQ((*a)->size(), 1);
  EXPECT_TRUE((*a)->reduces_device_buffers());
  auto again = cache.get(me, 1);
  ASSERT_TRUE(again);
  EXPECT_EQ(a->get(), again->get());
  EXPECT_EQ(cache.get(others, 1).error().kind(), errc::invalid_argument);
  const std::vector<int> twice{3, 3};
  EXPECT_EQ(cache.get(twice, 1).error().kind(), errc::invalid_argument);
  auto next = cache.get(me, 2);
  ASSERT_TRUE(next);
  EXPECT_NE(next->get(), a->get());
  cache.evict_before(2);
  EXPECT_EQ(cache.size(), 1u);
  EXPECT_TRUE((*a)->poisoned());
  cache.abort_all();
  EXPECT_EQ(cache.size(), 0u);
}

TEST(NcclCommunicatorCache, ALargerGroupWithoutNcclOrAGpuFailsSayingWhy) {
  if (query_nccl().available && gpu::open_device(0)) GTEST_SKIP() << "NCCL and a GPU are here: tests/gpu covers it";
  memory_store store;
  nccl_communicator_cache cache{store, 0, 0, nccl_options{.timeout = std::chrono::milliseconds{200}}};
  const std::vector<int> pair{0, 1};
  auto r = cache.get(pair, 1);
  ASSERT_FALSE(r);
  EXPECT_FALSE(r.error().message().empty());
  EXPECT_EQ(cache.size(), 0u);
}

TEST(GroupCache, GlooAndNcclCachesShareOneInterface) {
  memory_store store;
  std::vector<std::unique_ptr<group_cache>> caches;
  caches.push_back(std::make_unique<communicator_cache>(store, 5, gloo_options{}));
  caches.push_back(std::make_unique<nccl_communicator_cache>(store, 5, 0, nccl_options{}));
  const std::vector<int> me{5};
  for (auto& c : caches) {
    auto g = c->get(me, 7);
    ASSERT_TRUE(g) << g.error().to_string();
    std::vector<float> x{1, 2};
    EXPECT_TRUE((*g)->all_reduce_sum(x));
    EXPECT_EQ(x[1], 2.0f);
    EXPECT_EQ(c->size(), 1u);
  }
}

}  // namespace
}  // namespace flexsp::kernels
