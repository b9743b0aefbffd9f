#include "flexsp/kernels/process_communicator.hpp"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <map>
#include <mutex>
#include <numeric>
#include <random>
#include <vector>

#include <fmt/format.h>

namespace flexsp::kernels {

namespace {

using clock = std::chrono::steady_clock;

std::size_t sz(std::int64_t v) { return static_cast<std::size_t>(v); }

/// One collective: where every rank's input is. Peers read it in place, so a rank's buffers
/// must outlive every read: once everyone has arrived ("complete") each rank counts itself out
/// of `readers` after its reads and waits for the count to reach zero before it returns, on
/// every path. A rank that fails before the slot is complete withdraws it: nobody reads then.
struct slot {
  explicit slot(int n) : data(sz(n)), len(sz(n)), counts(sz(n)) {}
  std::vector<const float*> data;
  std::vector<std::size_t> len;
  std::vector<const std::int64_t*> counts;  // all_to_all_v: each rank's send counts
  int arrived = 0;
  bool complete = false;
  bool withdrawn = false;
  int readers = 0;
  int left = 0;
};

struct group {
  explicit group(int n) : size{n}, joined(sz(n), false) {}
  const int size;
  std::mutex mutex;
  std::condition_variable changed;
  std::vector<bool> joined;
  int members = 0;
  bool broken = false;
  std::string why;
  std::map<std::uint64_t, std::shared_ptr<slot>> slots;
  /// All-reduce sums. Reused: a collective's sums are written only once every rank has arrived
  /// at it, hence after every rank has copied the previous sums out.
  std::vector<float> sums;

  void breakup(std::string reason) {
    std::lock_guard lock{mutex};
    if (!broken) {
      broken = true;
      why = std::move(reason);
    }
    changed.notify_all();
  }
};

std::mutex g_registry_mutex;
std::map<std::string, std::weak_ptr<group>> g_registry;

class process_communicator final : public communicator {
public:
  process_communicator(std::shared_ptr<group> g, int rank, std::chrono::milliseconds timeout, std::string key)
      : g_{std::move(g)}, rank_{rank}, timeout_{timeout}, key_{std::move(key)} {}

  // Like a Gloo member closing its connections: the peers stop waiting for this rank.
  ~process_communicator() override { g_->breakup(fmt::format("rank {} left group '{}'", rank_, key_)); }

  int rank() const noexcept override { return rank_; }
  int size() const noexcept override { return g_->size; }

  expected<void> all_to_all_v(std::span<const float> send, std::span<const std::int64_t> send_counts,
                              std::span<float> recv, std::span<const std::int64_t> recv_counts) override {
    const auto n = sz(g_->size);
    FLEXSP_TRY_ASSIGN(const auto totals, check_all_to_all_v(g_->size, send, send_counts, recv, recv_counts));
    return run("all_to_all_v", send.data(), sz(totals.send), send_counts.data(), false, [&](slot& s) -> expected<void> {
      for (std::size_t p = 0; p < n; ++p)
        if (s.counts[p][rank_] != recv_counts[p])
          return make_error(errc::invalid_argument, "all_to_all_v: rank {} sends {} floats to rank {}, which expects {}",
                            p, s.counts[p][rank_], rank_, recv_counts[p]);
      std::size_t out = 0;
      for (std::size_t p = 0; p < n; ++p) {
        const auto offset = std::accumulate(s.counts[p], s.counts[p] + rank_, std::int64_t{0});
        std::copy_n(s.data[p] + offset, recv_counts[p], recv.begin() + static_cast<std::ptrdiff_t>(out));
        out += sz(recv_counts[p]);
      }
      return {};
    });
  }

  expected<void> all_reduce_sum(std::span<float> data) override {
    FLEXSP_TRY(run("all_reduce_sum", data.data(), data.size(), nullptr, true, [&](slot& s) -> expected<void> {
      FLEXSP_TRY(same_sizes(s, data.size(), "all_reduce_sum"));
      // Each rank sums its chunk over every rank, in rank order, into the shared sums.
      const auto n = sz(g_->size);
      const auto begin = data.size() * sz(rank_) / n, end = data.size() * (sz(rank_) + 1) / n;
      float* sums = g_->sums.data();
      for (std::size_t i = begin; i < end; ++i) {
        float sum = s.data[0][i];
        for (std::size_t p = 1; p < n; ++p) sum += s.data[p][i];
        sums[i] = sum;
      }
      return {};
    }));
    // Every chunk is summed (run waited for all readers); the sums stay until this rank arrives
    // at its next collective.
    std::copy_n(g_->sums.begin(), data.size(), data.begin());
    return {};
  }

