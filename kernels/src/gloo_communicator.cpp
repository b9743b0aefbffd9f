// Gloo headers stay in this file: nothing else in the project sees them.
#include "flexsp/kernels/gloo_communicator.hpp"

#include <signal.h>

#include <algorithm>
#include <cstring>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <optional>
#include <thread>

#include <gloo/allgather.h>
#include <gloo/allreduce.h>
#include <gloo/alltoallv.h>
#include <gloo/barrier.h>
#include <gloo/broadcast.h>
#include <gloo/common/error.h>
#include <gloo/math.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/prefix_store.h>
#include <gloo/rendezvous/store.h>
#include <gloo/transport/tcp/device.h>

#include <fmt/ranges.h>

#include "flexsp/core/log.hpp"
#include "flexsp/kernels/process_communicator.hpp"

namespace flexsp::kernels {

class gloo_device {
public:
  explicit gloo_device(std::shared_ptr<gloo::transport::Device> d) : device{std::move(d)} {}
  std::shared_ptr<gloo::transport::Device> device;
};

namespace {

// Gloo's store interface reports failure by throwing; its callers (connectFullMesh) let the
// exception escape to make_gloo_communicator, which turns it back into an error.
class store_adapter final : public gloo::rendezvous::Store {
public:
  store_adapter(rendezvous_store& store, std::chrono::milliseconds timeout) : store_{store}, timeout_{timeout} {}

  void set(const std::string& key, const std::vector<char>& data) override {
    if (auto r = store_.set(key, data); !r) throw gloo::IoException(r.error().to_string());
  }
  std::vector<char> get(const std::string& key) override {
    auto r = store_.get(key, timeout_);
    if (!r) throw gloo::IoException(r.error().to_string());
    return std::move(*r);
  }
  void wait(const std::vector<std::string>& keys) override { wait(keys, timeout_); }
  void wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& timeout) override {
    if (auto r = store_.wait(keys, timeout); !r) throw gloo::IoException(r.error().to_string());
  }

private:
  rendezvous_store& store_;
  std::chrono::milliseconds timeout_;
};

/// A Gloo context whose full mesh of pairs can be given up while it connects: Gloo's own
/// connectFullMesh waits in each pair's connect (up to the timeout, pair after pair) for peers
/// that may have moved on. Here the pairs exist before any connect, and `cancelled` (polled
/// while connecting) closes them, which ends the waits at once.
class abortable_mesh final : public gloo::Context {
public:
  using gloo::Context::Context;

