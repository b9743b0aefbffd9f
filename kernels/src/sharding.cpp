#include "flexsp/kernels/sharding.hpp"

#include <chrono>

#include "flexsp/core/fnv.hpp"
#include "flexsp/kernels/model.hpp"

namespace flexsp::kernels {

namespace {
std::size_t sz(std::int64_t v) { return static_cast<std::size_t>(v); }
}  // namespace

std::vector<flat_range> shard_units(const model_config& config) {
  const auto table = parameter_table(config);
  std::vector<flat_range> units;
  // Parameter names of layer l start with "h<l>."; everything else is outside the layers.
  auto layer_of = [](const std::string& name) -> std::int64_t {
    if (name.size() < 3 || name[0] != 'h' || name[1] < '0' || name[1] > '9') return -1;
    return std::stoll(name.substr(1, name.find('.') - 1));
  };
  std::int64_t end = 0;
  flat_range before{0, 0};
  std::vector<flat_range> layers(sz(config.layers), flat_range{-1, -1});
  flat_range after{-1, -1};
  for (const auto& p : table) {
    const auto n = numel_of(p.shape);
    const auto l = layer_of(p.name);
    if (l >= 0) {
      auto& r = layers[sz(l)];
      if (r.begin < 0) r.begin = p.offset;
      r.end = p.offset + n;
    } else if (layers.empty() || layers.front().begin < 0) {
      before.end = p.offset + n;
    } else {
      if (after.begin < 0) after.begin = p.offset;
      after.end = p.offset + n;
    }
    end = std::max(end, p.offset + n);
  }
  units.push_back(before);
  for (const auto& r : layers) units.push_back(r);
  if (after.begin < 0) after = {end, end};
  units.push_back(after);
  return units;
}

shard_layout::shard_layout(std::vector<flat_range> units, int count, int index)
    : units_{std::move(units)}, count_{count}, index_{index} {
  FLEXSP_EXPECTS(count >= 1 && index >= 0 && index < count, "shard {} of {}", index, count);
  std::int64_t at = 0;
  for (const auto& u : units_) {
    FLEXSP_EXPECTS(u.begin == at && u.end >= u.begin, "shard units must be contiguous from 0");
    at = u.end;
    const std::int64_t c = (u.size() + count - 1) / count;
    local_offset_.push_back(local_size_);
    chunk_.push_back(c);
    local_size_ += c;
  }
}

shard_layout shard_layout::of(const model_config& config, int count, int index) {
  return shard_layout{shard_units(config), count, index};
}

flat_range shard_layout::range(std::size_t u, int shard) const {
  const auto& unit = units_[u];
  const std::int64_t b = std::min(unit.end, unit.begin + static_cast<std::int64_t>(shard) * chunk_[u]);
  return {b, std::min(unit.end, b + chunk_[u])};
}

std::uint64_t combine_fingerprints(std::span<const std::uint64_t> shards) noexcept {
  if (shards.size() == 1) return shards[0];
  fnv1a64 h;
  for (auto f : shards) {
    unsigned char bytes[8];
    for (int b = 0; b < 8; ++b) bytes[b] = static_cast<unsigned char>((f >> (8 * b)) & 0xffu);
    h.add(bytes, 8);
  }
  return h.h;
}

unit_stream::unit_stream(device& dev, communicator& group, const shard_layout& layout, bool prefetch)
    : dev_{dev},
      group_{group},
      layout_{layout},
      prefetch_{prefetch && dev.host_memory()},
      in_place_{dev.host_memory() || group.reduces_device_buffers()} {}

unit_stream::~unit_stream() {
  if (pending_.valid()) pending_.wait();
}

expected<void> unit_stream::gather_now(std::size_t u, const float* local, float* full) {
  const auto c = sz(layout_.chunk(u));
  const auto total = c * sz(layout_.count());
  if (in_place_) {
    FLEXSP_TRY(dev_.synchronize());  // the collective may run on its own stream
    return group_.all_gather({local, c}, {full, total});
  }
  host_send_.resize(c);
  host_recv_.resize(total);
  FLEXSP_TRY(dev_.copy_to_host(host_send_.data(), local, c * sizeof(float)));
  FLEXSP_TRY(group_.all_gather(host_send_, host_recv_));
  return dev_.copy_to_device(full, host_recv_.data(), total * sizeof(float));
}

void unit_stream::start_gather(std::size_t u, const float* local, float* full) {
  FLEXSP_EXPECTS(!pending_.valid(), "one gather at a time");
  if (!prefetch_) {
    std::promise<expected<void>> done;
    const auto t0 = std::chrono::steady_clock::now();
    done.set_value(gather_now(u, local, full));
    exposed_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    pending_ = done.get_future();
    return;
  }
  pending_ = std::async(std::launch::async, [this, u, local, full] { return gather_now(u, local, full); });
}

expected<void> unit_stream::wait() {
  if (!pending_.valid()) return {};
  const auto t0 = std::chrono::steady_clock::now();
  auto r = pending_.get();
  exposed_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

expected<void> unit_stream::reduce_scatter_add(std::size_t u, const float* full, float* local, float* scratch) {
  FLEXSP_EXPECTS(!pending_.valid(), "reduce-scatter while a gather is outstanding");
  const auto t0 = std::chrono::steady_clock::now();
  const auto c = sz(layout_.chunk(u));
  const auto total = c * sz(layout_.count());
  if (in_place_) {
    FLEXSP_TRY(dev_.synchronize());
    FLEXSP_TRY(group_.reduce_scatter_sum({full, total}, {scratch, c}));
  } else {
    host_send_.resize(total);
    host_recv_.resize(c);
    FLEXSP_TRY(dev_.copy_to_host(host_send_.data(), full, total * sizeof(float)));
    FLEXSP_TRY(group_.reduce_scatter_sum(host_send_, host_recv_));
    FLEXSP_TRY(dev_.copy_to_device(scratch, host_recv_.data(), c * sizeof(float)));
  }
  FLEXSP_TRY(dev_.axpy(1.0f, scratch, local, static_cast<std::int64_t>(c)));
  exposed_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return {};
}

}  // namespace flexsp::kernels