  expected<void> all_gather(std::span<const float> send, std::span<float> recv) override {
    if (recv.size() != send.size() * sz(g_->size))
      return make_error(errc::invalid_argument, "all_gather: recv holds {} floats, needs {} x {}", recv.size(),
                        g_->size, send.size());
    return run("all_gather", send.data(), send.size(), nullptr, false, [&](slot& s) -> expected<void> {
      FLEXSP_TRY(same_sizes(s, send.size(), "all_gather"));
      for (std::size_t p = 0; p < s.data.size(); ++p)
        std::copy_n(s.data[p], send.size(), recv.begin() + static_cast<std::ptrdiff_t>(p * send.size()));
      return {};
    });
  }

  expected<void> reduce_scatter_sum(std::span<const float> send, std::span<float> recv) override {
    if (send.size() != recv.size() * sz(g_->size))
      return make_error(errc::invalid_argument, "reduce_scatter_sum: send holds {} floats, needs {} x {}", send.size(),
                        g_->size, recv.size());
    return run("reduce_scatter_sum", send.data(), send.size(), nullptr, false, [&](slot& s) -> expected<void> {
      FLEXSP_TRY(same_sizes(s, send.size(), "reduce_scatter_sum"));
      // This rank's chunk summed over every rank in rank order: all_reduce_sum's bits.
      const std::size_t first = recv.size() * sz(rank_);
      for (std::size_t i = 0; i < recv.size(); ++i) {
        float sum = s.data[0][first + i];
        for (std::size_t p = 1; p < s.data.size(); ++p) sum += s.data[p][first + i];
        recv[i] = sum;
      }
      return {};
    });
  }

  expected<void> broadcast(std::span<float> data, int root) override {
    if (root < 0 || root >= g_->size)
      return make_error(errc::invalid_argument, "broadcast: root {} outside [0, {})", root, g_->size);
    return run("broadcast", data.data(), data.size(), nullptr, false, [&](slot& s) -> expected<void> {
      const auto from = sz(root);
      if (s.len[from] != data.size())
        return make_error(errc::invalid_argument, "broadcast: root {} sends {} floats, rank {} holds {}", root,
                          s.len[from], rank_, data.size());
      if (rank_ != root) std::copy_n(s.data[from], data.size(), data.begin());
      return {};
    });
  }

  expected<void> barrier() override {
    return run("barrier", nullptr, 0, nullptr, false, [](slot&) -> expected<void> { return {}; });
  }

  void abort() noexcept override {
    aborted_ = true;
    poisoned_ = true;
    g_->breakup(fmt::format("rank {} of group '{}' aborted", rank_, key_));
  }

  bool poisoned() const noexcept override { return poisoned_.load(); }
  const char* transport() const noexcept override { return "memory"; }

private:
  // Publishes this rank's input in the next slot, waits for every rank, runs `body` (which reads
  // the peers' inputs and writes only this rank's outputs, or its chunk of the sums), then waits
  // until nobody reads this rank's input any more. Any failure poisons this member and breaks
  // the group.
  template <class Body>
  expected<void> run(std::string_view name, const float* data, std::size_t len, const std::int64_t* counts,
                     bool sums, Body&& body) {
    if (poisoned_.load())
      return make_error(aborted_.load() ? errc::cancelled : errc::failed,
                        "{} on group '{}': the communicator was aborted or failed before", name, key_);
    const auto seq = next_seq_++;
    auto result = [&]() -> expected<void> {
      std::shared_ptr<slot> s;
      {
        std::unique_lock lock{g_->mutex};
        auto& entry = g_->slots[seq];
        if (!entry) entry = std::make_shared<slot>(g_->size);
        s = entry;
        if (s->withdrawn) return make_error(errc::disconnected, "{}: a peer left this collective", name);
        s->data[sz(rank_)] = data;
        s->len[sz(rank_)] = len;
        s->counts[sz(rank_)] = counts;
        if (++s->arrived == g_->size) {
          s->complete = true;
          s->readers = g_->size;
          if (sums) g_->sums.resize(std::max(g_->sums.size(), *std::max_element(s->len.begin(), s->len.end())));
          g_->changed.notify_all();
        }
        auto arrived = wait(lock, [&] { return s->complete || s->withdrawn; }, name);
        if (!s->complete) {
          s->withdrawn = true;  // nobody may read this rank's input: it is about to go
          g_->changed.notify_all();
          if (!arrived) return arrived;
          return make_error(errc::disconnected, "{}: a peer left this collective", name);
        }
        if (!arrived) {
          done_reading(lock, *s, seq);
          return arrived;
        }
      }
      auto out = body(*s);
      std::unique_lock lock{g_->mutex};
      done_reading(lock, *s, seq);
      return out;
    }();
    if (result) return result;
    poisoned_ = true;
    g_->breakup(fmt::format("rank {} failed: {}", rank_, result.error().message()));
    auto e = std::move(result).error();
    e.with_context(fmt::format("{} on group '{}' (rank {} of {})", name, key_, rank_, g_->size));
    return unexpected<error>{std::move(e)};
  }