  void connect(gloo::rendezvous::Store& store, const std::shared_ptr<gloo::transport::Device>& device,
               const std::function<bool()>& cancelled) {
    device_ = device;
    auto transport = device->createContext(rank, size);
    transport->setTimeout(getTimeout());
    // This rank's address for each peer: [peer rank, length, bytes]...
    std::vector<char> mine;
    for (int peer = 0; peer < size; ++peer) {
      if (peer == rank) continue;
      const auto bytes = transport->createPair(peer)->address().bytes();
      append(mine, static_cast<std::uint32_t>(peer));
      append(mine, static_cast<std::uint32_t>(bytes.size()));
      mine.insert(mine.end(), bytes.begin(), bytes.end());
    }
    transportContext_ = transport;
    store.set(fmt::format("mesh/{}", rank), mine);
    std::atomic<bool> done{false};
    std::thread watcher;
    if (cancelled)
      watcher = std::thread{[&] {
        while (!done.load()) {
          if (cancelled()) {
            closeConnections();
            return;
          }
          std::this_thread::sleep_for(std::chrono::milliseconds{20});
        }
      }};
    try {
      for (int peer = 0; peer < size; ++peer) {
        if (peer == rank) continue;
        const auto theirs = store.get(fmt::format("mesh/{}", peer));
        transport->getPair(peer)->connect(address_for(theirs, peer));
      }
    } catch (...) {
      done = true;
      if (watcher.joinable()) watcher.join();
      if (cancelled && cancelled()) throw gloo::IoException("connecting the group was cancelled (the attempt was aborted)");
      throw;
    }
    done = true;
    if (watcher.joinable()) watcher.join();
  }

private:
  static void append(std::vector<char>& out, std::uint32_t v) {
    const auto* p = reinterpret_cast<const char*>(&v);
    out.insert(out.end(), p, p + sizeof v);
  }
  static std::uint32_t read(const std::vector<char>& in, std::size_t& at) {
    if (at + sizeof(std::uint32_t) > in.size()) throw gloo::IoException("malformed mesh address list");
    std::uint32_t v = 0;
    std::memcpy(&v, in.data() + at, sizeof v);
    at += sizeof v;
    return v;
  }
  // The address rank `peer` published for this rank.
  std::vector<char> address_for(const std::vector<char>& list, int peer) const {
    for (std::size_t at = 0; at < list.size();) {
      const auto for_rank = read(list, at);
      const auto n = read(list, at);
      if (at + n > list.size()) throw gloo::IoException("malformed mesh address list");
      if (static_cast<int>(for_rank) == rank)
        return std::vector<char>(list.begin() + static_cast<std::ptrdiff_t>(at),
                                 list.begin() + static_cast<std::ptrdiff_t>(at + n));
      at += n;
    }
    throw gloo::IoException(fmt::format("rank {} published no address for rank {}", peer, rank));
  }
};

error from_gloo(const std::exception& e, std::string_view op) {
  const std::string what = e.what();
  const bool timed_out = what.find("imed out") != std::string::npos || what.find("imeout") != std::string::npos;
  return error{timed_out ? errc::timeout : errc::disconnected, fmt::format("gloo {} failed: {}", op, what)};
}

struct job {
  std::function<void()> fn;
  bool done = false;
  std::optional<error> err;
};

// State shared by the communicator and its worker thread; the worker may outlive the
// communicator after an abort (it still holds staging buffers Gloo writes into).
struct shared_state {
  std::shared_ptr<gloo::Context> ctx;
  std::shared_ptr<gloo_device> device;
  std::mutex mutex;
  std::condition_variable cv;
  std::deque<std::shared_ptr<job>> queue;
  bool stop = false;
  bool busy = false;
  std::atomic<bool> aborted{false};
  std::atomic<bool> poisoned{false};
  // Staging buffers, reused across collectives (grow-only): Gloo reads and writes these,
  // never the caller's memory, so an abandoned collective cannot touch freed memory.
  // Collectives run one at a time, and none is accepted after a failure.
  std::vector<float> in;
  std::vector<float> out;
};

float* staging(std::vector<float>& buf, std::size_t n) {
  if (buf.size() < std::max<std::size_t>(n, 1)) buf.resize(std::max<std::size_t>(n, 1));
  return buf.data();
}

void worker_loop(std::shared_ptr<shared_state> st) {
  for (;;) {
    std::shared_ptr<job> j;
    {
      std::unique_lock lock{st->mutex};
      st->cv.wait(lock, [&] { return st->stop || !st->queue.empty(); });
      if (st->queue.empty()) return;
      j = std::move(st->queue.front());
      st->queue.pop_front();
      st->busy = true;
    }
    std::optional<error> err;
    try {
      j->fn();
    } catch (const gloo::Exception& e) {
      err = from_gloo(e, "collective");
    } catch (const std::exception& e) {
      err = error{errc::failed, fmt::format("gloo collective failed: {}", e.what())};
    }
    {
      std::lock_guard lock{st->mutex};
      j->done = true;
      j->err = std::move(err);
      st->busy = false;
    }
    st->cv.notify_all();
  }
}

class gloo_communicator final : public communicator {
public:
  gloo_communicator(std::shared_ptr<shared_state> st, std::chrono::milliseconds timeout)
      : st_{std::move(st)}, timeout_{timeout}, rank_{st_->ctx->rank}, size_{st_->ctx->size} {
    worker_ = std::thread{worker_loop, st_};
  }

  ~gloo_communicator() override {
    bool running;
    {
      std::lock_guard lock{st_->mutex};
      st_->stop = true;
      running = st_->busy || !st_->queue.empty();
    }
    st_->cv.notify_all();
    if (running) {
      // A collective is still blocked in Gloo (only after an abort or a timeout): close the
      // connections so it fails promptly, and let it finish on its own.
      close_connections();
      worker_.detach();
    } else {
      worker_.join();
    }
  }

  int rank() const noexcept override { return rank_; }
  int size() const noexcept override { return size_; }

