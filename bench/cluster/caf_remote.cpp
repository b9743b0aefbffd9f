#include "caf_remote.hpp"

#include <unistd.h>

#include <chrono>
#include <string>
#include <thread>

#include <caf/all.hpp>
#include <caf/io/all.hpp>

namespace flexsp::bench {

namespace {
using note_atom = caf::atom_constant<caf::atom("note")>;
using stats_atom = caf::atom_constant<caf::atom("stats")>;

struct counter_state {
  std::uint64_t notes = 0;
  std::uint64_t out_of_order = 0;
};

caf::behavior server(caf::stateful_actor<counter_state>* self) {
  return {
      [](std::uint64_t x) { return x; },
      [self](note_atom, std::uint64_t seq) {
        if (seq != self->state.notes + 1) ++self->state.out_of_order;
        ++self->state.notes;
      },
      [self](stats_atom) { return self->state.notes - self->state.out_of_order; },
  };
}
}  // namespace

void caf_serve(int report_fd) {
  caf::actor_system_config cfg;
  cfg.load<caf::io::middleman>();
  caf::actor_system sys{cfg};
  auto actor = sys.spawn(server);
  auto port = sys.middleman().publish(actor, 0, "127.0.0.1");
  const std::string line = (port ? std::to_string(*port) : std::string{"0"}) + "\n";
  (void)!::write(report_fd, line.data(), line.size());
  ::close(report_fd);
  for (;;) std::this_thread::sleep_for(std::chrono::hours{1});
}

caf_result caf_client(std::uint16_t port, std::uint64_t round_trips, std::uint64_t messages) {
  caf_result r;
  caf::actor_system_config cfg;
  cfg.load<caf::io::middleman>();
  caf::actor_system sys{cfg};
  auto remote = sys.middleman().remote_actor("127.0.0.1", port);
  if (!remote) {
    r.wrong = round_trips + messages;
    return r;
  }
  caf::scoped_actor self{sys};
  for (std::uint64_t i = 0; i < 200; ++i)  // warm-up
    self->request(*remote, caf::infinite, i).receive([](std::uint64_t) {}, [](caf::error&) {});
  auto t0 = std::chrono::steady_clock::now();
  for (std::uint64_t i = 0; i < round_trips; ++i)
    self->request(*remote, caf::infinite, i)
        .receive([&r, i](std::uint64_t v) { r.wrong += v != i; }, [&r](caf::error&) { ++r.wrong; });
  auto t1 = std::chrono::steady_clock::now();
  r.blocking_rt_per_s = static_cast<double>(round_trips) / std::chrono::duration<double>(t1 - t0).count();

  t0 = std::chrono::steady_clock::now();
  for (std::uint64_t i = 1; i <= messages; ++i) self->send(*remote, note_atom::value, i);
  std::uint64_t in_order = 0;
  self->request(*remote, caf::infinite, stats_atom::value)
      .receive([&in_order](std::uint64_t n) { in_order = n; }, [](caf::error&) {});
  t1 = std::chrono::steady_clock::now();
  r.pipelined_msgs_per_s = static_cast<double>(messages) / std::chrono::duration<double>(t1 - t0).count();
  r.wrong += messages - std::min(messages, in_order);
  return r;
}

}  // namespace flexsp::bench
