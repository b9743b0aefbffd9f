// `flexsp start`, `flexsp status`, `flexsp stop`: head and node processes on this machine.
//
// Local state lives in one per-user directory (FLEXSP_STATE_DIR, else $XDG_RUNTIME_DIR/flexsp,
// else /tmp/flexsp-$UID, mode 0700):
//   current_cluster.json   the cluster `start --head` created last: address and secret file
//   cluster-<port>.secret  a generated shared secret (mode 0600), reused by a head restarted on that port
//   head-<port>.state      the head's state store (membership, KV, names, jobs), kept across restarts
//   procs/<pid>.json       one record per running head/node started here (for `stop`)
//   logs/<role>-<pid>.log  output of background processes
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "cluster_state.hpp"
#include "commands.hpp"
#include "flexsp/actors/dashboard.hpp"
#include "flexsp/actors/job_client.hpp"
#include "flexsp/actors/client.hpp"
#include "flexsp/actors/embedded.hpp"
#include "flexsp/actors/head.hpp"
#include "flexsp/kernels/ops.hpp"
#include "flexsp/actors/node.hpp"
#include "flexsp/core/config.hpp"
#include "flexsp/core/log.hpp"
#include "flexsp/core/wire/hmac.hpp"
#include "flexsp/kernels/cuda_runtime.hpp"
#include "flexsp/kernels/device_backend.hpp"

