#include <algorithm>
#include <atomic>

#include "flexsp/kernels/collectives.hpp"

namespace flexsp::kernels {

namespace {

class local_communicator final : public communicator {
public:
  int rank() const noexcept override { return 0; }
  int size() const noexcept override { return 1; }

  expected<void> all_to_all_v(std::span<const float> send, std::span<const std::int64_t> send_counts,
                              std::span<float> recv, std::span<const std::int64_t> recv_counts) override {
    FLEXSP_TRY(usable());
    if (send_counts.size() != 1 || recv_counts.size() != 1 || send_counts[0] != recv_counts[0] ||
        static_cast<std::int64_t>(send.size()) < send_counts[0] || static_cast<std::int64_t>(recv.size()) < recv_counts[0])
      return make_error(errc::invalid_argument, "all_to_all_v on a group of one: counts {}/{} buffers {}/{}",
                        send_counts.empty() ? -1 : send_counts[0], recv_counts.empty() ? -1 : recv_counts[0],
                        send.size(), recv.size());
    std::copy_n(send.begin(), send_counts[0], recv.begin());
    return {};
  }
  expected<void> all_reduce_sum(std::span<float>) override { return usable(); }
  expected<void> all_gather(std::span<const float> send, std::span<float> recv) override {
    FLEXSP_TRY(usable());
    if (recv.size() != send.size())
      return make_error(errc::invalid_argument, "all_gather: recv {} != send {}", recv.size(), send.size());
    std::copy(send.begin(), send.end(), recv.begin());
    return {};
  }
  expected<void> reduce_scatter_sum(std::span<const float> send, std::span<float> recv) override {
    FLEXSP_TRY(usable());
    if (recv.size() != send.size())
      return make_error(errc::invalid_argument, "reduce_scatter_sum: send {} != recv {}", send.size(), recv.size());
    std::copy(send.begin(), send.end(), recv.begin());
    return {};
  }
  expected<void> broadcast(std::span<float>, int root) override {
    FLEXSP_TRY(usable());
    if (root != 0) return make_error(errc::invalid_argument, "broadcast root {} in a group of one", root);
    return {};
  }
  expected<void> barrier() override { return usable(); }
  void abort() noexcept override { aborted_ = true; }
  bool poisoned() const noexcept override { return aborted_; }
  bool reduces_device_buffers() const noexcept override { return true; }
  const char* transport() const noexcept override { return "local"; }

private:
  expected<void> usable() const {
    if (aborted_) return make_error(errc::cancelled, "communicator was aborted");
    return {};
  }
  std::atomic<bool> aborted_{false};
};

}  // namespace

std::unique_ptr<communicator> make_local_communicator() { return std::make_unique<local_communicator>(); }

expected<exchange_totals> check_all_to_all_v(int size, std::span<const float> send,
                                             std::span<const std::int64_t> send_counts, std::span<const float> recv,
                                             std::span<const std::int64_t> recv_counts) {
  const auto n = static_cast<std::size_t>(size);
  if (send_counts.size() != n || recv_counts.size() != n)
    return make_error(errc::invalid_argument, "all_to_all_v: {} send and {} recv counts for a group of {}",
                      send_counts.size(), recv_counts.size(), size);
  exchange_totals t;
  for (std::size_t p = 0; p < n; ++p) {
    if (send_counts[p] < 0 || recv_counts[p] < 0)
      return make_error(errc::invalid_argument, "all_to_all_v: negative count for rank {}", p);
    t.send += send_counts[p];
    t.recv += recv_counts[p];
  }
  if (static_cast<std::size_t>(t.send) > send.size() || static_cast<std::size_t>(t.recv) > recv.size())
    return make_error(errc::invalid_argument, "all_to_all_v: counts need {} send / {} recv floats, buffers hold {} / {}",
                      t.send, t.recv, send.size(), recv.size());
  return t;
}

std::shared_ptr<communicator> communicator_table::find(const key& k) const {
  auto it = groups_.find(k);
  return it == groups_.end() ? nullptr : it->second;
}

void communicator_table::insert(key k, std::shared_ptr<communicator> comm) { groups_[std::move(k)] = std::move(comm); }

void communicator_table::abort_all() {
  std::lock_guard lock{mutex_};
  for (auto& [k, comm] : groups_) comm->abort();
  groups_.clear();
}

void communicator_table::evict_before(std::uint64_t epoch) {
  std::lock_guard lock{mutex_};
  for (auto it = groups_.begin(); it != groups_.end();) {
    if (it->first.first < epoch) {
      it->second->abort();
      it = groups_.erase(it);
    } else {
      ++it;
    }
  }
}

std::size_t communicator_table::size() const {
  std::lock_guard lock{mutex_};
  return groups_.size();
}

}  // namespace flexsp::kernels
