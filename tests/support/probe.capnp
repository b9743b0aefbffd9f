# Probe messages of the runtime's tests and benchmarks: a request/reply pair and numbered
# notes whose receiver checks their order.
@0xc3a1f0e2b4d59687;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("flexsp::testing::schema");

struct Ping {
  sequence @0 :UInt64;
}

struct Pong {
  sequence @0 :UInt64;
  pings @1 :UInt64;      # pings this actor has answered, this one included
}

struct Note {
  sequence @0 :UInt64;   # a sender numbers its notes 1, 2, 3...; the actor checks the order
  sender @1 :UInt64;
}

struct GetStats {}

struct ProbeStats {
  notes @0 :UInt64;
  outOfOrder @1 :UInt64;
  lastSequence @2 :UInt64;
  pings @3 :UInt64;
}
