// NCCL backend of the communicator interface (see nccl_collectives.hpp for the contract).
#include <atomic>
#include <chrono>
#include <cstring>
#include <mutex>
#include <thread>

#include "cuda_check.hpp"
#include "cuda_entry.hpp"
#include "device_buffer.hpp"
#include "handles.hpp"
#include "libraries.hpp"

namespace flexsp::kernels::cuda {

namespace {

using clock = std::chrono::steady_clock;

std::size_t sz(std::int64_t v) { return static_cast<std::size_t>(v); }

// cudaPointerGetAttributes reports unregistered host memory as cudaMemoryTypeUnregistered
// (older runtimes failed instead; both mean "stage it").
bool on_device(const void* p) {
  cudaPointerAttributes attr{};
  if (::cudaPointerGetAttributes(&attr, p) != cudaSuccess) {
    ::cudaGetLastError();
    return false;
  }
  return attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged;
}

// Waits for a non-blocking communicator to leave ncclInProgress. The caller aborts on failure.
expected<void> wait_ready(const nccl_api& api, ncclComm_t comm, clock::time_point deadline,
                          const std::atomic<bool>* abort_requested, std::string_view what) {
  for (;;) {
    ncclResult_t state = ncclSuccess;
    FLEXSP_NCCL_CHECK(api.comm_get_async_error(comm, &state));
    if (state == ncclSuccess) return {};
    if (state != ncclInProgress)
      return make_error(state == ncclRemoteError || state == ncclSystemError ? errc::disconnected : errc::failed,
                        "{}: {} ({})", what, nccl_result_name(state), api.get_last_error(comm));
    if (abort_requested != nullptr && abort_requested->load()) return make_error(errc::cancelled, "{}: aborted", what);
    if (clock::now() > deadline) return make_error(errc::timeout, "{}: not finished in time", what);
    std::this_thread::sleep_for(std::chrono::microseconds{50});
  }
}

class nccl_communicator final : public communicator {
public:
  nccl_communicator(const nccl_api* api, ncclComm_t comm, int rank, int size, int device, stream s,
                    device_buffer<float> scratch, std::chrono::milliseconds timeout, std::string key)
      : api_{api}, comm_{comm}, rank_{rank}, size_{size}, device_{device}, stream_{std::move(s)},
        scratch_{std::move(scratch)}, timeout_{timeout}, key_{std::move(key)} {}

  ~nccl_communicator() override {
    std::lock_guard lock{op_mutex_};
    if (aborted_) return;
    // Finalize flushes outstanding work (bounded wait), then destroy; any failure falls back to
    // abort, which never blocks on peers.
    if (!poisoned_.load() && ::cudaSetDevice(device_) == cudaSuccess) {
      const auto rc = api_->comm_finalize(comm_);
      if ((rc == ncclSuccess || rc == ncclInProgress) &&
          wait_ready(*api_, comm_, clock::now() + timeout_, nullptr, "ncclCommFinalize")) {
        api_->comm_destroy(comm_);
        return;
      }
    }
    api_->comm_abort(comm_);
  }
  nccl_communicator(const nccl_communicator&) = delete;
  nccl_communicator& operator=(const nccl_communicator&) = delete;

  int rank() const noexcept override { return rank_; }
  int size() const noexcept override { return size_; }

  expected<void> all_to_all_v(std::span<const float> send, std::span<const std::int64_t> send_counts,
                              std::span<float> recv, std::span<const std::int64_t> recv_counts) override {
    FLEXSP_TRY_ASSIGN(const auto totals, check_all_to_all_v(size_, send, send_counts, recv, recv_counts));
    return collective(send.first(sz(totals.send)), recv.first(sz(totals.recv)), "all_to_all_v",
                      [&](const float* s, float* r) -> expected<void> {
                        FLEXSP_NCCL_CHECK(api_->group_start());
                        std::int64_t so = 0, ro = 0;
                        for (int p = 0; p < size_; ++p) {
                          const auto sc = send_counts[sz(p)], rc = recv_counts[sz(p)];
                          if (sc > 0) FLEXSP_NCCL_CHECK(api_->send(s + so, sz(sc), ncclFloat, p, comm_, stream_.get()));
                          if (rc > 0) FLEXSP_NCCL_CHECK(api_->recv(r + ro, sz(rc), ncclFloat, p, comm_, stream_.get()));
                          so += sc;
                          ro += rc;
                        }
                        FLEXSP_NCCL_CHECK(api_->group_end());
                        return {};
                      });
  }

  expected<void> all_reduce_sum(std::span<float> data) override {
    return collective(data, data, "all_reduce_sum", [&](const float* s, float* r) -> expected<void> {
      FLEXSP_NCCL_CHECK(api_->all_reduce(s, r, data.size(), ncclFloat, ncclSum, comm_, stream_.get()));
      return {};
    });
  }

