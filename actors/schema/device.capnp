# Messages of the device actor that cross processes (payloads of wire.capnp's ActorMessage),
# besides the training protocol (training.capnp).
@0x9de7631304fc05fa;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("flexsp::actors::schema");

# Ask: what a device is and which jobs it holds. Reply: DeviceInfo.
struct DescribeDevice {}

struct DeviceInfo {
  device @0 :Text;          # "cpu:0", "cuda:1"
  nodeId @1 :UInt64;        # 0 until its node registered
  description @2 :Text;     # the hardware ("NVIDIA H200 (sm_90, 139.8 GiB)"); empty for CPU devices
  jobs @3 :List(Text);      # ids of the jobs it holds a replica for
}
