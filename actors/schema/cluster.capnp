# The head's cluster services as actor messages: the cluster actor (node registry, membership,
# failure detector, KV store, named-actor directory) and the node actor it watches. Every
# process reaches the cluster actor through a proxy at the head's address (actor id 1).
@0xe4b7a2c95d31f086;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("flexsp::actors::schema");

using import "training.capnp".DeviceKind;

struct NodeDevice {
  kind @0 :DeviceKind;            # the compute backend the device runs
  index @1 :UInt32;
  description @2 :Text;           # e.g. "NVIDIA H200 (sm_90, 139.8 GiB)"; empty for cpu
}

struct NodeInfo {
  id @0 :UInt64;
  address @1 :Text;               # actor address (host:port) of the node
  alive @2 :Bool;
  devices @3 :List(NodeDevice);
  joinedEpoch @4 :UInt64;
  lostEpoch @5 :UInt64;
  lostReason @6 :Text;
  pid @7 :UInt32;
}

# Ask the cluster actor: the cluster's status. Reply: ClusterView.
struct GetClusterView {}

struct ClusterView {
  epoch @0 :UInt64;
  nodes @1 :List(NodeInfo);
  headPid @2 :UInt32;
  heartbeatIntervalMs @3 :UInt32;
  failureTimeoutMs @4 :UInt32;
}

# Ask: join the cluster. The head monitors the node actor (`nodeActorId` at `actorAddress`):
# when it goes down, or its heartbeats stop for the failure timeout, the node is lost.
# Reply: NodeRegistered.
struct RegisterNode {
  actorAddress @0 :Text;          # host:port where the node accepts peer channels
  devices @1 :List(NodeDevice);
  previousId @2 :UInt64;          # id of an earlier membership of this process (0: none)
  pid @3 :UInt32;
  nodeActorId @4 :UInt64;
  processToken @5 :Text;          # unique per process: a node in the head's own process is never lost to silence
  deviceActors @6 :List(UInt64);  # the device actors' ids, in the order of `devices`: named
                                  # device/<node id>/<device> before the join is announced
}

struct NodeRegistered {
  nodeId @0 :UInt64;
  epoch @1 :UInt64;
  heartbeatIntervalMs @2 :UInt32;
  previousRemoved @3 :Bool;       # the previous membership was ended by the head
  previousRemovedReason @4 :Text;
  failureTimeoutMs @5 :UInt32;
}

# Ask, every heartbeat interval. Reply: HeartbeatAck.
struct NodeHeartbeat {
  nodeId @0 :UInt64;
  sequence @1 :UInt64;
}

struct HeartbeatAck {
  member @0 :Bool;                # false: that membership has ended (then `reason` says why)
  epoch @1 :UInt64;
  reason @2 :Text;
}

# Head -> node actor (tell): its membership ended.
struct NodeRemoved {
  nodeId @0 :UInt64;
  epoch @1 :UInt64;
  reason @2 :Text;
}

enum MembershipKind {
  joined @0;
  lost @1;
}

struct MembershipChange {
  epoch @0 :UInt64;               # the epoch this change created
  kind @1 :MembershipKind;
  node @2 :NodeInfo;
}

# Ask: the membership changes after epoch `afterEpoch`, waiting up to `waitMs` for one.
# Reply: MembershipUpdate (empty `changes` when none came in time). When the head no longer
# remembers every change since `afterEpoch`, `resync` is set and `view` holds the whole status.
struct WatchMembership {
  afterEpoch @0 :UInt64;
  waitMs @1 :UInt32;
}

struct MembershipUpdate {
  changes @0 :List(MembershipChange);
  resync @1 :Bool;
  view @2 :ClusterView;
}

# Ask: store a value (the rendezvous of collective groups). Reply: none.
struct KvWrite {
  key @0 :Text;
  value @1 :Data;
}

# Ask: read a value, waiting up to `waitMs` for it to be written (0: answer at once). Reply:
# KvValue, or a timeout error when the wait ends without a value.
struct KvRead {
  key @0 :Text;
  waitMs @1 :UInt32;
}

struct KvValue {
  found @0 :Bool;
  value @1 :Data;
}

# Ask: name an actor. Reply: none.
struct NameBind {
  name @0 :Text;
  address @1 :Text;               # host:port of the process hosting the actor
  actorId @2 :UInt64;
}

# Ask: the actor with that name. Reply: NameEntry.
struct NameResolve {
  name @0 :Text;
}

struct NameEntry {
  found @0 :Bool;
  address @1 :Text;
  actorId @2 :UInt64;
}

# Ask: end the head process. Reply: none.
struct StopHead {}