  expected<void> all_to_all_v(std::span<const float> send, std::span<const std::int64_t> send_counts,
                              std::span<float> recv, std::span<const std::int64_t> recv_counts) override {
    FLEXSP_TRY_ASSIGN(const auto totals, check_all_to_all_v(size_, send, send_counts, recv, recv_counts));
    FLEXSP_TRY(usable("all_to_all_v"));
    // Gloo rejects empty buffers: staging always holds at least one element.
    float* in = staging(st_->in, static_cast<std::size_t>(totals.send));
    float* out = staging(st_->out, static_cast<std::size_t>(totals.recv));
    std::copy_n(send.begin(), totals.send, in);
    std::vector<std::int64_t> sc(send_counts.begin(), send_counts.end()), rc(recv_counts.begin(), recv_counts.end());
    const auto tag = next_tag();
    FLEXSP_TRY(submit([ctx = st_->ctx, in, out, sc, rc, tag, t = timeout_] {
      gloo::AlltoallvOptions opts(ctx);
      opts.setInput(in, sc);
      opts.setOutput(out, rc);
      opts.setTag(tag);
      opts.setTimeout(t);
      gloo::alltoallv(opts);
    }, "all_to_all_v"));
    std::copy_n(out, totals.recv, recv.begin());
    return {};
  }

  expected<void> all_reduce_sum(std::span<float> data) override {
    if (data.empty()) return barrier();
    FLEXSP_TRY(usable("all_reduce"));
    float* buf = staging(st_->in, data.size());
    std::copy(data.begin(), data.end(), buf);
    const auto tag = next_tag();
    FLEXSP_TRY(submit([ctx = st_->ctx, buf, n = data.size(), tag, t = timeout_] {
      gloo::AllreduceOptions opts(ctx);
      opts.setOutput(buf, n);
      opts.setReduceFunction(
          static_cast<void (*)(void*, const void*, const void*, size_t)>(&gloo::sum<float>));
      opts.setTag(tag);
      opts.setTimeout(t);
      // log2(n) exchange rounds instead of the ring's 2(n-1): the gradient and loss reductions of
      // a step are small and latency-bound on these links.
      opts.setAlgorithm(gloo::AllreduceOptions::Algorithm::BCUBE);
      gloo::allreduce(opts);
    }, "all_reduce"));
    std::copy_n(buf, data.size(), data.begin());
    return {};
  }

  // Gloo's options API has no reduce-scatter: the whole buffer is all-reduced (the same bits as
  // all_reduce_sum) and each rank keeps its chunk, moving twice the bytes a ring reduce-scatter would.
  expected<void> reduce_scatter_sum(std::span<const float> send, std::span<float> recv) override {
    if (send.size() != recv.size() * static_cast<std::size_t>(size_))
      return make_error(errc::invalid_argument, "reduce_scatter_sum: send {} != {} ranks x recv {}", send.size(),
                        size_, recv.size());
    std::vector<float> all(send.begin(), send.end());
    FLEXSP_TRY(all_reduce_sum(all));
    std::copy_n(all.begin() + static_cast<std::ptrdiff_t>(recv.size() * static_cast<std::size_t>(rank_)), recv.size(),
                recv.begin());
    return {};
  }

  expected<void> all_gather(std::span<const float> send, std::span<float> recv) override {
    if (recv.size() != send.size() * static_cast<std::size_t>(size_))
      return make_error(errc::invalid_argument, "all_gather: recv {} != {} ranks x send {}", recv.size(), size_,
                        send.size());
    if (send.empty()) return barrier();
    FLEXSP_TRY(usable("all_gather"));
    float* in = staging(st_->in, send.size());
    float* out = staging(st_->out, recv.size());
    std::copy(send.begin(), send.end(), in);
    const auto tag = next_tag();
    FLEXSP_TRY(submit([ctx = st_->ctx, in, out, ns = send.size(), nr = recv.size(), tag, t = timeout_] {
      gloo::AllgatherOptions opts(ctx);
      opts.setInput(in, ns);
      opts.setOutput(out, nr);
      opts.setTag(tag);
      opts.setTimeout(t);
      gloo::allgather(opts);
    }, "all_gather"));
    std::copy_n(out, recv.size(), recv.begin());
    return {};
  }

  expected<void> broadcast(std::span<float> data, int root) override {
    if (root < 0 || root >= size_)
      return make_error(errc::invalid_argument, "broadcast root {} outside group of {}", root, size_);
    if (data.empty()) return barrier();
    FLEXSP_TRY(usable("broadcast"));
    float* buf = staging(st_->in, data.size());
    std::copy(data.begin(), data.end(), buf);
    const auto tag = next_tag();
    FLEXSP_TRY(submit([ctx = st_->ctx, buf, n = data.size(), root, tag, t = timeout_] {
      gloo::BroadcastOptions opts(ctx);
      opts.setOutput(buf, n);
      opts.setRoot(root);
      opts.setTag(tag);
      opts.setTimeout(t);
      gloo::broadcast(opts);
    }, "broadcast"));
    std::copy_n(buf, data.size(), data.begin());
    return {};
  }

