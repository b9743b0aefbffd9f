#include "flexsp/actors/membership.hpp"

#include <algorithm>

#include "flexsp/core/config.hpp"

namespace flexsp::actors {

std::string_view to_string(node_state s) noexcept { return s == node_state::alive ? "alive" : "dead"; }

expected<std::vector<device_id>> parse_devices(std::string_view spec, int cuda_count) {
  std::vector<device_id> out;
  if (spec == "auto") spec = cuda_count > 0 ? "cuda:all" : "cpu:1";
  if (spec.empty()) return make_error(errc::invalid_argument, "device spec is empty (expected e.g. cpu:4, cuda:all, cuda:0,1)");
  while (!spec.empty()) {
    const auto plus = spec.find('+');
    const std::string_view part = spec.substr(0, plus);
    spec = plus == std::string_view::npos ? std::string_view{} : spec.substr(plus + 1);
    const auto colon = part.find(':');
    if (colon == std::string_view::npos)
      return make_error(errc::invalid_argument, "device spec '{}' has no ':' (expected cpu:N, cuda:all or cuda:I,J)", part);
    const std::string_view kind = part.substr(0, colon);
    const std::string_view rest = part.substr(colon + 1);
    if (kind == "cpu") {
      auto n = parse_uint(rest);
      if (!n || *n == 0 || *n > 4096)
        return make_error(errc::invalid_argument, "device spec '{}': cpu count must be a number in 1..4096", part);
      for (std::uint32_t i = 0; i < *n; ++i) out.push_back({device_kind::cpu, i});
    } else if (kind == "cuda") {
      if (rest == "all") {
        if (cuda_count <= 0)
          return make_error(errc::invalid_argument, "device spec '{}': no CUDA device is available here", part);
        for (int i = 0; i < cuda_count; ++i) out.push_back({device_kind::cuda, static_cast<std::uint32_t>(i)});
      } else {
        std::string_view list = rest;
        if (list.empty()) return make_error(errc::invalid_argument, "device spec '{}': no CUDA index given", part);
        while (!list.empty()) {
          const auto comma = list.find(',');
          auto idx = parse_uint(list.substr(0, comma));
          if (!idx || *idx > 1023)
            return make_error(errc::invalid_argument, "device spec '{}': '{}' is not a CUDA device index", part,
                              list.substr(0, comma));
          if (cuda_count >= 0 && *idx >= static_cast<std::uint64_t>(cuda_count))
            return make_error(errc::invalid_argument, "device spec '{}': cuda:{} does not exist ({} CUDA devices here)",
                              part, *idx, cuda_count);
          out.push_back({device_kind::cuda, static_cast<std::uint32_t>(*idx)});
          list = comma == std::string_view::npos ? std::string_view{} : list.substr(comma + 1);
        }
      }
    } else {
      return make_error(errc::invalid_argument, "device spec '{}': unknown device kind '{}' (cpu or cuda)", part, kind);
    }
  }
  for (std::size_t i = 0; i < out.size(); ++i)
    for (std::size_t j = i + 1; j < out.size(); ++j)
      if (out[i] == out[j]) return make_error(errc::invalid_argument, "device {} is listed twice", out[i].to_string());
  return out;
}

membership_event membership_table::join(std::string address, std::vector<device_id> devices, std::uint32_t pid,
                                        time_point now) {
  node_record r;
  r.id = next_id_++;
  r.address = std::move(address);
  r.devices = std::move(devices);
  r.pid = pid;
  r.joined_epoch = ++epoch_;
  r.last_seen = now;
  nodes_.emplace(r.id, r);
  return {membership_event::kind_t::joined, epoch_, std::move(r)};
}

bool membership_table::heartbeat(std::uint64_t id, time_point now) {
  auto it = nodes_.find(id);
  if (it == nodes_.end() || it->second.state != node_state::alive) return false;
  it->second.last_seen = std::max(it->second.last_seen, now);
  return true;
}

std::optional<membership_event> membership_table::lose(std::uint64_t id, std::string reason) {
  auto it = nodes_.find(id);
  if (it == nodes_.end() || it->second.state != node_state::alive) return std::nullopt;
  it->second.state = node_state::dead;
  it->second.lost_epoch = ++epoch_;
  it->second.lost_reason = std::move(reason);
  membership_event e{membership_event::kind_t::lost, epoch_, it->second};
  trim_dead();
  return e;
}

expected<void> membership_table::restore(std::vector<node_record> alive, std::uint64_t epoch, std::uint64_t next_id,
                                         time_point now) {
  if (!nodes_.empty() || epoch_ != 0) return make_error(errc::invalid_argument, "membership: restore into a used table");
  for (auto& r : alive) {
    if (r.id == 0 || r.id >= next_id || r.joined_epoch > epoch)
      return make_error(errc::invalid_argument, "membership: saved node {} (joined at epoch {}) does not fit epoch {} / next id {}",
                        r.id, r.joined_epoch, epoch, next_id);
    r.state = node_state::alive;
    r.lost_epoch = 0;
    r.lost_reason.clear();
    r.last_seen = now;
    const auto id = r.id;
    nodes_.emplace(id, std::move(r));
  }
  epoch_ = epoch;
  next_id_ = next_id;
  return {};
}

const node_record* membership_table::find(std::uint64_t id) const {
  auto it = nodes_.find(id);
  return it == nodes_.end() ? nullptr : &it->second;
}

std::size_t membership_table::alive_count() const noexcept {
  return static_cast<std::size_t>(
      std::count_if(nodes_.begin(), nodes_.end(), [](const auto& kv) { return kv.second.state == node_state::alive; }));
}

void membership_table::trim_dead() {
  std::size_t dead = nodes_.size() - alive_count();
  for (auto it = nodes_.begin(); it != nodes_.end() && dead > max_dead;) {
    if (it->second.state == node_state::dead) {
      it = nodes_.erase(it);
      --dead;
    } else {
      ++it;
    }
  }
}

}  // namespace flexsp::actors