  // Counts this rank out of the slot's readers and waits until every rank is: after that no
  // peer touches this rank's buffers. Not interruptible, and it needs not be: the others only
  // have their reads (copies) to finish.
  void done_reading(std::unique_lock<std::mutex>& lock, slot& s, std::uint64_t seq) {
    if (--s.readers == 0) g_->changed.notify_all();
    g_->changed.wait(lock, [&] { return s.readers == 0; });
    if (++s.left == g_->size) g_->slots.erase(seq);
  }

  template <class Ready>
  expected<void> wait(std::unique_lock<std::mutex>& lock, Ready ready, std::string_view name) {
    const auto deadline = clock::now() + timeout_;
    for (;;) {
      if (aborted_.load()) return make_error(errc::cancelled, "{}: aborted", name);
      if (ready()) return {};
      if (g_->broken) return make_error(errc::disconnected, "{}: {}", name, g_->why);
      if (g_->changed.wait_until(lock, deadline) == std::cv_status::timeout && !ready() && !g_->broken &&
          !aborted_.load())
        return make_error(errc::timeout, "{}: peers did not take part within {} ms", name, timeout_.count());
    }
  }

  expected<void> same_sizes(const slot& s, std::size_t mine, std::string_view name) const {
    for (std::size_t p = 0; p < s.len.size(); ++p)
      if (s.len[p] != mine)
        return make_error(errc::invalid_argument, "{}: rank {} has {} floats, rank {} has {}", name, p, s.len[p], rank_,
                          mine);
    return {};
  }

  std::shared_ptr<group> g_;
  int rank_;
  std::chrono::milliseconds timeout_;
  std::string key_;
  std::uint64_t next_seq_ = 0;  // the calling thread's
  std::atomic<bool> aborted_{false};
  std::atomic<bool> poisoned_{false};
};

}  // namespace

expected<std::unique_ptr<communicator>> make_process_communicator(const std::string& group_key, int rank, int size,
                                                                  std::chrono::milliseconds timeout,
                                                                  const std::function<bool()>& cancelled) {
  if (size < 1 || rank < 0 || rank >= size)
    return make_error(errc::invalid_argument, "group '{}': rank {} of size {}", group_key, rank, size);
  std::shared_ptr<group> g;
  {
    std::lock_guard lock{g_registry_mutex};
    std::erase_if(g_registry, [](const auto& e) { return e.second.expired(); });
    auto& entry = g_registry[group_key];
    g = entry.lock();
    if (!g) {
      g = std::make_shared<group>(size);
      entry = g;
    }
  }
  std::unique_lock lock{g->mutex};
  if (g->size != size)
    return make_error(errc::invalid_argument, "group '{}': rank {} says size {}, other members {}", group_key, rank, size,
                      g->size);
  if (g->joined[sz(rank)]) return make_error(errc::invalid_argument, "group '{}': rank {} joined twice", group_key, rank);
  g->joined[sz(rank)] = true;
  ++g->members;
  g->changed.notify_all();
  const auto deadline = clock::now() + timeout;
  const auto complete = [&] { return g->members == g->size || g->broken; };
  bool gave_up = false;
  while (!complete()) {
    // Wait in short slices when someone may cancel the wait.
    const auto until = cancelled ? std::min(deadline, clock::now() + std::chrono::milliseconds{20}) : deadline;
    g->changed.wait_until(lock, until, complete);
    if (complete()) break;
    if (cancelled && cancelled()) {
      gave_up = true;
      break;
    }
    if (clock::now() >= deadline) break;
  }
  if (!complete()) {
    // Ranks that join later fail at once instead of waiting for a group that is gone.
    g->broken = true;
    g->why = fmt::format("rank {} stopped waiting for the others to join", rank);
    g->changed.notify_all();
    if (gave_up) return make_error(errc::cancelled, "group '{}': setup cancelled (the attempt was aborted)", group_key);
    return make_error(errc::timeout, "group '{}': {} of {} ranks joined within {} ms", group_key, g->members, size,
                      timeout.count());
  }
  if (g->broken) return make_error(errc::disconnected, "group '{}': {}", group_key, g->why);
  lock.unlock();
  return std::unique_ptr<communicator>{std::make_unique<process_communicator>(std::move(g), rank, timeout, group_key)};
}

const std::string& process_token() {
  static const std::string token = [] {
    char host[256] = {};
    ::gethostname(host, sizeof host - 1);
    std::random_device rd;
    const std::uint64_t salt = (std::uint64_t{rd()} << 32) ^ rd();
    return fmt::format("{}/{}/{:016x}", host, ::getpid(), salt);
  }();
  return token;
}

}  // namespace flexsp::kernels
