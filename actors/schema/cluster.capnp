# The head's cluster protocol: node registration, heartbeats, membership, the KV store and the
# named-actor directory. Each message travels in a core Envelope as a `service` body tagged with
# its struct's type id (actors/src/cluster_wire.hpp).
@0xe4b7a2c95d31f086;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("flexsp::actors::cluster_schema");

# Node -> head: ask for the cluster's status. Reply: Status.
struct StatusRequest {}

# Subscribe to membership events. Reply: Subscribed, then MembershipEvent tells.
struct Subscribe {}

struct Status {
  status @0 :ClusterStatus;
}

struct Subscribed {
  status @0 :ClusterStatus;
}

struct Device {
  kind @0 :Text;                  # "cpu" or "cuda": the compute backend the device runs
  index @1 :UInt32;
  description @2 :Text;           # e.g. "NVIDIA H200 (sm_90, 139.8 GiB)"; empty for cpu
}

struct RegisterNode {
  actorAddress @0 :Text;          # host:port where the node accepts peer channels
  devices @1 :List(Device);
  previousId @2 :UInt64;          # id of an earlier membership of this process (0: none)
  pid @3 :UInt32;
}

struct Registered {
  nodeId @0 :UInt64;
  epoch @1 :UInt64;
  heartbeatIntervalMs @2 :UInt32;
  previousRemoved @3 :Bool;       # the previous membership was ended by the head
  previousRemovedReason @4 :Text;
  failureTimeoutMs @5 :UInt32;
}

struct Heartbeat {
  nodeId @0 :UInt64;
  sequence @1 :UInt64;
}

struct Removed {
  nodeId @0 :UInt64;
  epoch @1 :UInt64;
  reason @2 :Text;
}

struct NodeInfo {
  id @0 :UInt64;
  address @1 :Text;               # actor address of the node
  alive @2 :Bool;
  devices @3 :List(Device);
  joinedEpoch @4 :UInt64;
  lostEpoch @5 :UInt64;
  lostReason @6 :Text;
  pid @7 :UInt32;
}

struct ClusterStatus {
  epoch @0 :UInt64;
  nodes @1 :List(NodeInfo);
  headPid @2 :UInt32;
  heartbeatIntervalMs @3 :UInt32;
  failureTimeoutMs @4 :UInt32;
}

struct MembershipEvent {
  epoch @0 :UInt64;
  kind @1 :Kind;
  node @2 :NodeInfo;
  enum Kind {
    joined @0;
    lost @1;
  }
}

struct KvSet {
  key @0 :Text;
  value @1 :Data;
}

struct KvGet {
  key @0 :Text;
  waitMs @1 :UInt32;              # 0: answer at once; otherwise wait up to this long for the key
}

struct KvReply {
  found @0 :Bool;
  value @1 :Data;
}

struct NameRegister {
  name @0 :Text;
  address @1 :Text;               # host:port of the process hosting the actor
  actorId @2 :UInt64;
}

struct NameLookup {
  name @0 :Text;
}

struct NameReply {
  found @0 :Bool;
  address @1 :Text;
  actorId @2 :UInt64;
}