  expected<void> barrier() override {
    const auto tag = next_tag();
    return submit([ctx = st_->ctx, tag, t = timeout_] {
      gloo::BarrierOptions opts(ctx);
      opts.setTag(tag);
      opts.setTimeout(t);
      gloo::barrier(opts);
    }, "barrier");
  }

  void abort() noexcept override {
    if (st_->aborted.exchange(true)) return;
    st_->poisoned = true;
    {
      // Taking the lock orders the flag before a waiter's predicate check, so no wake-up is lost.
      std::lock_guard lock{st_->mutex};
    }
    st_->cv.notify_all();
    close_connections();
  }

  bool poisoned() const noexcept override { return st_->poisoned; }
  const char* transport() const noexcept override { return "gloo"; }

private:
  std::uint32_t next_tag() noexcept { return tag_++; }

  void close_connections() noexcept {
    try {
      st_->ctx->closeConnections();
    } catch (const std::exception& e) {
      log::get("kernels")->warn("closing gloo connections of rank {} failed: {}", rank_, e.what());
    }
  }

  // Checked before touching the staging buffers, which a failed collective may still hold.
  expected<void> usable(std::string_view what) const {
    if (st_->aborted) return make_error(errc::cancelled, "{}: communicator was aborted", what);
    if (st_->poisoned) return make_error(errc::failed, "{}: communicator failed earlier and must be replaced", what);
    return {};
  }

  expected<void> submit(std::function<void()> fn, std::string_view what) {
    FLEXSP_TRY(usable(what));
    auto j = std::make_shared<job>();
    j->fn = std::move(fn);
    std::unique_lock lock{st_->mutex};
    st_->queue.push_back(j);
    st_->cv.notify_all();
    // Gloo enforces the deadline itself; the grace covers a transport that fails to.
    const auto deadline = std::chrono::steady_clock::now() + timeout_ + std::chrono::seconds{5};
    st_->cv.wait_until(lock, deadline, [&] { return j->done || st_->aborted.load(); });
    if (j->done && !j->err) return {};
    st_->poisoned = true;
    if (!j->done) {
      lock.unlock();
      if (st_->aborted) return make_error(errc::cancelled, "{}: communicator was aborted", what);
      abort();
      return make_error(errc::timeout, "{}: no completion within {} ms", what, timeout_.count());
    }
    auto e = *j->err;
    lock.unlock();
    log::get("kernels")->warn("rank {}/{}: {}", rank_, size_, e.to_string());
    return unexpected<error>{std::move(e)};
  }

  std::shared_ptr<shared_state> st_;
  std::chrono::milliseconds timeout_;
  int rank_;
  int size_;
  std::uint32_t tag_ = 1;
  std::thread worker_;
};

}  // namespace

namespace {

/// Gloo's TCP transport writes with writev(), which raises SIGPIPE when the peer has died; the
/// default action would kill this process without a word, taking every device on it along. A
/// dead peer must only fail the collective (EPIPE), so SIGPIPE is ignored unless the program
/// installed its own handler.
void ignore_default_sigpipe() {
  struct sigaction current{};
  if (::sigaction(SIGPIPE, nullptr, &current) != 0 || current.sa_handler != SIG_DFL) return;
  struct sigaction ignore{};
  ignore.sa_handler = SIG_IGN;
  sigemptyset(&ignore.sa_mask);
  ::sigaction(SIGPIPE, &ignore, nullptr);
}

}  // namespace

expected<std::shared_ptr<gloo_device>> make_gloo_device(const gloo_options& options) {
  ignore_default_sigpipe();
  try {
    gloo::transport::tcp::attr attr;
    attr.hostname = options.hostname;
    return std::make_shared<gloo_device>(gloo::transport::tcp::CreateDevice(attr));
  } catch (const std::exception& e) {
    return make_error(errc::failed, "cannot create gloo TCP device on '{}': {}", options.hostname, e.what());
  }
}

