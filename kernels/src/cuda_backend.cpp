// The one place that knows whether the CUDA backend is compiled in, and the backend choice.
#include <algorithm>

#include "flexsp/kernels/cuda_runtime.hpp"
#include "flexsp/kernels/device_backend.hpp"
#include "flexsp/kernels/gpu.hpp"
#include "flexsp/kernels/nccl_collectives.hpp"

#if FLEXSP_HAVE_CUDA
#include "cuda/cuda_entry.hpp"
#endif

namespace flexsp::kernels {

expected<void> axpy_cpu(float a, std::span<const float> x, std::span<float> y) {
  if (x.size() != y.size())
    return make_error(errc::invalid_argument, "axpy: x has {} elements but y has {}", x.size(), y.size());
  for (std::size_t i = 0; i < x.size(); ++i) y[i] += a * x[i];
  return {};
}

#if FLEXSP_HAVE_CUDA
cuda_status query_cuda() { return cuda::query(); }
expected<void> axpy_cuda(float a, std::span<const float> x, std::span<float> y) { return cuda::axpy(a, x, y); }
expected<std::unique_ptr<gpu::device>> gpu::open_device(int index) { return cuda::open_device(index); }
nccl_status query_nccl() { return cuda::query_nccl(); }
expected<std::unique_ptr<communicator>> make_nccl_communicator(rendezvous_store& store, std::string group_key, int rank,
                                                               int size, int cuda_device, const nccl_options& options) {
  return cuda::make_nccl_communicator(store, std::move(group_key), rank, size, cuda_device, options);
}
#else
namespace {
constexpr const char* kNotCompiled =
    "CUDA backend not compiled in (configured with FLEXSP_ENABLE_CUDA=OFF or without nvcc)";
}
cuda_status query_cuda() {
  cuda_status s;
  s.reason = kNotCompiled;
  return s;
}
expected<void> axpy_cuda(float, std::span<const float>, std::span<float>) {
  return make_error(errc::unimplemented, "{}", kNotCompiled);
}
expected<std::unique_ptr<gpu::device>> gpu::open_device(int) {
  return make_error(errc::unimplemented, "{}", kNotCompiled);
}
nccl_status query_nccl() {
  nccl_status s;
  s.reason = kNotCompiled;
  return s;
}
expected<std::unique_ptr<communicator>> make_nccl_communicator(rendezvous_store&, std::string, int, int, int,
                                                               const nccl_options&) {
  return make_error(errc::unimplemented, "NCCL backend not compiled in: {}", kNotCompiled);
}
#endif

// ---- NCCL communicator cache ------------------------------------------------------------

nccl_communicator_cache::nccl_communicator_cache(rendezvous_store& store, int my_device, int cuda_device,
                                                 nccl_options options)
    : store_{store}, my_device_{my_device}, cuda_device_{cuda_device}, options_{options} {}

expected<std::shared_ptr<communicator>> nccl_communicator_cache::get(std::span<const int> devices,
                                                                      std::uint64_t epoch) {
  std::vector<int> sorted(devices.begin(), devices.end());
  std::sort(sorted.begin(), sorted.end());
  if (std::adjacent_find(sorted.begin(), sorted.end()) != sorted.end())
    return make_error(errc::invalid_argument, "NCCL group lists a device twice");
  const auto me = std::find(sorted.begin(), sorted.end(), my_device_);
  if (me == sorted.end())
    return make_error(errc::invalid_argument, "device {} is not a member of the NCCL group", my_device_);
  auto lock = table_.lock();
  auto key = std::make_pair(epoch, sorted);
  if (auto cached = table_.find(key); cached && !cached->poisoned()) return cached;
  if (sorted.size() == 1) {  // a group of one needs no NCCL communicator
    std::shared_ptr<communicator> local{make_local_communicator()};
    table_.insert(std::move(key), local);
    return local;
  }
  std::string name = fmt::format("nccl/e{}/d", epoch);
  for (std::size_t i = 0; i < sorted.size(); ++i) name += fmt::format("{}{}", i ? "-" : "", sorted[i]);
  FLEXSP_TRY_ASSIGN(auto comm, make_nccl_communicator(store_, name, static_cast<int>(me - sorted.begin()),
                                                      static_cast<int>(sorted.size()), cuda_device_, options_));
  std::shared_ptr<communicator> shared{std::move(comm)};
  table_.insert(std::move(key), shared);
  return shared;
}

void nccl_communicator_cache::abort_all() { table_.abort_all(); }

void nccl_communicator_cache::evict_before(std::uint64_t epoch) { table_.evict_before(epoch); }

std::size_t nccl_communicator_cache::size() const { return table_.size(); }

// ---- backend choice ---------------------------------------------------------------------

std::string_view to_string(backend_kind kind) noexcept { return kind == backend_kind::cuda ? "cuda" : "cpu"; }

expected<backend_request> parse_backend_request(std::string_view text) {
  if (text == "auto") return backend_request::automatic;
  if (text == "cpu") return backend_request::cpu;
  if (text == "cuda") return backend_request::cuda;
  return make_error(errc::invalid_argument, "backend '{}' is not one of auto, cpu, cuda", text);
}

namespace {
std::string version_text(int v) { return fmt::format("{}.{}", v / 1000, v % 1000 / 10); }
}  // namespace

expected<backend_choice> select_device_backend(backend_request requested) {
  backend_choice choice;
  if (requested == backend_request::cpu) {
    choice.reason = "cpu: requested";
    return choice;
  }
  const auto cuda = query_cuda();
  std::string unavailable;
  errc kind = errc::unimplemented;
  if (!cuda.compiled) {
    unavailable = cuda.reason;
  } else if (cuda.devices.empty()) {
    unavailable = cuda.reason.empty() ? "no GPU" : cuda.reason;
    kind = errc::not_found;
  } else if (auto dev = gpu::open_device(cuda.devices.front().index); !dev) {
    unavailable = dev.error().message();
    kind = dev.error().kind();
  }
  if (!unavailable.empty()) {
    if (requested == backend_request::cuda)
      return make_error(kind, "the CUDA backend was requested but is unavailable: {}", unavailable);
    choice.reason = fmt::format("cpu: {}", unavailable);
    return choice;
  }
  choice.kind = backend_kind::cuda;
  choice.gpu_count = static_cast<int>(cuda.devices.size());
  const auto nccl = query_nccl();
  choice.reason = fmt::format("cuda: {} x {}, CUDA runtime {}, driver {}, {}", cuda.devices.size(),
                              cuda.devices.front().name, version_text(cuda.runtime_version),
                              version_text(cuda.driver_version),
                              nccl.available ? fmt::format("NCCL {}.{}.{}", nccl.version / 10000,
                                                           nccl.version / 100 % 100, nccl.version % 100)
                                             : fmt::format("no NCCL ({})", nccl.reason));
  return choice;
}

}  // namespace flexsp::kernels
