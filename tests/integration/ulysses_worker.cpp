// One rank of a multi-process test: joins Gloo groups through a file rendezvous store in a
// directory shared with the other processes, runs its part, and writes results to a file.
//
//   ulysses_worker sp     STORE DEGREE RANK OUT   SP forward/backward of the test batch
//   ulysses_worker plan   STORE DEVICE OUT        the multi-group plan, all-reduce, AdamW step
//   ulysses_worker a2a    STORE SIZE RANK OUT     all-to-all-v with uneven and zero counts
//   ulysses_worker die    STORE RANK OUT          rank 1 is killed; rank 0 reports how it failed
//   ulysses_worker hang   STORE RANK OUT          rank 1 stops; rank 0 times out (2 s)
//   ulysses_worker abort  STORE RANK OUT          rank 1 stops; rank 0 aborts from another thread
// Exit status 0 on success; the parent test checks the results.
#include <csignal>
#include <cstdio>
#include <numeric>
#include <string>
#include <thread>

#include "flexsp/kernels/data.hpp"
#include "flexsp/kernels/gloo_communicator.hpp"
#include "ulysses_common.hpp"

using namespace flexsp;
using namespace flexsp::kernels;
using namespace flexsp::kernels::testing;
using namespace std::chrono_literals;

namespace {

int fail(const std::string& what) {
  std::fprintf(stderr, "worker: %s\n", what.c_str());
  return 2;
}

int run_sp(rendezvous_store& store, int d, int r, const std::string& out) {
  // A group of one is the local communicator, as communicator_cache hands it out.
  auto comm = d == 1 ? expected<std::unique_ptr<communicator>>{make_local_communicator()}
                     : make_gloo_communicator(store, "sp/" + std::to_string(d), r, d, gloo_options{.timeout = 60s});
  if (!comm) return fail(comm.error().to_string());
  auto mdl = model::create(kSpModel, kModelSeed).value();
  auto seqs = synthetic_sequences(kSpLengths, kDataSeed);
  const auto total = std::accumulate(kSpLengths.begin(), kSpLengths.end(), std::int64_t{0});
  auto layout = ulysses_layout::make(kSpLengths, d, r, kSpModel.heads).value();
  auto in = shard_inputs(layout, seqs).value();
  auto res = mdl.forward_backward(**comm, layout, in, 1.0f / static_cast<float>(total), {.backward = true, .keep_logits = true});
  if (!res) return fail(res.error().to_string());
  if (auto ok = all_reduce_gradients(**comm, mdl); !ok) return fail(ok.error().to_string());
  std::vector<float> loss{static_cast<float>(res->loss_sum)};
  arrays a{{"loss", loss},
           {"logits", std::vector<float>(res->logits.span().begin(), res->logits.span().end())},
           {"grads", std::vector<float>(mdl.host_grads().begin(), mdl.host_grads().end())}};
  return write_arrays(out, a) ? 0 : fail("cannot write " + out);
}

int run_plan(rendezvous_store& store, int device, const std::string& out) {
  communicator_cache cache{store, device, gloo_options{.timeout = 60s}};
  auto mdl = model::create(kSpModel, kModelSeed).value();
    auto seqs = synthetic_sequences(kPlanLengths, kDataSeed);
  const auto total = std::accumulate(kPlanLengths.begin(), kPlanLengths.end(), std::int64_t{0});
  double loss = 0;
  (void)mdl.zero_grads().value();
  for (const auto& micro_batch : kPlan) {
    for (const auto& g : micro_batch) {
      if (communicator_cache::rank_in(g.devices, device) < 0) continue;
      auto comm = cache.get(g.devices);
      if (!comm) return fail(comm.error().to_string());
      std::vector<std::vector<std::int32_t>> mine;
      for (auto s : g.sequences) mine.push_back(seqs[s]);
      auto res = run_micro_batch(mdl, **comm, mine, 1.0f / static_cast<float>(total));
      if (!res) return fail(res.error().to_string());
      loss += res->loss_sum;
    }
  }
  std::vector<int> all(kPlanDevices);
  std::iota(all.begin(), all.end(), 0);
  auto world = cache.get(all);
  if (!world) return fail(world.error().to_string());
  if (auto ok = all_reduce_gradients(**world, mdl); !ok) return fail(ok.error().to_string());
  std::vector<float> loss_v{static_cast<float>(loss)};
  if (auto ok = (*world)->all_reduce_sum(loss_v); !ok) return fail(ok.error().to_string());
  (void)mdl.optimizer_step(kPlanAdam, kPlanClip).value();
  std::vector<float> groups{static_cast<float>(cache.size())};
  arrays a{{"loss", loss_v}, {"params", std::vector<float>(mdl.host_params().begin(), mdl.host_params().end())},
           {"groups", groups}};
  return write_arrays(out, a) ? 0 : fail("cannot write " + out);
}

int run_a2a(rendezvous_store& store, int n, int r) {
  auto comm = make_gloo_communicator(store, "a2a", r, n, gloo_options{.timeout = 60s});
  if (!comm) return fail(comm.error().to_string());
  // Rank s sends (s * 7 + d * 3) % 4 floats to rank d (many zero counts), valued s*1000 + d*10 + i.
  auto count = [](int s, int d) { return static_cast<std::int64_t>((s * 7 + d * 3) % 4); };
  std::vector<std::int64_t> sc(n), rc(n);
  std::vector<float> send, recv;
  for (int d = 0; d < n; ++d) {
    sc[d] = count(r, d);
    rc[d] = count(d, r);
    for (std::int64_t i = 0; i < sc[d]; ++i) send.push_back(static_cast<float>(r * 1000 + d * 10 + i));
  }
  recv.resize(std::accumulate(rc.begin(), rc.end(), std::int64_t{0}));
  if (auto ok = (*comm)->all_to_all_v(send, sc, recv, rc); !ok) return fail(ok.error().to_string());
  std::size_t k = 0;
  for (int s = 0; s < n; ++s)
    for (std::int64_t i = 0; i < rc[s]; ++i)
      if (recv[k++] != static_cast<float>(s * 1000 + r * 10 + i)) return fail("wrong value from rank " + std::to_string(s));
  return (*comm)->barrier() ? 0 : fail("final barrier");
}

// Rank 1 misbehaves after a successful barrier; rank 0 reports the error kind and how long it
// waited in an all-reduce: {"elapsed_ms", "kind"} with kind the errc value.
int run_failure(rendezvous_store& store, const std::string& mode, int r, const std::string& out) {
  const auto timeout = mode == "hang" ? 2s : 60s;
  auto comm = make_gloo_communicator(store, "failure/" + mode, r, 2, gloo_options{.timeout = timeout});
  if (!comm) return fail(comm.error().to_string());
  if (auto ok = (*comm)->barrier(); !ok) return fail(ok.error().to_string());
  if (r == 1) {
    std::raise(mode == "die" ? SIGKILL : SIGSTOP);
    return 0;
  }
  std::thread aborter;
  if (mode == "abort") {
    // Another thread (the device actor, told by the head that the peer's node is lost).
    aborter = std::thread{[c = comm->get()] {
      std::this_thread::sleep_for(500ms);
      c->abort();
    }};
  }
  std::vector<float> v(1024, 1.0f);
  const auto start = std::chrono::steady_clock::now();
  auto res = (*comm)->all_reduce_sum(v);
  const auto elapsed = std::chrono::duration<float, std::milli>(std::chrono::steady_clock::now() - start).count();
  if (aborter.joinable()) aborter.join();
  if (res) return fail("all-reduce with a failed peer succeeded");
  std::fprintf(stderr, "worker: rank 0 got %s\n", res.error().to_string().c_str());
  arrays a{{"elapsed_ms", {elapsed}}, {"kind", {static_cast<float>(res.error().kind())}}};
  return write_arrays(out, a) ? 0 : fail("cannot write " + out);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) return fail("usage: ulysses_worker MODE STORE ARGS... OUT");
  const std::string mode = argv[1];
  auto store = file_store::open(argv[2]);
  if (!store) return fail(store.error().to_string());
  if (mode == "sp" && argc == 6) return run_sp(**store, std::stoi(argv[3]), std::stoi(argv[4]), argv[5]);
  if (mode == "plan" && argc == 5) return run_plan(**store, std::stoi(argv[3]), argv[4]);
  if (mode == "a2a" && argc == 6) return run_a2a(**store, std::stoi(argv[3]), std::stoi(argv[4]));
  if ((mode == "die" || mode == "hang" || mode == "abort") && argc == 5)
    return run_failure(**store, mode, std::stoi(argv[3]), argv[4]);
  return fail("bad arguments for mode " + mode);
}