expected<std::unique_ptr<communicator>> make_gloo_communicator(rendezvous_store& store, std::string group_key,
                                                               int rank, int size, const gloo_options& options,
                                                               std::shared_ptr<gloo_device> device) {
  if (size < 2 || rank < 0 || rank >= size)
    return make_error(errc::invalid_argument, "gloo group '{}': rank {} of size {} (size must be >= 2)", group_key, rank,
                      size);
  if (!device) {
    FLEXSP_TRY_ASSIGN(device, make_gloo_device(options));
  }
  auto st = std::make_shared<shared_state>();
  st->device = device;
  try {
    auto ctx = std::make_shared<abortable_mesh>(rank, size);
    ctx->setTimeout(options.timeout);
    store_adapter adapter{store, options.timeout};
    gloo::rendezvous::PrefixStore prefixed{group_key, adapter};
    ctx->connect(prefixed, device->device, options.cancelled);
    st->ctx = std::move(ctx);
  } catch (const std::exception& e) {
    return unexpected<error>{from_gloo(e, fmt::format("rendezvous of group '{}' (rank {} of {})", group_key, rank, size))};
  }
  log::get("kernels")->debug("joined gloo group '{}' as rank {} of {}", group_key, rank, size);
  return std::unique_ptr<communicator>{std::make_unique<gloo_communicator>(std::move(st), options.timeout)};
}

namespace {

/// Whether every member of the group `name` runs in this process: each rank publishes its
/// process token and compares the others' with its own (so all ranks reach the same answer).
expected<bool> members_share_this_process(rendezvous_store& store, const std::string& name, int rank, int size,
                                          std::chrono::milliseconds timeout) {
  const auto& mine = process_token();
  FLEXSP_TRY(store.set(fmt::format("{}/process/{}", name, rank), std::span<const char>{mine.data(), mine.size()}));
  bool all = true;
  for (int p = 0; p < size; ++p) {
    if (p == rank) continue;
    FLEXSP_TRY_ASSIGN(auto theirs, store.get(fmt::format("{}/process/{}", name, p), timeout));
    all = all && std::string_view{theirs.data(), theirs.size()} == mine;
  }
  return all;
}

}  // namespace

communicator_cache::communicator_cache(rendezvous_store& store, int my_device, gloo_options options)
    : store_{store}, my_device_{my_device}, options_{std::move(options)} {}

int communicator_cache::rank_in(std::span<const int> devices, int device) {
  std::vector<int> sorted(devices.begin(), devices.end());
  std::sort(sorted.begin(), sorted.end());
  const auto it = std::find(sorted.begin(), sorted.end(), device);
  return it == sorted.end() ? -1 : static_cast<int>(it - sorted.begin());
}

expected<std::shared_ptr<communicator>> communicator_cache::get(std::span<const int> devices, std::uint64_t epoch) {
  std::vector<int> sorted(devices.begin(), devices.end());
  std::sort(sorted.begin(), sorted.end());
  if (std::adjacent_find(sorted.begin(), sorted.end()) != sorted.end())
    return make_error(errc::invalid_argument, "device set {} lists a device twice", fmt::join(devices, ","));
  const int rank = rank_in(sorted, my_device_);
  if (rank < 0)
    return make_error(errc::invalid_argument, "device {} is not in the group {}", my_device_, fmt::join(sorted, ","));
  auto lock = table_.lock();
  auto key = std::make_pair(epoch, sorted);
  if (auto cached = table_.find(key)) {
    if (!cached->poisoned()) return cached;
    // Its rendezvous keys are spent: a group is rebuilt only under a new epoch.
    return make_error(errc::disconnected, "group {} of epoch {} failed; rebuild it under a new epoch",
                      fmt::join(sorted, ","), epoch);
  }
  std::shared_ptr<communicator> comm;
  if (sorted.size() == 1) {
    comm = make_local_communicator();
  } else {
    const auto name = fmt::format("flexsp/group/{}/{}", epoch, fmt::join(sorted, ","));
    const int size = static_cast<int>(sorted.size());
    bool local = false;
    if (options_.in_process) {
      FLEXSP_TRY_ASSIGN(local, members_share_this_process(store_, name, rank, size, options_.timeout));
    }
    if (local) {
      FLEXSP_TRY_ASSIGN(comm, make_process_communicator(name, rank, size, options_.timeout, options_.cancelled));
    } else {
      if (!device_) {
        FLEXSP_TRY_ASSIGN(device_, make_gloo_device(options_));
      }
      FLEXSP_TRY_ASSIGN(auto made, make_gloo_communicator(store_, name, rank, size, options_, device_));
      comm = std::move(made);
    }
  }
  log::get("kernels")->debug("device {}: group {} of epoch {} over {}", my_device_, fmt::join(sorted, ","), epoch,
                             comm->transport());
  table_.insert(std::move(key), comm);
  return comm;
}

void communicator_cache::abort_all() { table_.abort_all(); }

void communicator_cache::evict_before(std::uint64_t epoch) { table_.evict_before(epoch); }

std::size_t communicator_cache::size() const { return table_.size(); }

}  // namespace flexsp::kernels
