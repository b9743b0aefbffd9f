// A host-memory stand-in for the NCCL calls flexsp makes, built as libnccl.so.2 so that the
// backend's dlopen finds it. Ranks are threads of one process (each on an emulated GPU), joined
// by the unique id. It keeps the semantics the backend relies on:
//   - non-blocking init: ncclCommInitRankConfig returns ncclInProgress and the communicator
//     reports ncclInProgress from ncclCommGetAsyncError until every rank has joined;
//   - collectives and grouped send/recv are asynchronous: they run on the communicator's own
//     thread (its "kernel"), and the stream they were issued on reads as busy
//     (flexsp_emu_stream_busy, which fake_cudart's cudaStreamQuery asks) until they finish;
//   - a collective waits for every rank; sends are buffered, so a group of sends and receives
//     in any order completes;
//   - ncclCommAbort never blocks on peers; the peers' pending and later operations fail with
//     ncclRemoteError, as with a peer whose connection closed.
// Only what flexsp uses: float data, sum reductions.
#include <nccl.h>

#include <atomic>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace {

struct group_state {
  explicit group_state(int n) : n{n} {}
  const int n;
  std::mutex m;
  std::condition_variable cv;
  int joined = 0;
  bool broken = false;
  struct slot {
    int arrived = 0, left = 0;
    std::vector<std::vector<char>> data;
  };
  std::map<std::uint64_t, slot> slots;                               // collectives, by sequence number
  std::map<std::pair<int, int>, std::deque<std::vector<char>>> mail;  // (from, to) -> sends in order
};

std::mutex g_registry_m;
std::map<std::string, std::weak_ptr<group_state>> g_registry;

std::mutex g_streams_m;
std::map<const void*, int> g_busy;  // stream -> operations not finished

void stream_add(const void* s, int d) {
  std::lock_guard l{g_streams_m};
  if ((g_busy[s] += d) == 0) g_busy.erase(s);
}

thread_local std::string t_last_error;

}  // namespace

struct ncclComm {
  std::shared_ptr<group_state> g;
  int rank = 0;
  std::uint64_t next_seq = 0;  // issuing thread only
  std::atomic<bool> aborted{false};
  std::atomic<int> error{ncclSuccess};
  std::mutex qm;
  std::condition_variable qcv;
  std::deque<std::pair<const void*, std::function<ncclResult_t()>>> queue;
  bool stop = false;
  std::thread worker;

  void run() {
    for (;;) {
      std::pair<const void*, std::function<ncclResult_t()>> op;
      {
        std::unique_lock l{qm};
        qcv.wait(l, [&] { return stop || !queue.empty(); });
        if (queue.empty()) return;
        op = std::move(queue.front());
        queue.pop_front();
      }
      ncclResult_t r = error.load() == ncclSuccess && !aborted ? op.second() : ncclRemoteError;
      if (r != ncclSuccess && error.load() == ncclSuccess) error = r;
      stream_add(op.first, -1);
    }
  }

  ncclResult_t enqueue(cudaStream_t s, std::function<ncclResult_t()> f) {
    if (aborted) return ncclInvalidUsage;
    stream_add(s, +1);
    std::lock_guard l{qm};
    queue.emplace_back(s, std::move(f));
    qcv.notify_one();
    return ncclSuccess;
  }

  // Waits (group lock held) until `ready` or the group broke; false when it broke.
  bool wait(std::unique_lock<std::mutex>& l, const std::function<bool()>& ready) {
    g->cv.wait(l, [&] { return ready() || g->broken || aborted; });
    return ready() && !aborted;
  }

  // One collective: every rank contributes `bytes` of `in`; `finish` reads all contributions.
  ncclResult_t collective(cudaStream_t s, const void* in, std::size_t bytes,
                          std::function<void(const std::vector<std::vector<char>>&)> finish) {
    const auto seq = next_seq++;
    std::vector<char> mine(static_cast<const char*>(in), static_cast<const char*>(in) + bytes);
    return enqueue(s, [this, seq, mine = std::move(mine), finish = std::move(finish)]() mutable {
      std::unique_lock l{g->m};
      auto& slot = g->slots[seq];
      slot.data.resize(static_cast<std::size_t>(g->n));
      slot.data[static_cast<std::size_t>(rank)] = std::move(mine);
      ++slot.arrived;
      g->cv.notify_all();
      if (!wait(l, [&] { return slot.arrived == g->n; })) return ncclRemoteError;
      finish(slot.data);
      if (++slot.left == g->n) g->slots.erase(seq);
      return ncclSuccess;
    });
  }
};