  expected<void> all_gather(std::span<const float> send, std::span<float> recv) override {
    if (recv.size() != send.size() * sz(size_))
      return make_error(errc::invalid_argument, "all_gather: recv holds {} floats, needs {} x {}", recv.size(),
                        size_, send.size());
    return collective(send, recv, "all_gather", [&](const float* s, float* r) -> expected<void> {
      FLEXSP_NCCL_CHECK(api_->all_gather(s, r, send.size(), ncclFloat, comm_, stream_.get()));
      return {};
    });
  }

  expected<void> reduce_scatter_sum(std::span<const float> send, std::span<float> recv) override {
    if (send.size() != recv.size() * sz(size_))
      return make_error(errc::invalid_argument, "reduce_scatter_sum: send holds {} floats, needs {} x {}", send.size(),
                        size_, recv.size());
    return collective(send, recv, "reduce_scatter_sum", [&](const float* s, float* r) -> expected<void> {
      FLEXSP_NCCL_CHECK(api_->reduce_scatter(s, r, recv.size(), ncclFloat, ncclSum, comm_, stream_.get()));
      return {};
    });
  }

  expected<void> broadcast(std::span<float> data, int root) override {
    if (root < 0 || root >= size_)
      return make_error(errc::invalid_argument, "broadcast: root {} outside [0, {})", root, size_);
    return collective(data, data, "broadcast", [&](const float* s, float* r) -> expected<void> {
      FLEXSP_NCCL_CHECK(api_->broadcast(s, r, data.size(), ncclFloat, root, comm_, stream_.get()));
      return {};
    });
  }

  expected<void> barrier() override {
    return collective(std::span<float>{scratch_.data(), 1}, std::span<float>{scratch_.data(), 1}, "barrier",
                      [&](const float* s, float* r) -> expected<void> {
                        FLEXSP_NCCL_CHECK(api_->all_reduce(s, r, 1, ncclFloat, ncclSum, comm_, stream_.get()));
                        return {};
                      });
  }

  void abort() noexcept override {
    abort_requested_ = true;
    poisoned_ = true;
    // With no collective in flight, abort here; otherwise the waiting thread sees the request
    // within one poll interval and aborts (ncclCommAbort must not race the issuing thread).
    std::unique_lock lock{op_mutex_, std::try_to_lock};
    if (lock.owns_lock()) abort_locked();
  }

  bool poisoned() const noexcept override { return poisoned_.load(); }
  bool reduces_device_buffers() const noexcept override { return true; }
  bool exchanges_device_buffers() const noexcept override { return true; }
  const char* transport() const noexcept override { return "nccl"; }

private:
  void abort_locked() noexcept {
    if (aborted_) return;
    aborted_ = true;
    poisoned_ = true;
    ::cudaSetDevice(device_);     // best effort: abort must proceed whatever the device state
    api_->comm_abort(comm_);
  }

  // Runs one collective: stages host buffers, issues `issue(send_ptr, recv_ptr)`, waits with
  // abort, timeout and asynchronous-error checks, copies staged results back.
  template <class Issue>
  expected<void> collective(std::span<const float> in, std::span<float> out, std::string_view name, Issue&& issue) {
    std::lock_guard lock{op_mutex_};
    if (poisoned_.load())
      return make_error(abort_requested_.load() ? errc::cancelled : errc::failed,
                        "{} on NCCL group '{}': the communicator was aborted or failed before", name, key_);
    auto result = run_locked(in, out, name, issue);
    if (result) return result;
    abort_locked();
    auto e = std::move(result).error();
    e.with_context(fmt::format("{} on NCCL group '{}' (rank {} of {})", name, key_, rank_, size_));
    return unexpected<error>{std::move(e)};
  }

  template <class Issue>
  expected<void> run_locked(std::span<const float> in, std::span<float> out, std::string_view name, Issue& issue) {
    FLEXSP_CUDA_CHECK(::cudaSetDevice(device_));
    const bool in_place = static_cast<const void*>(in.data()) == static_cast<const void*>(out.data());
    const float* src = in.data();
    float* dst = out.data();
    const bool stage_in = !in.empty() && !on_device(in.data());
    const bool stage_out = !out.empty() && !on_device(out.data());
    if (stage_in) {
      FLEXSP_TRY(reserve(stage_in_, in.size()));
      FLEXSP_CUDA_CHECK(::cudaMemcpyAsync(stage_in_.data(), in.data(), in.size_bytes(), cudaMemcpyHostToDevice,
                                          stream_.get()));
      src = stage_in_.data();
    }
    if (stage_out) {
      if (in_place && stage_in) {
        dst = stage_in_.data();
      } else {
        FLEXSP_TRY(reserve(stage_out_, out.size()));
        dst = stage_out_.data();
      }
    }
    FLEXSP_TRY(issue(src, dst));
    const auto deadline = clock::now() + timeout_;
    // Non-blocking communicators may still be enqueueing after the call returned.
    FLEXSP_TRY(wait_ready(*api_, comm_, deadline, &abort_requested_, name));
    for (;;) {
      const auto rc = ::cudaStreamQuery(stream_.get());
      if (rc == cudaSuccess) break;
      if (rc != cudaErrorNotReady) FLEXSP_CUDA_CHECK(rc);
      FLEXSP_TRY(wait_ready(*api_, comm_, deadline, &abort_requested_, name));
      if (abort_requested_.load()) return make_error(errc::cancelled, "{}: aborted", name);
      if (clock::now() > deadline)
        return make_error(errc::timeout, "{}: peers did not take part within {} ms", name, timeout_.count());
      std::this_thread::sleep_for(std::chrono::microseconds{20});
    }
    // An error NCCL reported while the work ran (a peer's connection closed) makes its output
    // garbage even though the stream finished.
    FLEXSP_TRY(wait_ready(*api_, comm_, deadline, &abort_requested_, name));
    if (stage_out) {
      FLEXSP_CUDA_CHECK(::cudaMemcpyAsync(out.data(), dst, out.size_bytes(), cudaMemcpyDeviceToHost, stream_.get()));
      FLEXSP_CUDA_CHECK(::cudaStreamSynchronize(stream_.get()));
    }
    return {};
  }

