# Messages of the device actor that cross processes (payloads of wire.capnp's ActorMessage).
@0x9de7631304fc05fa;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("flexsp::actors::schema");

struct Ping {
  sequence @0 :UInt64;
}

struct Pong {
  sequence @0 :UInt64;
  device @1 :Text;       # "cpu:0", "cuda:1"
  nodeId @2 :UInt64;
  pings @3 :UInt64;      # pings this actor has answered, this one included
}

struct Note {
  sequence @0 :UInt64;   # a sender numbers its notes 1, 2, 3...; the actor checks the order
  sender @1 :UInt64;
}

struct GetStats {}

struct Stats {
  notes @0 :UInt64;
  outOfOrder @1 :UInt64;
  lastSequence @2 :UInt64;
  pings @3 :UInt64;
}