namespace {

struct p2p {
  bool send;
  void* buf;
  std::size_t bytes;
  int peer;
  ncclComm_t comm;
  cudaStream_t stream;
};
thread_local int t_group_depth = 0;
thread_local std::vector<p2p> t_group;

ncclResult_t fail(ncclResult_t r, const char* why) {
  t_last_error = why;
  return r;
}

ncclResult_t submit_p2p(std::vector<p2p> ops) {
  std::map<ncclComm_t, std::vector<p2p>> by_comm;
  for (auto& o : ops) by_comm[o.comm].push_back(o);
  for (auto& [comm, list] : by_comm) {
    // Sends are copied now (the caller may reuse the buffer once the stream is done).
    std::vector<std::pair<int, std::vector<char>>> sends;
    std::vector<p2p> recvs;
    for (auto& o : list) {
      if (o.send)
        sends.emplace_back(o.peer, std::vector<char>(static_cast<char*>(o.buf), static_cast<char*>(o.buf) + o.bytes));
      else
        recvs.push_back(o);
    }
    const auto r = comm->enqueue(list.front().stream, [comm, sends = std::move(sends), recvs]() mutable {
      auto* g = comm->g.get();
      std::unique_lock l{g->m};
      for (auto& [peer, data] : sends) g->mail[{comm->rank, peer}].push_back(std::move(data));
      g->cv.notify_all();
      for (const auto& rv : recvs) {
        auto& box = g->mail[{rv.peer, comm->rank}];
        if (!comm->wait(l, [&] { return !box.empty(); })) return ncclRemoteError;
        auto data = std::move(box.front());
        box.pop_front();
        if (data.size() != rv.bytes) {
          t_last_error = "send and receive sizes differ";
          return ncclInvalidUsage;
        }
        std::memcpy(rv.buf, data.data(), data.size());
      }
      return ncclSuccess;
    });
    if (r != ncclSuccess) return r;
  }
  return ncclSuccess;
}

ncclResult_t check(ncclComm_t comm, ncclDataType_t type) {
  if (comm == nullptr) return fail(ncclInvalidArgument, "null communicator");
  if (type != ncclFloat32) return fail(ncclInvalidArgument, "the emulation supports float data only");
  if (comm->error.load() != ncclSuccess) return static_cast<ncclResult_t>(comm->error.load());
  return ncclSuccess;
}

}  // namespace

extern "C" {

// Asked by fake_cudart: whether NCCL work issued on `stream` is still running.
int flexsp_emu_stream_busy(const void* stream) {
  std::lock_guard l{g_streams_m};
  return g_busy.count(stream) ? 1 : 0;
}

ncclResult_t ncclGetVersion(int* v) {
  *v = 22304;
  return ncclSuccess;
}

ncclResult_t ncclGetUniqueId(ncclUniqueId* id) {
  std::random_device rd;
  for (auto& c : id->internal) c = static_cast<char>(rd());
  return ncclSuccess;
}

ncclResult_t ncclCommInitRankConfig(ncclComm_t* out, int nranks, ncclUniqueId id, int rank, ncclConfig_t* config) {
  if (nranks < 1 || rank < 0 || rank >= nranks) return fail(ncclInvalidArgument, "bad rank or size");
  std::shared_ptr<group_state> g;
  {
    std::lock_guard l{g_registry_m};
    const std::string key(id.internal, sizeof id.internal);
    g = g_registry[key].lock();
    if (!g) {
      g = std::make_shared<group_state>(nranks);
      g_registry[key] = g;
    }
  }
  if (g->n != nranks) return fail(ncclInvalidArgument, "ranks disagree on the group size");
  auto* c = new ncclComm;
  c->g = g;
  c->rank = rank;
  c->worker = std::thread{[c] { c->run(); }};
  {
    std::lock_guard l{g->m};
    ++g->joined;
    g->cv.notify_all();
  }
  *out = c;
  const bool blocking = config == nullptr || config->blocking != 0;
  if (!blocking) return ncclInProgress;
  std::unique_lock l{g->m};
  g->cv.wait(l, [&] { return g->joined >= g->n; });
  return ncclSuccess;
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t* state) {
  if (comm->error.load() != ncclSuccess) {
    *state = static_cast<ncclResult_t>(comm->error.load());
    return ncclSuccess;
  }
  std::lock_guard l{comm->g->m};
  *state = comm->g->joined >= comm->g->n ? ncclSuccess : ncclInProgress;
  return ncclSuccess;
}

const char* ncclGetLastError(ncclComm_t) { return t_last_error.c_str(); }

static void stop_worker(ncclComm_t comm) {
  {
    std::lock_guard l{comm->qm};
    comm->stop = true;
    for (auto& op : comm->queue) stream_add(op.first, -1);
    comm->queue.clear();
    comm->qcv.notify_one();
  }
  if (comm->worker.joinable()) comm->worker.join();
}

ncclResult_t ncclCommFinalize(ncclComm_t comm) {
  // Lets queued work finish: the worker drains the queue before it stops.
  {
    std::unique_lock l{comm->qm};
    comm->stop = true;
    comm->qcv.notify_one();
  }
  if (comm->worker.joinable()) comm->worker.join();
  return ncclSuccess;
}

ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  stop_worker(comm);
  delete comm;
  return ncclSuccess;
}

