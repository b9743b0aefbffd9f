// Remote actors over loopback, side by side with CAF 0.17's caf::io in the same run, and the
// failure detector's detection times for a killed and a hung node process.
//
//   flexsp_bench_cluster [--round-trips N] [--messages M] [--reps R]
//
// Servers run in forked child processes (one for ours, one for CAF), clients in this process.
// Every figure is printed with its correctness count (`wrong`): replies that did not match, or
// messages that arrived missing or out of order.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "flexsp/actors/client.hpp"
#include "flexsp/actors/head.hpp"
#include "flexsp/core/actor.hpp"
#include "flexsp/core/actor_system.hpp"
#include "flexsp/core/log.hpp"
#include "probe_messages.hpp"
#ifdef FLEXSP_BENCH_HAVE_CAF
#include "caf_remote.hpp"
#endif

namespace {

using namespace flexsp;
using namespace flexsp::actors;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

const std::string kSecret = "bench-secret";

net::transport_config transport() {
  net::transport_config t;
  t.secret.assign(kSecret.begin(), kSecret.end());
  return t;
}

[[noreturn]] void serve_ours(int report_fd) {
  net::event_loop loop;
  core::actor_system system{core::actor_system_config{.workers = 1}};
  actor_host_config hc;
  hc.transport = transport();
  auto host = actor_host::start(loop, hc);
  const std::uint64_t runtime_id = host ? (*host)->publish(system.spawn<testing::probe_actor>()) : 0;
  const std::string line = (host ? (*host)->address() : std::string{"-"}) + " " + std::to_string(runtime_id) + "\n";
  (void)!::write(report_fd, line.data(), line.size());
  ::close(report_fd);
  loop.run();
  std::_Exit(0);
}

std::string read_line(int fd) {
  std::string s;
  char c;
  while (::read(fd, &c, 1) == 1 && c != '\n') s.push_back(c);
  ::close(fd);
  return s;
}

pid_t fork_server(void (*serve)(int), std::string& report) {
  int fds[2];
  if (::pipe(fds) != 0) std::abort();
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::close(fds[0]);
    serve(fds[1]);
  }
  ::close(fds[1]);
  report = read_line(fds[0]);
  return pid;
}

struct result {
  double blocking = 0, pipelined = 0;
  std::uint64_t wrong = 0;
};

// Through a proxy: the same core::actor_ref as a local actor's (ask(...).get(), try_tell).
result ours_client(const std::string& report, std::uint64_t round_trips, std::uint64_t messages) {
  result r;
  std::istringstream fields{report};
  std::string address;
  std::uint64_t runtime_id = 0;
  fields >> address >> runtime_id;
  net::event_loop loop;
  loop.start();
  actor_host_config hc;
  hc.transport = transport();
  auto host = actor_host::start(loop, hc);
  if (!host) {
    std::fprintf(stderr, "ours: %s\n", host.error().to_string().c_str());
    r.wrong = round_trips + messages;
    return r;
  }
  core::actor_ref<testing::probe_actor> typed = (*host)->proxy<testing::probe_actor>({address, runtime_id});
  auto ask_ping = [&](std::uint64_t i) -> expected<testing::pong> { return typed.ask(testing::ping{i}, 5s).get(); };
  for (std::uint64_t i = 0; i < 200; ++i) (void)ask_ping(i);  // warm-up
  auto t0 = Clock::now();
  for (std::uint64_t i = 0; i < round_trips; ++i) {
    auto p = ask_ping(i);
    r.wrong += !p || p->sequence != i;
  }
  auto t1 = Clock::now();
  r.blocking = static_cast<double>(round_trips) / std::chrono::duration<double>(t1 - t0).count();

  t0 = Clock::now();
  for (std::uint64_t i = 1; i <= messages; ++i) r.wrong += !typed.try_tell(testing::note{i, 77});
  auto stats = typed.ask(testing::get_stats{}, 60s).get();
  t1 = Clock::now();
  r.pipelined = static_cast<double>(messages) / std::chrono::duration<double>(t1 - t0).count();
  if (!stats || stats->notes < messages)
    r.wrong += messages;
  else
    r.wrong += stats->out_of_order;
  (*host)->stop();
  loop.stop();
  return r;
}

