#pragma once
// Conversions between membership records and their wire form (private to actors/).
#include <string>

#include "flexsp/actors/membership.hpp"
#include "cluster_wire.hpp"

namespace flexsp::actors::detail {

inline void to_wire(const std::vector<device_id>& devices, capnp::List<cs::Device>::Builder out) {
  for (unsigned i = 0; i < devices.size(); ++i) {
    out[i].setKind(std::string{to_string(devices[i].kind)});
    out[i].setIndex(devices[i].index);
    out[i].setDescription(devices[i].description);
  }
}

inline void to_wire(const node_record& r, cs::NodeInfo::Builder b) {
  b.setId(r.id);
  b.setAddress(r.address);
  b.setAlive(r.state == node_state::alive);
  to_wire(r.devices, b.initDevices(static_cast<unsigned>(r.devices.size())));
  b.setJoinedEpoch(r.joined_epoch);
  b.setLostEpoch(r.lost_epoch);
  b.setLostReason(r.lost_reason);
  b.setPid(r.pid);
}

inline std::vector<device_id> from_wire(capnp::List<cs::Device>::Reader list) {
  std::vector<device_id> out;
  out.reserve(list.size());
  for (auto d : list) {
    device_kind kind{};
    if (!parse_device_kind(d.getKind().cStr(), kind)) continue;  // a kind this build cannot use
    out.push_back({kind, d.getIndex(), std::string{d.getDescription().cStr()}});
  }
  return out;
}

inline node_record from_wire(cs::NodeInfo::Reader r) {
  node_record n;
  n.id = r.getId();
  n.address = r.getAddress().cStr();
  n.state = r.getAlive() ? node_state::alive : node_state::dead;
  n.devices = from_wire(r.getDevices());
  n.joined_epoch = r.getJoinedEpoch();
  n.lost_epoch = r.getLostEpoch();
  n.lost_reason = r.getLostReason().cStr();
  n.pid = r.getPid();
  return n;
}

}  // namespace flexsp::actors::detail