ncclResult_t ncclCommAbort(ncclComm_t comm) {
  if (comm == nullptr) return ncclSuccess;
  comm->aborted = true;
  {
    std::lock_guard l{comm->g->m};
    comm->g->broken = true;  // the peers see a remote error, as when a connection closes
    comm->g->cv.notify_all();
  }
  stop_worker(comm);
  delete comm;
  return ncclSuccess;
}

ncclResult_t ncclAllReduce(const void* send, void* recv, size_t count, ncclDataType_t type, ncclRedOp_t op,
                           ncclComm_t comm, cudaStream_t stream) {
  if (auto r = check(comm, type); r != ncclSuccess) return r;
  if (op != ncclSum) return fail(ncclInvalidArgument, "the emulation supports sums only");
  return comm->collective(stream, send, count * sizeof(float), [recv, count](const auto& all) {
    auto* out = static_cast<float*>(recv);
    for (std::size_t i = 0; i < count; ++i) {
      float s = 0;
      for (const auto& d : all) s += reinterpret_cast<const float*>(d.data())[i];
      out[i] = s;
    }
  });
}

ncclResult_t ncclAllGather(const void* send, void* recv, size_t count, ncclDataType_t type, ncclComm_t comm,
                           cudaStream_t stream) {
  if (auto r = check(comm, type); r != ncclSuccess) return r;
  return comm->collective(stream, send, count * sizeof(float), [recv, count](const auto& all) {
    for (std::size_t p = 0; p < all.size(); ++p)
      std::memcpy(static_cast<float*>(recv) + p * count, all[p].data(), count * sizeof(float));
  });
}

ncclResult_t ncclReduceScatter(const void* send, void* recv, size_t count, ncclDataType_t type, ncclRedOp_t op,
                               ncclComm_t comm, cudaStream_t stream) {
  if (auto r = check(comm, type); r != ncclSuccess) return r;
  if (op != ncclSum) return fail(ncclInvalidArgument, "the emulation supports sums only");
  const std::size_t first = count * static_cast<std::size_t>(comm->rank);
  return comm->collective(stream, send, count * static_cast<std::size_t>(comm->g->n) * sizeof(float),
                          [recv, count, first](const auto& all) {
                            auto* out = static_cast<float*>(recv);
                            for (std::size_t i = 0; i < count; ++i) {
                              float s = 0;
                              for (const auto& d : all) s += reinterpret_cast<const float*>(d.data())[first + i];
                              out[i] = s;
                            }
                          });
}

ncclResult_t ncclBroadcast(const void* send, void* recv, size_t count, ncclDataType_t type, int root, ncclComm_t comm,
                           cudaStream_t stream) {
  if (auto r = check(comm, type); r != ncclSuccess) return r;
  if (root < 0 || root >= comm->g->n) return fail(ncclInvalidArgument, "root outside the group");
  const bool mine = comm->rank == root;
  return comm->collective(stream, mine ? send : recv, mine ? count * sizeof(float) : 0,
                          [recv, count, root](const auto& all) {
                            std::memcpy(recv, all[static_cast<std::size_t>(root)].data(), count * sizeof(float));
                          });
}

ncclResult_t ncclGroupStart() {
  ++t_group_depth;
  return ncclSuccess;
}

ncclResult_t ncclGroupEnd() {
  if (t_group_depth == 0) return fail(ncclInvalidUsage, "ncclGroupEnd without ncclGroupStart");
  if (--t_group_depth > 0) return ncclSuccess;
  auto ops = std::move(t_group);
  t_group.clear();
  return ops.empty() ? ncclSuccess : submit_p2p(std::move(ops));
}

static ncclResult_t point_to_point(bool send, const void* buf, size_t count, ncclDataType_t type, int peer,
                                   ncclComm_t comm, cudaStream_t stream) {
  if (auto r = check(comm, type); r != ncclSuccess) return r;
  if (peer < 0 || peer >= comm->g->n) return fail(ncclInvalidArgument, "peer outside the group");
  p2p op{send, const_cast<void*>(buf), count * sizeof(float), peer, comm, stream};
  if (t_group_depth == 0) return submit_p2p({op});
  t_group.push_back(op);
  return ncclSuccess;
}

ncclResult_t ncclSend(const void* buf, size_t count, ncclDataType_t type, int peer, ncclComm_t comm,
                      cudaStream_t stream) {
  return point_to_point(true, buf, count, type, peer, comm, stream);
}

ncclResult_t ncclRecv(void* buf, size_t count, ncclDataType_t type, int peer, ncclComm_t comm, cudaStream_t stream) {
  return point_to_point(false, buf, count, type, peer, comm, stream);
}

}  // extern "C"
