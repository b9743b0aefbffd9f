# The cluster wire format: every frame on a flexsp TCP connection is one Envelope, framed with
# Cap'n Proto's stream framing (segment table + segments).
@0xbf68e6a02e7512f5;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("flexsp::wire::schema");

const envelopeMagic :UInt32 = 0x31505346;   # "FSP1" little-endian
const protocolVersion :UInt16 = 1;

enum Role {
  node @0;     # a node process joining the cluster (registers, heartbeats)
  client @1;   # a command-line or library client (status, kv, subscriptions)
  peer @2;     # another process opening an actor-message channel
}

struct Challenge {
  nonce @0 :Data;                 # 32 random bytes chosen by the acceptor
}

struct Auth {
  role @0 :Role;
  nonce @1 :Data;                 # 32 random bytes chosen by the connector
  mac @2 :Data;                   # HMAC-SHA256(secret, "flexsp-auth-c" | server nonce | client nonce)
}

struct Welcome {
  mac @0 :Data;                   # HMAC-SHA256(secret, "flexsp-auth-s" | client nonce | server nonce)
}

struct Reject {
  reason @0 :Text;
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

struct ErrorReply {
  kind @0 :Text;                  # flexsp::errc name
  message @1 :Text;
}

# One actor message between processes. `payload` is a struct of the schema identified by
# `typeId` (its Cap'n Proto type id).
struct ActorMessage {
  target @0 :UInt64;              # actor id inside the receiving process
  requestId @1 :UInt64;           # nonzero for an ask; the reply carries the same id
  isReply @2 :Bool;
  typeId @3 :UInt64;
  payload @4 :AnyPointer;
  errorKind @5 :Text;             # set on a failed reply; for `down`, the exit reason
  errorMessage @6 :Text;
  control @7 :ActorControl;       # runtime notices between hosts instead of a payload
}

enum ActorControl {
  none @0;
  monitor @1;                     # watch `target`: answer `down` once when it terminates
  down @2;                        # `target` terminated (errorKind: exit reason, errorMessage: what)
}

struct Envelope {
  magic @0 :UInt32;
  version @1 :UInt16;
  requestId @2 :UInt64;           # correlates a client request with its reply (0: none)
  body :union {
    challenge @3 :Challenge;
    auth @4 :Auth;
    welcome @5 :Welcome;
    reject @6 :Reject;
    registerNode @7 :RegisterNode;
    registered @8 :Registered;
    heartbeat @9 :Heartbeat;
    removed @10 :Removed;
    statusRequest @11 :Void;
    status @12 :ClusterStatus;
    subscribe @13 :Void;
    subscribed @14 :ClusterStatus;
    membershipEvent @15 :MembershipEvent;
    kvSet @16 :KvSet;
    kvGet @17 :KvGet;
    kvReply @18 :KvReply;
    nameRegister @19 :NameRegister;
    nameLookup @20 :NameLookup;
    nameReply @21 :NameReply;
    ack @22 :Void;
    error @23 :ErrorReply;
    actor @24 :ActorMessage;
    shutdown @25 :Void;           # asks the receiving head or node process to exit
  }
}
