# The cluster wire format: every frame on a flexsp TCP connection is one Envelope, framed with
# Cap'n Proto's stream framing (segment table + segments).
@0xbf68e6a02e7512f5;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("flexsp::wire::schema");

const envelopeMagic :UInt32 = 0x31505346;   # "FSP1" little-endian
const protocolVersion :UInt16 = 3;   # 3: only handshake and actor bodies; services are actors

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
  source @8 :UInt64;              # link, unlink, exit: the sender's proxy id standing for the linked actor
}

enum ActorControl {
  none @0;
  monitor @1;                     # watch `target`: answer `down` once when it terminates
  down @2;                        # `target` terminated (errorKind: exit reason, errorMessage: what)
  link @3;                        # `source` (a proxy of the sender) links to `target`: exit `target` if this connection breaks
  unlink @4;                      # undoes one `link` of `source`
  exit @5;                        # the actor `source` stands for terminated (errorKind: exit reason): exit `target`
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
    actor @7 :ActorMessage;
  }
}