// ---------------------------------------------------------------------------------------------
// failure detection

pid_t spawn_node(std::uint16_t head_port, const std::string& state_dir) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    const int null_fd = ::open("/dev/null", O_RDWR);
    ::dup2(null_fd, 1);
    ::dup2(null_fd, 2);
    ::setenv("FLEXSP_CLUSTER_SECRET", kSecret.c_str(), 1);
    ::setenv("FLEXSP_STATE_DIR", state_dir.c_str(), 1);
    const std::string address = "127.0.0.1:" + std::to_string(head_port);
    ::execl(FLEXSP_CLI_PATH, FLEXSP_CLI_PATH, "start", "--block", "--address", address.c_str(), "--devices", "cpu:1",
            static_cast<char*>(nullptr));
    std::_Exit(127);
  }
  return pid;
}

char proc_state(pid_t pid) {
  std::ifstream st{"/proc/" + std::to_string(pid) + "/stat"};
  std::string s((std::istreambuf_iterator<char>(st)), {});
  const auto p = s.rfind(')');
  return p != std::string::npos && p + 2 < s.size() ? s[p + 2] : '?';
}

struct detection {
  std::vector<double> killed_ms, hung_ms;
  std::uint64_t wrong = 0;
};

detection measure_detection(int reps) {
  detection d;
  net::event_loop loop;
  loop.start();
  head_config hc;
  hc.bind = {"127.0.0.1", 0};
  hc.transport = transport();  // default detector: 500 ms interval, 3 s timeout
  auto head = head_service::start(loop, hc);
  if (!head) {
    std::fprintf(stderr, "head: %s\n", head.error().to_string().c_str());
    d.wrong = 1;
    return d;
  }
  auto client = cluster_client::connect({"127.0.0.1", (*head)->port()}, transport());
  if (!client) {
    d.wrong = 1;
    return d;
  }
  std::mutex m;
  std::condition_variable cv;
  std::map<std::uint32_t, std::uint64_t> joined;        // pid -> node id
  std::map<std::uint64_t, Clock::time_point> lost_at;   // node id -> when the event arrived
  std::map<std::uint64_t, int> loss_count;
  (void)(*client)->subscribe([&](const membership_event& e) {
    std::lock_guard lock{m};
    if (e.kind == membership_event::kind_t::joined) {
      joined[e.node.pid] = e.node.id;
    } else {
      lost_at.emplace(e.node.id, Clock::now());
      ++loss_count[e.node.id];
    }
    cv.notify_all();
  });
  char tmpl[] = "/tmp/flexsp-bench-XXXXXX";
  const std::string state = ::mkdtemp(tmpl) ? tmpl : "/tmp";
  auto wait_joined = [&](pid_t pid) -> std::uint64_t {
    std::unique_lock lock{m};
    cv.wait_for(lock, 15s, [&]() { return joined.count(static_cast<std::uint32_t>(pid)) > 0; });
    return joined.count(static_cast<std::uint32_t>(pid)) ? joined[static_cast<std::uint32_t>(pid)] : 0;
  };
  auto wait_lost = [&](std::uint64_t id, Clock::time_point t0) -> double {
    std::unique_lock lock{m};
    if (!cv.wait_for(lock, 15s, [&]() { return lost_at.count(id) > 0; })) return -1;
    return std::chrono::duration<double, std::milli>(lost_at[id] - t0).count();
  };
  for (int rep = 0; rep < reps; ++rep) {
    for (bool hung : {false, true}) {
      const pid_t pid = spawn_node((*head)->port(), state);
      const std::uint64_t id = wait_joined(pid);
      if (id == 0) {
        ++d.wrong;
        ::kill(pid, SIGKILL);
        ::waitpid(pid, nullptr, 0);
        continue;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds{200 + 150 * rep});  // vary the heartbeat phase
      Clock::time_point t0;
      if (hung) {
        ::kill(pid, SIGSTOP);
        while (proc_state(pid) != 'T') std::this_thread::yield();
        t0 = Clock::now();
      } else {
        t0 = Clock::now();
        ::kill(pid, SIGKILL);
      }
      const double ms = wait_lost(id, t0);
      if (ms < 0) ++d.wrong;
      (hung ? d.hung_ms : d.killed_ms).push_back(ms);
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
    }
  }
  std::this_thread::sleep_for(3500ms);  // any second report of a loss would arrive by now
  {
    std::lock_guard lock{m};
    for (auto& [id, n] : loss_count) d.wrong += n != 1;
  }
  client->reset();
  (*head)->stop();
  loop.stop();
  std::error_code ec;
  std::filesystem::remove_all(state, ec);
  return d;
}