  expected<void> reserve(device_buffer<float>& b, std::size_t count) {
    if (b.size() >= count) return {};
    FLEXSP_TRY_ASSIGN(b, device_buffer<float>::allocate(count));
    return {};
  }

  const nccl_api* api_;
  ncclComm_t comm_;
  int rank_, size_, device_;
  stream stream_;
  device_buffer<float> scratch_;
  device_buffer<float> stage_in_, stage_out_;
  std::chrono::milliseconds timeout_;
  std::string key_;
  std::mutex op_mutex_;
  std::atomic<bool> abort_requested_{false};
  std::atomic<bool> poisoned_{false};
  bool aborted_ = false;  // guarded by op_mutex_
};

}  // namespace

nccl_status query_nccl() {
  nccl_status s;
  auto api = load_nccl();
  if (!api) {
    s.reason = api.error().message();
    return s;
  }
  s.available = true;
  s.version = (*api)->version;
  s.library = (*api)->library;
  return s;
}

expected<std::unique_ptr<communicator>> make_nccl_communicator(rendezvous_store& store, std::string group_key, int rank,
                                                               int size, int cuda_device, const nccl_options& options) {
  if (size < 1 || rank < 0 || rank >= size)
    return make_error(errc::invalid_argument, "NCCL group '{}': rank {} of size {}", group_key, rank, size);
  int count = 0;
  if (const auto rc = ::cudaGetDeviceCount(&count); rc != cudaSuccess) {
    ::cudaGetLastError();
    return make_error(errc::not_found, "NCCL group '{}': no usable CUDA device: {}", group_key,
                      ::cudaGetErrorString(rc));
  }
  if (cuda_device < 0 || cuda_device >= count)
    return make_error(errc::invalid_argument, "NCCL group '{}': CUDA device {} does not exist ({} visible)", group_key,
                      cuda_device, count);
  FLEXSP_TRY_ASSIGN(const nccl_api* api, load_nccl());
  const auto deadline = clock::now() + options.timeout;
  const std::string id_key = group_key + "/nccl-id";
  ncclUniqueId id{};
  if (rank == 0) {
    FLEXSP_NCCL_CHECK(api->get_unique_id(&id));
    FLEXSP_TRY(store.set(id_key, std::span<const char>{id.internal, sizeof id.internal}));
  } else {
    FLEXSP_TRY_ASSIGN(auto bytes, store.get(id_key, options.timeout));
    if (bytes.size() != sizeof id.internal)
      return make_error(errc::protocol, "NCCL group '{}': the published id has {} bytes, expected {}", group_key,
                        bytes.size(), sizeof id.internal);
    std::memcpy(id.internal, bytes.data(), sizeof id.internal);
  }
  FLEXSP_CUDA_CHECK(::cudaSetDevice(cuda_device));
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclComm_t comm = nullptr;
  FLEXSP_NCCL_CHECK(api->comm_init_rank_config(&comm, size, id, rank, &config));
  if (auto ready = wait_ready(*api, comm, deadline, nullptr, "ncclCommInitRankConfig"); !ready) {
    api->comm_abort(comm);
    auto e = std::move(ready).error();
    e.with_context(fmt::format("creating NCCL group '{}' (rank {} of {})", group_key, rank, size));
    return unexpected<error>{std::move(e)};
  }
  auto made = [&]() -> expected<std::unique_ptr<communicator>> {
    FLEXSP_TRY_ASSIGN(auto s, stream::create());
    FLEXSP_TRY_ASSIGN(auto scratch, device_buffer<float>::allocate(1));
    return std::unique_ptr<communicator>{std::make_unique<nccl_communicator>(
        api, comm, rank, size, cuda_device, std::move(s), std::move(scratch), options.timeout, group_key)};
  }();
  if (!made) api->comm_abort(comm);
  return made;
}

}  // namespace flexsp::kernels::cuda