namespace flexsp::app {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

namespace {

constexpr std::uint16_t kDefaultPort = 7400;

std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
  return s;
}

[[noreturn]] void fail(const error& e) { throw std::runtime_error(e.message()); }

template <class T>
T check(expected<T> r) {
  if (!r) fail(r.error());
  return std::move(*r);
}
inline void check(expected<void> r) {
  if (!r) fail(r.error());
}

// ------------------------------------------------------------------------------------------
// running a service until a signal, optionally in the background

// Blocks the stop signals in this thread (and in the threads it starts). A service also ignores
// SIGPIPE: a write to a peer that died must fail that one write, not end the process.
sigset_t block_stop_signals() {
  ::signal(SIGPIPE, SIG_IGN);
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  sigaddset(&set, SIGUSR1);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  return set;
}

struct proc_record {
  fs::path path;
  ~proc_record() {
    std::error_code ec;
    if (!path.empty()) fs::remove(path, ec);
  }
};

/// Forks a background child. In the parent, waits for the child's one-line report on a pipe and
/// returns it (or the child's failure); in the child, returns nullopt with `report_fd` set.
struct daemon_result {
  bool is_child = false;
  int report_fd = -1;
  std::string report;
};

daemon_result daemonize(const fs::path& log_dir, const std::string& role, std::chrono::seconds wait) {
  int fds[2];
  if (::pipe(fds) != 0) fail(error{errc::io, "pipe failed"});
  const pid_t pid = ::fork();
  if (pid < 0) fail(error{errc::io, "fork failed"});
  if (pid == 0) {
    ::close(fds[0]);
    ::setsid();
    const auto log = log_dir / (role + "-" + std::to_string(::getpid()) + ".log");
    const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
    const int null_fd = ::open("/dev/null", O_RDONLY);
    if (null_fd >= 0) ::dup2(null_fd, 0);
    if (fd >= 0) {
      ::dup2(fd, 1);
      ::dup2(fd, 2);
    }
    return {true, fds[1], {}};
  }
  ::close(fds[1]);
  std::string report;
  const auto deadline = std::chrono::steady_clock::now() + wait;
  ::fcntl(fds[0], F_SETFL, O_NONBLOCK);
  char buf[512];
  for (;;) {
    const ssize_t n = ::read(fds[0], buf, sizeof buf);
    if (n > 0) {
      report.append(buf, static_cast<std::size_t>(n));
      if (report.find('\n') != std::string::npos) break;
      continue;
    }
    if (n == 0) break;  // child closed the pipe (exited)
    if (std::chrono::steady_clock::now() > deadline) {
      ::close(fds[0]);
      fail(error{errc::timeout, fmt::format("the {} process (pid {}) did not report ready within {} s; see {}", role,
                                            pid, wait.count(), (log_dir / (role + "-" + std::to_string(pid) + ".log")).string())});
    }
    std::this_thread::sleep_for(10ms);
  }
  ::close(fds[0]);
  if (report.rfind("ok ", 0) != 0) {
    int status = 0;
    ::waitpid(pid, &status, WNOHANG);
    fail(error{errc::failed, report.empty() ? fmt::format("the {} process exited during startup; see {}", role,
                                                          (log_dir / (role + "-" + std::to_string(pid) + ".log")).string())
                                            : trim(report.substr(report.find(' ') + 1))});
  }
  return {false, -1, trim(report.substr(3))};
}

void report(int fd, const std::string& line) {
  if (fd < 0) return;
  const std::string l = line + "\n";
  (void)!::write(fd, l.data(), l.size());
  ::close(fd);
}

// Waits for a stop signal; returns its number.
int wait_for_stop(const sigset_t& set) {
  int sig = 0;
  sigwait(&set, &sig);
  return sig;
}

struct common_flags {
  std::string secret_file;
  std::string heartbeat = "500ms";
  std::string failure_timeout = "3s";
  std::string give_up_after = "30s";
  std::string state_store = "file";
  std::string default_checkpoints = "state";
  std::uint32_t default_checkpoint_every = 50;
  bool block = false;
  // The head's HTTP endpoint (JSON API, Prometheus /metrics).
  int dashboard_port = 8265;  // 0: any free port; -1: none
  std::string dashboard_host = "127.0.0.1";
  std::string dashboard_token;
};

// ------------------------------------------------------------------------------------------
// start --head

void run_head(const common_flags& f, std::uint16_t port, const std::string& bind, const std::string& advertise) {
  const auto dir = check(state_dir());
  actors::head_config cfg;
  cfg.bind = {bind, port};
  cfg.advertise_host = advertise;
  cfg.detector.heartbeat_interval = check(parse_duration_ms(f.heartbeat));
  cfg.detector.failure_timeout = check(parse_duration_ms(f.failure_timeout));
  check(cfg.detector.validate());

  // The state store: the head's membership, KV, names and jobs outlive its process there.
  std::string store_url = f.state_store;
  if (store_url == "file") {
    store_url = port == 0 ? std::string{"none"} : (dir / fmt::format("head-{}.state", port)).string();
    if (port == 0) log::get("actors")->info("head: no state store (a head on an ephemeral port cannot restart at its address)");
  }
  if (store_url != "none") cfg.store = check(actors::open_state_store(store_url));

  bool generated = false;
  std::string secret_text;
  const fs::path own_secret = dir / fmt::format("cluster-{}.secret", port);
  if (auto s = resolve_secret(f.secret_file, "__none__"); s) {
    cfg.transport.secret = *s;
  } else if (auto kept = read_file(own_secret); port != 0 && cfg.store && kept && !trim(*kept).empty()) {
    // A head restarted on the same port keeps the secret it generated, so its nodes reconnect.
    secret_text = trim(*kept);
    cfg.transport.secret.assign(secret_text.begin(), secret_text.end());
    generated = true;
  } else {
    std::array<std::uint8_t, 32> raw{};
    check(wire::random_bytes(raw));
    secret_text = wire::to_hex(raw);
    cfg.transport.secret.assign(secret_text.begin(), secret_text.end());
    generated = true;
  }

  daemon_result d;
  if (!f.block) {
    d = daemonize(dir / "logs", "head", 15s);
    if (!d.is_child) {
      std::printf("%s\n", d.report.c_str());
      return;
    }
  }
  const sigset_t signals = block_stop_signals();
  net::event_loop loop;
  auto head = actors::head_service::start(loop, cfg, []() { ::kill(::getpid(), SIGUSR1); });
  if (!head) {
    report(d.report_fd, "error " + head.error().message());
    fail(head.error());
  }
  // A wildcard bind is reached from this machine through loopback.
  const std::string address =
      net::endpoint{bind == "0.0.0.0" ? std::string{"127.0.0.1"} : bind, (*head)->port()}.to_string();
  std::string secret_file = f.secret_file;
  if (generated) {
    secret_file = (dir / fmt::format("cluster-{}.secret", (*head)->port())).string();
    check(write_file_atomic(secret_file, secret_text + "\n", 0600));
  } else if (secret_file.empty()) {
    secret_file = std::getenv("FLEXSP_SECRET_FILE") ? std::getenv("FLEXSP_SECRET_FILE") : "";
  }
  nlohmann::json rec{{"role", "head"}, {"pid", ::getpid()}, {"address", address}, {"port", (*head)->port()}};
  proc_record own{dir / "procs" / (std::to_string(::getpid()) + ".json")};
  check(write_file_atomic(own.path, rec.dump(), 0600));
  if (!secret_file.empty()) {
    nlohmann::json cur{{"address", address}, {"secret_file", fs::absolute(secret_file).string()}, {"head_pid", ::getpid()}};
    check(write_file_atomic(dir / "current_cluster.json", cur.dump(2), 0600));
  }
  loop.start();
  // The job manager (scheduler actors, job API) lives in the head process.
  actors::job_defaults defaults;
  if (f.default_checkpoints != "none")
    defaults.checkpoint_root = f.default_checkpoints == "state" ? (dir / "checkpoints").string()
                                                                : fs::absolute(f.default_checkpoints).string();
  defaults.checkpoint_every = f.default_checkpoint_every;
  auto jobs = actors::job_service::start((*head)->host(), check(net::endpoint::parse(address)), cfg.transport,
                                         cfg.store, defaults);
  if (!jobs) {
    report(d.report_fd, "error " + jobs.error().message());
    fail(jobs.error());
  }
  std::unique_ptr<actors::dashboard> dash;
  if (f.dashboard_port >= 0) {
    actors::dashboard_config dc{f.dashboard_host, static_cast<std::uint16_t>(f.dashboard_port), f.dashboard_token};
    auto started = actors::dashboard::start(dc, (*head)->system(), (*head)->host(), check(net::endpoint::parse(address)),
                                            (*jobs)->jobs());
    if (started) {
      dash = std::move(*started);
    } else if (started.error().kind() == errc::invalid_argument) {
      report(d.report_fd, "error " + started.error().message());
      fail(started.error());
    } else {
      // Another head on this machine may hold the port: the cluster works without the endpoint.
      log::get("actors")->warn("head: no dashboard: {} (--dashboard-port 0 picks a free port)", started.error().message());
    }
  }
  if (dash && !secret_file.empty()) {
    auto cur = current_cluster();
    if (cur && (*cur)["address"] == address) {
      (*cur)["dashboard"] = dash->url();
      check(write_file_atomic(dir / "current_cluster.json", cur->dump(2), 0600));
    }
  }
  const std::string ready = fmt::format(
      "flexsp head started at {} (pid {}; listening on {}:{})\n  secret file: {}\n  add a node:  flexsp start --address "
      "{} --devices cpu:4\n  state store: {}",
      address, ::getpid(), bind, (*head)->port(), secret_file.empty() ? "(from the environment)" : secret_file,
      bind == "0.0.0.0" ? fmt::format("<this host's address>:{}", (*head)->port()) : address,
      cfg.store ? cfg.store->describe() : std::string{"none (a restarted head starts empty)"});
  const std::string ready_all = ready + (dash ? fmt::format("\n  dashboard:   {} (JSON API under /api, Prometheus at /metrics)", dash->url())
                                              : std::string{});
  if (d.is_child) report(d.report_fd, "ok " + fmt::format("{}", ready_all));
  else std::printf("%s\n", ready_all.c_str()), std::fflush(stdout);

  const int sig = wait_for_stop(signals);
  log::get("actors")->info("head: stopping ({})", sig == SIGUSR1 ? "shutdown requested" : strsignal(sig));
  dash.reset();
  (*jobs)->stop();
  (*head)->stop();
  std::this_thread::sleep_for(50ms);  // let the close frames leave
  loop.stop();
  if (auto cur = current_cluster(); cur && (*cur)["address"] == address) {
    std::error_code ec;
    fs::remove(dir / "current_cluster.json", ec);
  }
}

// ------------------------------------------------------------------------------------------
// start --address (node)

void run_node(const common_flags& f, const std::string& address_flag, const std::string& devices_spec,
              const std::string& bind, const std::string& advertise) {
  const auto dir = check(state_dir());
  const std::string address = check(resolve_address(address_flag));
  actors::node_config cfg;
  cfg.head = check(net::endpoint::parse(address));
  cfg.transport.secret = check(resolve_secret(f.secret_file, address));
  cfg.bind = {bind, 0};
  cfg.advertise_host = advertise;
  if (advertise.empty() && (bind == "0.0.0.0" || bind == "::")) cfg.advertise_host = check(net::local_address_towards(cfg.head));
  cfg.give_up_after = check(parse_duration_ms(f.give_up_after));
  // Validate the spec before forking (cuda:all needs the device count; auto the backend).
  const auto cuda = kernels::query_cuda();
  const auto backend = kernels::select_device_backend(kernels::backend_request::automatic);
  const bool cuda_usable = backend && backend->kind == kernels::backend_kind::cuda;
  const int cuda_count = devices_spec == "auto" && !cuda_usable ? 0 : static_cast<int>(cuda.devices.size());
  cfg.devices = check(actors::parse_devices(devices_spec, cuda_count));
  for (auto& d : cfg.devices)
    for (const auto& g : cuda.devices)
      if (d.kind == actors::device_kind::cuda && g.index == static_cast<int>(d.index))
        d.description = fmt::format("{} (sm_{}{}, {:.1f} GiB)", g.name, g.compute_capability_major,
                                    g.compute_capability_minor, static_cast<double>(g.memory_bytes) / (1u << 30));
  std::string listed;
  for (const auto& d : cfg.devices) listed += (listed.empty() ? "" : " ") + d.to_string();
  log::get("device")->info("node devices {} ({}); {}", listed, devices_spec,
                           backend ? backend->reason : backend.error().message());

  daemon_result d;
  if (!f.block) {
    d = daemonize(dir / "logs", "node", 15s);
    if (!d.is_child) {
      std::printf("%s\n", d.report.c_str());
      return;
    }
  }
  const sigset_t signals = block_stop_signals();
  net::event_loop loop;
  auto report_fd = std::make_shared<int>(d.report_fd);
  auto fatal = std::make_shared<std::optional<error>>();
  const bool foreground = !d.is_child;
  auto node = actors::node_service::start(
      loop, cfg,
      [report_fd, address, foreground](const actors::registration& r) {
        const std::string line = fmt::format("flexsp node {} joined the cluster at {} (epoch {}, pid {})", r.node_id,
                                             address, r.epoch, ::getpid());
        if (*report_fd >= 0) {
          report(*report_fd, "ok " + line);
          *report_fd = -1;
        } else if (foreground) {
          std::printf("%s\n", line.c_str());
          std::fflush(stdout);
        }
      },
      [report_fd, fatal](const error& e) {
        *fatal = e;
        if (*report_fd >= 0) {
          report(*report_fd, "error " + e.message());
          *report_fd = -1;
        }
        ::kill(::getpid(), SIGUSR1);
      });
  if (!node) {
    report(d.report_fd, "error " + node.error().message());
    fail(node.error());
  }
  nlohmann::json rec{{"role", "node"}, {"pid", ::getpid()}, {"head", address}, {"port", cfg.head.port},
                     {"actor_address", (*node)->actor_address()}};
  proc_record own{dir / "procs" / (std::to_string(::getpid()) + ".json")};
  check(write_file_atomic(own.path, rec.dump(), 0600));
  loop.start();
  const int sig = wait_for_stop(signals);
  log::get("actors")->info("node: stopping ({})", sig == SIGUSR1 ? "left the cluster" : strsignal(sig));
  (*node)->stop();
  std::this_thread::sleep_for(50ms);
  loop.stop();
  if (*fatal) fail(**fatal);
}

// ------------------------------------------------------------------------------------------
// status

nlohmann::json status_json(const actors::cluster_status& s, const std::string& address) {
  nlohmann::json j{{"address", address},
                   {"epoch", s.epoch},
                   {"head_pid", s.head_pid},
                   {"heartbeat_interval_ms", s.heartbeat_interval.count()},
                   {"failure_timeout_ms", s.failure_timeout.count()},
                   {"alive", s.alive_count()}};
  auto& nodes = j["nodes"] = nlohmann::json::array();
  for (const auto& n : s.nodes) {
    nlohmann::json devs = nlohmann::json::array();
    nlohmann::json details = nlohmann::json::array();
    for (const auto& d : n.devices) {
      devs.push_back(d.to_string());
      nlohmann::json dj{{"device", d.to_string()}, {"backend", std::string{actors::to_string(d.kind)}}};
      if (!d.description.empty()) dj["description"] = d.description;
      details.push_back(std::move(dj));
    }
    nlohmann::json e{{"id", n.id},
                     {"address", n.address},
                     {"state", std::string{actors::to_string(n.state)}},
                     {"devices", devs},
                     {"device_details", details},
                     {"pid", n.pid},
                     {"joined_epoch", n.joined_epoch}};
    if (n.state == actors::node_state::dead) {
      e["lost_epoch"] = n.lost_epoch;
      e["lost_reason"] = n.lost_reason;
    }
    nodes.push_back(std::move(e));
  }
  return j;
}

std::unique_ptr<actors::cluster_client> connect_client(const std::string& address_flag, const std::string& secret_file,
                                                        std::string& address) {
  address = check(resolve_address(address_flag));
  net::transport_config t;
  t.secret = check(resolve_secret(secret_file, address));
  t.handshake_timeout = 5s;
  auto c = actors::cluster_client::connect(check(net::endpoint::parse(address)), t);
  if (!c) fail(error{c.error().kind(), fmt::format("cannot reach the head at {}: {}", address, c.error().message())});
  return std::move(*c);
}

// ------------------------------------------------------------------------------------------
// stop

bool is_flexsp_process(pid_t pid) {
  auto cmd = read_file(fmt::format("/proc/{}/cmdline", pid));
  return cmd && cmd->find("flexsp") != std::string::npos;
}

bool process_gone(pid_t pid) {
  // A zombie child (only possible when we are its parent) counts as gone.
  int status;
  ::waitpid(pid, &status, WNOHANG);
  if (::kill(pid, 0) != 0) return true;
  auto st = read_file(fmt::format("/proc/{}/stat", pid));
  if (st) {
    const auto close_paren = st->rfind(')');
    if (close_paren != std::string::npos && close_paren + 2 < st->size() && (*st)[close_paren + 2] == 'Z') return true;
  }
  return false;
}

int stop_processes(std::optional<std::uint16_t> port, std::chrono::milliseconds grace) {
  const auto dir = check(state_dir());
  std::vector<std::pair<pid_t, std::string>> targets;
  for (const auto& entry : fs::directory_iterator(dir / "procs")) {
    auto text = read_file(entry.path());
    if (!text) continue;
    auto j = nlohmann::json::parse(*text, nullptr, false);
    if (j.is_discarded() || !j.contains("pid")) continue;
    const pid_t pid = j["pid"].get<pid_t>();
    if (process_gone(pid) || !is_flexsp_process(pid)) {
      std::error_code ec;
      fs::remove(entry.path(), ec);
      continue;
    }
    if (port && j.value("port", 0) != *port) continue;
    targets.emplace_back(pid, j.value("role", std::string{"?"}));
  }
  // Nodes first, so that the head does not report them lost on the way down.
  std::stable_sort(targets.begin(), targets.end(), [](const auto& a, const auto& b) { return a.second == "node" && b.second != "node"; });
  for (const auto& [pid, role] : targets) ::kill(pid, SIGTERM);
  const auto deadline = std::chrono::steady_clock::now() + grace;
  std::size_t killed = 0;
  for (const auto& [pid, role] : targets) {
    while (!process_gone(pid) && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(10ms);
    if (!process_gone(pid)) {
      ::kill(pid, SIGKILL);
      ++killed;
      while (!process_gone(pid)) std::this_thread::sleep_for(10ms);
    }
    std::error_code ec;
    fs::remove(dir / "procs" / (std::to_string(pid) + ".json"), ec);
  }
  std::printf("stopped %zu flexsp process%s%s\n", targets.size(), targets.size() == 1 ? "" : "es",
              killed ? fmt::format(" ({} did not exit on SIGTERM and were killed)", killed).c_str() : "");
  if (auto cur = current_cluster(); cur && (!port || (*cur)["address"].get<std::string>().ends_with(":" + std::to_string(*port)))) {
    const pid_t head_pid = (*cur).value("head_pid", 0);
    if (head_pid == 0 || process_gone(head_pid)) {
      std::error_code ec;
      fs::remove(dir / "current_cluster.json", ec);
    }
  }
  return 0;
}

}  // namespace

void add_cluster_commands(CLI::App& root) {
  // ---- start
  auto* start = root.add_subcommand("start", "Start a head (--head) or a node (--address) on this machine");
  start->footer(
      "Examples:\n"
      "  flexsp start --head --port 7400\n"
      "  flexsp start --address 127.0.0.1:7400 --devices cpu:4\n\n"
      "Environment: FLEXSP_CLUSTER_SECRET (the secret itself), FLEXSP_SECRET_FILE, FLEXSP_ADDRESS,\n"
      "FLEXSP_STATE_DIR (default $XDG_RUNTIME_DIR/flexsp or /tmp/flexsp-$UID)");
  struct start_opts {
    bool head = false;
    std::uint16_t port = kDefaultPort;
    std::string address;
    std::string devices = "auto";
    std::string bind = "127.0.0.1";
    std::string advertise;
    double cpu_memory_gb = 0;
    common_flags common;
  };
  auto so = std::make_shared<start_opts>();
  start->add_flag("--head", so->head, "start the head process (registry, membership, failure detector, KV store)");
  start->add_option("--port", so->port, "head port (0: any free port; the address is printed)")->capture_default_str();
  start->add_option("--address", so->address,
                    "HOST:PORT of the head to join (node mode; default FLEXSP_ADDRESS, else the head started on this "
                    "machine)");
  start->add_option("--devices", so->devices,
                    "node devices: cpu:N, cuda:all, cuda:0,1 (joined with +), or auto (every GPU when the CUDA "
                    "backend is usable, else cpu:1)")
      ->capture_default_str();
  start->add_option("--bind", so->bind, "address to listen on (default loopback; 0.0.0.0 for every interface)")
      ->capture_default_str();
  start->add_option("--cpu-memory-gb", so->cpu_memory_gb,
                    "node: memory each CPU device may use, GB, for the planner's memory limit (default: this "
                    "host's memory divided among the node's CPU devices)")
      ->check(positive_number);
  start->add_option("--advertise", so->advertise,
                    "address other processes use to reach this process (default: the bind address; when binding "
                    "0.0.0.0, a node's local address that reaches the head, a head's first non-loopback address)");
  start->add_option("--secret-file", so->common.secret_file,
                    "file holding the cluster's shared secret (a head without one generates it)");
  start->add_option("--heartbeat-interval", so->common.heartbeat, "head: heartbeat interval nodes use (e.g. 500ms)")
      ->capture_default_str();
  start->add_option("--failure-timeout", so->common.failure_timeout,
                    "head: a node silent this long is removed (e.g. 3s)")
      ->capture_default_str();
  start->add_option("--dashboard-port", so->common.dashboard_port,
                    "head: port of the HTTP endpoint (JSON API, Prometheus /metrics); 0: any free port; -1: none")
      ->capture_default_str()
      ->check(CLI::Range(-1, 65535));
  start->add_option("--dashboard-host", so->common.dashboard_host,
                    "head: address the HTTP endpoint listens on (another than loopback needs --dashboard-token)")
      ->capture_default_str();
  start->add_option("--dashboard-token", so->common.dashboard_token,
                    "head: token every HTTP request must carry (Authorization: Bearer TOKEN, or ?token=TOKEN)");
  start->add_option("--give-up-after", so->common.give_up_after,
                    "node: exit when the head has been unreachable this long (0: never)")
      ->capture_default_str();
  start->add_option("--state-store", so->common.state_store,
                    "head: where membership, KV, names and jobs outlive the head process: file (default: "
                    "<state dir>/head-<port>.state), file:PATH, redis://HOST:PORT[/NAMESPACE], or none")
      ->capture_default_str();
  start->add_option("--default-checkpoints", so->common.default_checkpoints,
                    "head: where jobs that name no checkpoint directory checkpoint (<dir>/<job id>): state (the "
                    "state directory's checkpoints/), a directory every node reaches at that path, or none")
      ->capture_default_str();
  start->add_option("--default-checkpoint-every", so->common.default_checkpoint_every,
                    "head: steps between those default checkpoints (a job's checkpoint.every wins)")
      ->capture_default_str()
      ->check(CLI::Range(1u, 1000000u));
  start->add_flag("--block", so->common.block, "stay in the foreground instead of starting a background process");
  start->callback([so, start]() {
    // A node joins --address, else FLEXSP_ADDRESS, else the head started on this machine.
    if (so->head && !so->address.empty()) throw CLI::ValidationError("give either --head or --address HOST:PORT, not both");
    if (!so->head && so->address.empty() && !std::getenv("FLEXSP_ADDRESS") && !current_cluster())
      throw CLI::ValidationError(
          "give --head to start a head, or --address HOST:PORT (or FLEXSP_ADDRESS) to start a node; no head was "
          "started on this machine for a node to join by default");
    if (so->head && start->count("--devices"))
      throw CLI::ValidationError("--devices", "devices belong to nodes; start a node with --address");
    if (so->head && start->count("--cpu-memory-gb"))
      throw CLI::ValidationError("--cpu-memory-gb", "devices belong to nodes; start a node with --address");
    if (so->cpu_memory_gb > 0)
      kernels::set_cpu_device_memory(static_cast<std::uint64_t>(so->cpu_memory_gb * 1024.0 * 1024.0 * 1024.0));
    if (so->head)
      run_head(so->common, so->port, so->bind, so->advertise);
    else
      run_node(so->common, so->address, so->devices, so->bind, so->advertise);
  });

  // ---- status
  auto* status = root.add_subcommand("status", "Show the cluster's membership: epoch, nodes, devices");
  auto st_address = std::make_shared<std::string>();
  auto st_secret = std::make_shared<std::string>();
  auto st_json = std::make_shared<bool>(false);
  status->add_option("--address", *st_address, "HOST:PORT of the head (default: the cluster started here)");
  status->add_option("--secret-file", *st_secret, "file holding the cluster's shared secret");
  status->add_flag("--json", *st_json, "print JSON");
  status->callback([st_address, st_secret, st_json]() {
    std::string address;
    auto client = connect_client(*st_address, *st_secret, address);
    auto s = check(client->status());
    // The jobs, through the job API (an old head without one: no job list, not an error).
    std::vector<actors::job_info> jobs;
    if (auto jc = connect_job_client(address, *st_secret))
      if (auto l = (*jc)->list()) jobs = std::move(*l);
    if (*st_json) {
      auto j = status_json(s, address);
      j["jobs"] = nlohmann::json::array();
      for (const auto& i : jobs)
        j["jobs"].push_back({{"id", i.id},
                             {"state", std::string{actors::to_string(i.state)}},
                             {"steps_done", i.steps_done},
                             {"steps_total", i.steps_total},
                             {"last_loss", i.last_loss}});
      std::printf("%s\n", j.dump(2).c_str());
      return;
    }
    std::printf("cluster %s  epoch %llu  nodes: %zu alive, %zu dead  (heartbeat %lld ms, failure timeout %lld ms)\n",
                address.c_str(), static_cast<unsigned long long>(s.epoch), s.alive_count(),
                s.nodes.size() - s.alive_count(), static_cast<long long>(s.heartbeat_interval.count()),
                static_cast<long long>(s.failure_timeout.count()));
    if (auto cur = current_cluster(); cur && (*cur).value("address", "") == address && cur->contains("dashboard"))
      std::printf("dashboard %s\n", (*cur)["dashboard"].get<std::string>().c_str());
    std::printf("jobs: %zu\n", jobs.size());
    for (const auto& i : jobs)
      std::printf("  job %-20s %-9s %llu/%llu steps%s\n", i.id.c_str(), std::string{actors::to_string(i.state)}.c_str(),
                  static_cast<unsigned long long>(i.steps_done), static_cast<unsigned long long>(i.steps_total),
                  i.steps_done ? fmt::format("  loss {:.3f}", i.last_loss).c_str() : "");
    for (const auto& n : s.nodes) {
      std::string devs;
      for (const auto& d : n.devices)
        devs += (devs.empty() ? "" : " ") + d.to_string() + (d.description.empty() ? "" : " [" + d.description + "]");
      std::printf("  node %-4llu %-5s %-22s pid %-7u %s%s\n", static_cast<unsigned long long>(n.id),
                  std::string{actors::to_string(n.state)}.c_str(), n.address.c_str(), n.pid, devs.c_str(),
                  n.state == actors::node_state::dead
                      ? fmt::format("  (lost at epoch {}: {})", n.lost_epoch, n.lost_reason).c_str()
                      : "");
    }
  });

  // ---- stop
  auto* stop = root.add_subcommand("stop", "Stop the flexsp head and node processes started on this machine");
  auto sp_port = std::make_shared<std::uint16_t>(0);
  auto sp_grace = std::make_shared<std::string>("5s");
  stop->add_option("--port", *sp_port, "only the cluster whose head listens on this port");
  stop->add_option("--grace", *sp_grace, "time to exit after SIGTERM before SIGKILL")->capture_default_str();
  stop->callback([sp_port, sp_grace, stop]() {
    const auto grace = check(parse_duration_ms(*sp_grace));
    stop_processes(stop->count("--port") ? std::optional<std::uint16_t>{*sp_port} : std::nullopt, grace);
  });
}

}  // namespace flexsp::app