double median(std::vector<double> v) {
  if (v.empty()) return -1;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  std::uint64_t round_trips = 20000, messages = 200000;
  int reps = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--round-trips") round_trips = std::stoull(argv[i + 1]);
    else if (a == "--messages") messages = std::stoull(argv[i + 1]);
    else if (a == "--reps") reps = std::stoi(argv[i + 1]);
    else {
      std::fprintf(stderr, "usage: %s [--round-trips N] [--messages M] [--reps R]\n", argv[0]);
      return 2;
    }
  }
  (void)log::configure("warn");
  // Servers are forked before this process starts any thread.
  std::string ours_report;
  const pid_t ours_pid = fork_server(serve_ours, ours_report);
#ifdef FLEXSP_BENCH_HAVE_CAF
  std::string caf_report;
  const pid_t caf_pid = fork_server([](int fd) { flexsp::bench::caf_serve(fd); }, caf_report);
#endif

  const auto ours = ours_client(ours_report, round_trips, messages);
  ::kill(ours_pid, SIGKILL);
  ::waitpid(ours_pid, nullptr, 0);
#ifdef FLEXSP_BENCH_HAVE_CAF
  const auto caf = flexsp::bench::caf_client(static_cast<std::uint16_t>(std::stoi(caf_report)), round_trips, messages);
  ::kill(caf_pid, SIGKILL);
  ::waitpid(caf_pid, nullptr, 0);
  std::printf("remote blocking round trips (n=%llu): ours %.0f/s, caf %.0f/s, ratio ours/caf %.2f  #wrong ours %llu caf %llu\n",
              static_cast<unsigned long long>(round_trips), ours.blocking, caf.blocking_rt_per_s,
              ours.blocking / caf.blocking_rt_per_s, static_cast<unsigned long long>(ours.wrong),
              static_cast<unsigned long long>(caf.wrong));
  std::printf("remote pipelined messages (n=%llu): ours %.0f/s, caf %.0f/s, ratio ours/caf %.2f\n",
              static_cast<unsigned long long>(messages), ours.pipelined, caf.pipelined_msgs_per_s,
              ours.pipelined / caf.pipelined_msgs_per_s);
  std::printf("  (ours = an actor of the runtime reached through a proxy: the core::actor_ref a local actor has)\n");
#else
  std::printf("remote blocking round trips: ours %.0f/s (CAF not found)  #wrong %llu\n", ours.blocking,
              static_cast<unsigned long long>(ours.wrong));
  std::printf("remote pipelined messages: ours %.0f/s (CAF not found)\n", ours.pipelined);
#endif
  std::fflush(stdout);

  const auto det = measure_detection(reps);
  auto list = [](const std::vector<double>& v) {
    std::string s;
    for (double x : v) s += (s.empty() ? "" : ", ") + std::to_string(static_cast<int>(x));
    return s;
  };
  std::printf("killed node detection: median %.0f ms (samples %s ms; goal < 1000 ms)\n", median(det.killed_ms),
              list(det.killed_ms).c_str());
  std::printf("hung node detection: median %.0f ms, max %.0f ms (samples %s ms; goal <= timeout 3000 + interval 500 ms)  #wrong %llu\n",
              median(det.hung_ms), det.hung_ms.empty() ? -1.0 : *std::max_element(det.hung_ms.begin(), det.hung_ms.end()),
              list(det.hung_ms).c_str(), static_cast<unsigned long long>(det.wrong));
  const bool ok = ours.wrong == 0 && det.wrong == 0;
  return ok ? 0 : 1;
}
