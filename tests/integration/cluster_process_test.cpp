// The cluster as users run it: real `flexsp` head and node processes on loopback, signals,
// a hostile peer, and the commands' output. Short heartbeat settings, generous bounds.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>
#include <regex>
#include <sstream>
#include <string>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "flexsp/actors/client.hpp"
#include "flexsp/actors/job_client.hpp"
#include "flexsp/actors/device_actor.hpp"
#include "flexsp/core/actor_system.hpp"

namespace {

using namespace flexsp;
using namespace flexsp::actors;
using namespace std::chrono_literals;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

constexpr auto kInterval = 100ms;
constexpr auto kTimeout = 1500ms;

struct run_result {
  int exit_code;
  std::string output;
};

run_result run(const std::string& args, const std::string& env = "") {
  const std::string command = env + " " + std::string{FLEXSP_CLI_PATH} + " " + args + " 2>&1";
  FILE* pipe = ::popen(command.c_str(), "r");
  EXPECT_NE(pipe, nullptr);
  std::string out;
  std::array<char, 4096> buf{};
  while (auto n = std::fread(buf.data(), 1, buf.size(), pipe)) out.append(buf.data(), n);
  const int status = ::pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

std::string read_all(const fs::path& p) {
  std::ifstream in{p};
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool gone(pid_t pid) {
  if (::kill(pid, 0) != 0) return true;
  std::ifstream st{"/proc/" + std::to_string(pid) + "/stat"};
  std::string s((std::istreambuf_iterator<char>(st)), {});
  const auto p = s.rfind(')');
  return p != std::string::npos && p + 2 < s.size() && s[p + 2] == 'Z';
}

char proc_state(pid_t pid) {
  std::ifstream st{"/proc/" + std::to_string(pid) + "/stat"};
  std::string s((std::istreambuf_iterator<char>(st)), {});
  const auto p = s.rfind(')');
  return p != std::string::npos && p + 2 < s.size() ? s[p + 2] : '?';
}

template <class F>
bool eventually(F cond, std::chrono::milliseconds within = 10s) {
  const auto deadline = Clock::now() + within;
  while (Clock::now() < deadline) {
    if (cond()) return true;
    std::this_thread::sleep_for(10ms);
  }
  return cond();
}

// One cluster per test, in its own state directory, on an ephemeral port.
class ClusterProcesses : public ::testing::Test {
protected:
  void SetUp() override {
    char tmpl[] = "/tmp/flexsp-cluster-test-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    state_ = tmpl;
    ::setenv("FLEXSP_STATE_DIR", state_.c_str(), 1);
    auto r = run(fmt::format("start --head --port 0 --dashboard-port 0 --heartbeat-interval {}ms --failure-timeout {}ms",
                             kInterval.count(), kTimeout.count()));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    std::smatch m;
    ASSERT_TRUE(std::regex_search(r.output, m, std::regex{R"(started at (\S+) \(pid (\d+))"})) << r.output;
    address_ = m[1];
    head_pid_ = std::stoi(m[2]);
    auto cur = nlohmann::json::parse(read_all(state_ / "current_cluster.json"));
    secret_ = read_all(cur["secret_file"].get<std::string>());
    while (!secret_.empty() && secret_.back() == '\n') secret_.pop_back();
  }

  void TearDown() override {
    auto r = run("stop --grace 3s");
    EXPECT_EQ(r.exit_code, 0) << r.output;
    for (pid_t p : pids_) EXPECT_TRUE(eventually([p]() { return gone(p); }, 5s)) << "pid " << p << " survived stop";
    EXPECT_TRUE(gone(head_pid_));
    std::error_code ec;
    fs::remove_all(state_, ec);
  }

  pid_t start_node(const std::string& devices) {
    auto r = run(fmt::format("start --address {} --devices {}", address_, devices));
    EXPECT_EQ(r.exit_code, 0) << r.output;
    std::smatch m;
    if (!std::regex_search(r.output, m, std::regex{R"(node (\d+) joined .*pid (\d+)\))"})) {
      ADD_FAILURE() << r.output;
      return -1;
    }
    const pid_t pid = std::stoi(m[2]);
    pids_.push_back(pid);
    return pid;
  }

  net::transport_config transport() const {
    net::transport_config t;
    t.secret.assign(secret_.begin(), secret_.end());
    return t;
  }

  std::unique_ptr<cluster_client> client() {
    auto c = cluster_client::connect(*net::endpoint::parse(address_), transport());
    EXPECT_TRUE(c) << c.error().to_string();
    return c ? std::move(*c) : nullptr;
  }

  nlohmann::json status_json() {
    auto r = run("status --json");
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return nlohmann::json::parse(r.output, nullptr, false);
  }

  const node_record* find_pid(const cluster_status& s, pid_t pid, node_state state) {
    for (const auto& n : s.nodes)
      if (n.pid == static_cast<std::uint32_t>(pid) && n.state == state) return &n;
    return nullptr;
  }

  fs::path state_;
  std::string address_;
  std::string secret_;
  pid_t head_pid_ = 0;
  std::vector<pid_t> pids_;
};

// Collects membership events pushed to one subscriber.
struct subscriber {
  std::unique_ptr<cluster_client> client;
  std::mutex m;
  std::condition_variable cv;
  std::vector<std::pair<membership_event, Clock::time_point>> events;

  explicit subscriber(std::unique_ptr<cluster_client> c) : client{std::move(c)} {
    auto s = client->subscribe([this](const membership_event& e) {
      std::lock_guard lock{m};
      events.emplace_back(e, Clock::now());
      cv.notify_all();
    });
    EXPECT_TRUE(s);
  }
  std::vector<std::pair<membership_event, Clock::time_point>> lost_of(std::uint64_t id) {
    std::lock_guard lock{m};
    std::vector<std::pair<membership_event, Clock::time_point>> out;
    for (auto& e : events)
      if (e.first.kind == membership_event::kind_t::lost && e.first.node.id == id) out.push_back(e);
    return out;
  }
};

TEST_F(ClusterProcesses, StatusShowsEveryNodeWithItsDevices) {
  start_node("cpu:2");
  start_node("cpu:1");
  auto j = status_json();
  ASSERT_FALSE(j.is_discarded());
  EXPECT_EQ(j["epoch"], 2);
  ASSERT_EQ(j["nodes"].size(), 2u);
  for (const auto& n : j["nodes"]) {
    EXPECT_EQ(n["state"], "alive");
    EXPECT_TRUE(n.contains("id") && n.contains("address"));
  }
  EXPECT_EQ(j["nodes"][0]["devices"], nlohmann::json::array({"cpu:0", "cpu:1"}));
  EXPECT_EQ(j["nodes"][0]["device_details"][1]["backend"], "cpu");
  auto text = run("status");
  EXPECT_EQ(text.exit_code, 0);
  EXPECT_NE(text.output.find("2 alive"), std::string::npos) << text.output;
}

/// The response to `GET path` from the HTTP server at 127.0.0.1:`port` (status line, headers, body).
std::string http_get(int port, const std::string& path, const std::string& headers = "") {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<std::uint16_t>(port));
  ::inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ::close(fd);
    return {};
  }
  const auto req = fmt::format("GET {} HTTP/1.0\r\nHost: 127.0.0.1\r\n{}\r\n", path, headers);
  (void)!::write(fd, req.data(), req.size());
  std::string out;
  char buf[4096];
  for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;) out.append(buf, static_cast<std::size_t>(n));
  ::close(fd);
  return out;
}

std::string body_of(const std::string& response) {
  const auto at = response.find("\r\n\r\n");
  return at == std::string::npos ? std::string{} : response.substr(at + 4);
}

TEST_F(ClusterProcesses, TheHeadServesItsClusterAndJobsAsJsonAndPrometheusMetrics) {
  start_node("cpu:2");
  const auto spec = state_ / "job.json";
  std::ofstream{spec} << R"({"name": "dash", "steps": 3, "batch_size": 8, "model": {"max_seq": 256}, "calibrate": false})";
  auto submitted = run("job submit " + spec.string() + " --wait");
  ASSERT_EQ(submitted.exit_code, 0) << submitted.output;
  const auto cur = nlohmann::json::parse(read_all(state_ / "current_cluster.json"));
  ASSERT_TRUE(cur.contains("dashboard")) << cur.dump();
  std::smatch m;
  const auto url = cur["dashboard"].get<std::string>();
  ASSERT_TRUE(std::regex_search(url, m, std::regex{R"(:(\d+)/$)"})) << url;
  const int port = std::stoi(m[1]);
  EXPECT_NE(run("status").output.find("dashboard " + url), std::string::npos);

  auto cluster = nlohmann::json::parse(body_of(http_get(port, "/api/cluster")), nullptr, false);
  ASSERT_FALSE(cluster.is_discarded());
  EXPECT_EQ(cluster["epoch"], 1);
  EXPECT_EQ(cluster["devices_alive"], 2);
  ASSERT_EQ(cluster["nodes"].size(), 1u);
  EXPECT_EQ(cluster["nodes"][0]["state"], "alive");
  auto jobs = nlohmann::json::parse(body_of(http_get(port, "/api/jobs")), nullptr, false);
  ASSERT_TRUE(jobs.is_array() && jobs.size() == 1) << jobs.dump();
  const auto id = jobs[0]["id"].get<std::string>();
  EXPECT_EQ(jobs[0]["state"], "succeeded");
  auto job = nlohmann::json::parse(body_of(http_get(port, "/api/jobs/" + id)), nullptr, false);
  ASSERT_TRUE(job.is_object()) << job.dump();
  EXPECT_EQ(job["metrics"].size(), 3u);
  EXPECT_EQ(job["metrics"][0]["step"], 1) << "steps are numbered from 1, as the console numbers them";
  EXPECT_FALSE(job["logs"].empty());
  EXPECT_TRUE(std::regex_search(job["logs"][0].get<std::string>(),
                                std::regex{R"(^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \S)"}))
      << "log lines carry their UTC time: " << job["logs"][0];
  EXPECT_EQ(job["spec"]["steps"], 3) << job["spec"].dump();
  auto served_spec = nlohmann::json::parse(body_of(http_get(port, "/api/jobs/" + id + "/spec")), nullptr, false);
  EXPECT_EQ(served_spec, job["spec"]);
  EXPECT_NE(http_get(port, "/api/jobs/nope").find("404"), std::string::npos);
  auto events = nlohmann::json::parse(body_of(http_get(port, "/api/jobs/" + id + "/events")), nullptr, false);
  ASSERT_TRUE(events.is_array() && !events.empty()) << events.dump();
  EXPECT_EQ(events.back()["kind"], "finished") << events.dump();
  EXPECT_EQ(events.back()["detail"], "succeeded") << events.dump();
  EXPECT_EQ(job["events"].size(), events.size());

  const auto metrics = body_of(http_get(port, "/metrics"));
  EXPECT_NE(metrics.find(fmt::format("flexsp_job_steps_committed_total{{job=\"{}\",name=\"dash\"}} 3", id)),
            std::string::npos)
      << metrics;
  EXPECT_NE(metrics.find("flexsp_cluster_devices 2"), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("flexsp_job_tokens_per_second{"), std::string::npos) << metrics;
  // The exposition passes Prometheus' own linter.
  const auto file = state_ / "metrics.txt";
  std::ofstream{file} << metrics;
  FILE* p = ::popen(fmt::format("promtool check metrics < {} 2>&1", file.string()).c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string lint;
  char buf[512];
  while (auto n = std::fread(buf, 1, sizeof buf, p)) lint.append(buf, n);
  const int rc = ::pclose(p);
  EXPECT_TRUE(WIFEXITED(rc) && WEXITSTATUS(rc) == 0) << "promtool (installed by scripts/bootstrap.sh): " << lint;
}

TEST_F(ClusterProcesses, TheDashboardPageShowsTheClusterAJobAndItsPlansInARealBrowser) {
  // Headless Chromium (installed by scripts/bootstrap.sh) loads the page the head serves, runs
  // its script against the live cluster and renders it.
  start_node("cpu:2");
  const auto spec = state_ / "job.json";
  std::ofstream{spec} << R"({"name": "page", "steps": 5, "batch_size": 16, "model": {"max_seq": 512}, "calibrate": false})";
  ASSERT_EQ(run("job submit " + spec.string() + " --wait").exit_code, 0);
  const auto url = nlohmann::json::parse(read_all(state_ / "current_cluster.json"))["dashboard"].get<std::string>();
  const auto chromium = fmt::format("chromium --headless --no-sandbox --disable-gpu --disable-dev-shm-usage "
                                    "--virtual-time-budget=8000");
  FILE* p = ::popen((chromium + " --dump-dom " + url + " 2>/dev/null").c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string dom;
  char buf[4096];
  while (auto n = std::fread(buf, 1, sizeof buf, p)) dom.append(buf, n);
  ::pclose(p);
  ASSERT_NE(dom.find("data-ready=\"1\""), std::string::npos) << "the page's script did not finish:\n" << dom.substr(0, 2000);
  EXPECT_NE(dom.find("data-node=\"1\""), std::string::npos) << "the node is listed";
  EXPECT_NE(dom.find("data-job=\"page-1\""), std::string::npos) << "the job is listed";
  EXPECT_NE(dom.find("Job page-1 (succeeded)"), std::string::npos);
  std::size_t series = 0, blocks = 0;
  for (auto at = dom.find("class=\"series\""); at != std::string::npos; at = dom.find("class=\"series\"", at + 1)) ++series;
  for (auto at = dom.find("class=\"gantt-block\""); at != std::string::npos; at = dom.find("class=\"gantt-block\"", at + 1)) ++blocks;
  EXPECT_EQ(series, 3u) << "loss, step time and tokens/s charts";
  EXPECT_GE(blocks, 5u) << "the SP groups of the last steps";
  const auto shot = state_ / "dashboard.png";
  ASSERT_EQ(std::system((chromium + " --window-size=1200,1000 --screenshot=" + shot.string() + " " + url +
                         " > /dev/null 2>&1").c_str()),
            0);
  std::error_code ec;
  EXPECT_GT(fs::file_size(shot, ec), 10000u) << "a rendered screenshot";
}

TEST_F(ClusterProcesses, JobCommandsSayWhatTheyDidToAFinishedJob) {
  start_node("cpu:2");
  const auto spec = state_ / "job.json";
  std::ofstream{spec} << R"({"name": "done", "steps": 2, "batch_size": 8, "model": {"max_seq": 256}, "calibrate": false})";
  ASSERT_EQ(run("job submit " + spec.string() + " --wait").exit_code, 0);
  auto status = run("job status done-1 --json");
  ASSERT_EQ(status.exit_code, 0) << status.output;
  EXPECT_EQ(nlohmann::json::parse(status.output, nullptr, false).value("state", ""), "succeeded") << status.output;
  auto listed = run("status");
  EXPECT_NE(listed.output.find("jobs: 1"), std::string::npos) << listed.output;
  EXPECT_NE(listed.output.find("job done-1"), std::string::npos) << listed.output;
  EXPECT_EQ(status_json()["jobs"][0]["state"], "succeeded");
  auto stop = run("job stop done-1");
  EXPECT_EQ(stop.exit_code, 1) << stop.output;
  EXPECT_NE(stop.output.find("job done-1 already succeeded; nothing to stop"), std::string::npos) << stop.output;
}

TEST_F(ClusterProcesses, JobLogsFollowARunningJobWithTimedLinesUntilItEnds) {
  start_node("cpu:2");
  const auto spec = state_ / "job.json";
  std::ofstream{spec} << R"({"name": "logs", "steps": 4, "batch_size": 8, "model": {"max_seq": 256}, "calibrate": false})";
  auto submitted = run("job submit " + spec.string());
  ASSERT_EQ(submitted.exit_code, 0) << submitted.output;
  const std::string id = "logs-1";
  ASSERT_NE(submitted.output.find(id), std::string::npos) << submitted.output;
  auto followed = run("job logs " + id + " --follow");  // returns once the job ended
  ASSERT_EQ(followed.exit_code, 0) << followed.output;
  EXPECT_NE(followed.output.find("step 4/4"), std::string::npos) << followed.output;
  std::istringstream lines{followed.output};
  const std::regex timed{R"(^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z  \S)"};
  std::string previous;
  for (std::string l; std::getline(lines, l);) {
    EXPECT_TRUE(std::regex_search(l, timed)) << "every line starts with its UTC time: " << l;
    EXPECT_LE(previous.substr(0, 24), l.substr(0, 24)) << "in time order";
    previous = l;
  }
  EXPECT_EQ(run("job status " + id).output.find("\"succeeded\"") != std::string::npos, true);
  auto metrics = run("job logs " + id + " --metrics");
  ASSERT_EQ(metrics.exit_code, 0) << metrics.output;
  std::istringstream json_lines{metrics.output};
  std::uint64_t n = 0;
  for (std::string l; std::getline(json_lines, l);)
    EXPECT_EQ(nlohmann::json::parse(l, nullptr, false).value("step", 0u), ++n) << "JSON metrics only: " << l;
  EXPECT_EQ(n, 4u);
  auto missing = run("job logs nope-7");
  EXPECT_EQ(missing.exit_code, 2) << missing.output;
}

TEST_F(ClusterProcesses, ANodeStartedWithoutAnAddressJoinsTheHeadStartedHere) {
  ::unsetenv("FLEXSP_ADDRESS");
  auto r = run("start --devices cpu:1");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(r.output, m, std::regex{R"(node (\d+) joined .*pid (\d+)\))"})) << r.output;
  pids_.push_back(std::stoi(m[2]));
  EXPECT_EQ(status_json()["nodes"].size(), 1u);
  const auto empty = state_ / "no-head-here";
  fs::create_directories(empty);
  auto alone = run("start --devices cpu:1", "FLEXSP_STATE_DIR=" + empty.string());
  EXPECT_NE(alone.exit_code, 0);
  EXPECT_NE(alone.output.find("no head was started on this machine"), std::string::npos) << alone.output;
  auto both = run("start --head --address " + address_);
  EXPECT_NE(both.exit_code, 0);
  EXPECT_NE(both.output.find("either --head or --address"), std::string::npos) << both.output;
}

TEST_F(ClusterProcesses, TheCppJobClientFindsTheClusterStartedHereAsTheCliDoes) {
  // No address, no secret: FLEXSP_STATE_DIR's record of the head started by SetUp.
  ::unsetenv("FLEXSP_ADDRESS");
  ::unsetenv("FLEXSP_CLUSTER_SECRET");
  ::unsetenv("FLEXSP_SECRET_FILE");
  auto client = actors::job_client::connect();
  ASSERT_TRUE(client) << client.error().to_string();
  EXPECT_EQ((*client)->head_address(), address_);
  auto jobs = (*client)->list();
  ASSERT_TRUE(jobs) << jobs.error().to_string();
  EXPECT_TRUE(jobs->empty());
  // The same cluster spelled another way on this machine finds the same secret.
  const auto port = address_.substr(address_.rfind(':'));
  EXPECT_TRUE(actors::job_client::connect("localhost" + port)) << "localhost" << port;
  auto other = actors::job_client::connect("127.0.0.1:1");
  ASSERT_FALSE(other);
  EXPECT_NE(other.error().message().find("no cluster secret for 127.0.0.1:1 (the head started on this machine is at"),
            std::string::npos)
      << other.error().message();
}

TEST_F(ClusterProcesses, ADashboardBeyondLoopbackNeedsAToken) {
  const auto other = state_ / "other";
  fs::create_directories(other);
  const auto env = "FLEXSP_STATE_DIR=" + other.string();
  auto refused = run("start --head --port 0 --dashboard-host 0.0.0.0 --dashboard-port 0", env);
  EXPECT_NE(refused.exit_code, 0);
  EXPECT_NE(refused.output.find("needs --dashboard-token"), std::string::npos) << refused.output;
  auto started = run("start --head --port 0 --dashboard-port 0 --dashboard-token s3cret", env);
  ASSERT_EQ(started.exit_code, 0) << started.output;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(started.output, m, std::regex{R"(dashboard:\s+http://127.0.0.1:(\d+)/)"})) << started.output;
  const int port = std::stoi(m[1]);
  EXPECT_NE(http_get(port, "/api/cluster").find(" 401 "), std::string::npos);
  EXPECT_NE(http_get(port, "/api/cluster?token=s3cret").find(" 200 "), std::string::npos);
  EXPECT_NE(http_get(port, "/metrics", "Authorization: Bearer s3cret\r\n").find(" 200 "), std::string::npos);
  EXPECT_EQ(run("stop --grace 3s", env).exit_code, 0);
}

TEST_F(ClusterProcesses, KilledNodeIsSeenLostByEverySubscriberOnceAndTheEpochRisesByOne) {
  start_node("cpu:1");
  const pid_t victim = start_node("cpu:1");
  subscriber s1{client()}, s2{client()};
  auto before = s1.client->status();
  ASSERT_TRUE(before);
  const auto* rec = find_pid(*before, victim, node_state::alive);
  ASSERT_NE(rec, nullptr);
  const auto id = rec->id;
  const auto t0 = Clock::now();
  ASSERT_EQ(::kill(victim, SIGKILL), 0);
  for (auto* s : {&s1, &s2}) {
    ASSERT_TRUE(eventually([&]() { return !s->lost_of(id).empty(); }, kTimeout + 5s));
    const auto ev = s->lost_of(id)[0];
    EXPECT_EQ(ev.first.epoch, before->epoch + 1);
    EXPECT_LT(ev.second - t0, kTimeout) << "a closed connection is detected before the heartbeat timeout";
  }
  std::this_thread::sleep_for(kTimeout + 2 * kInterval);  // the detector must not report it again
  EXPECT_EQ(s1.lost_of(id).size(), 1u);
  EXPECT_EQ(s2.lost_of(id).size(), 1u);
  auto after = s1.client->status();
  ASSERT_TRUE(after);
  EXPECT_EQ(after->epoch, before->epoch + 1);
  EXPECT_EQ(after->alive_count(), 1u);
}

TEST_F(ClusterProcesses, StoppedNodeIsRemovedByTimeoutAndRejoinsAsANewMemberAfterContinue) {
  const pid_t victim = start_node("cpu:1");
  subscriber sub{client()};
  auto before = sub.client->status();
  ASSERT_TRUE(before);
  const auto id = find_pid(*before, victim, node_state::alive)->id;
  const auto t0 = Clock::now();
  ASSERT_EQ(::kill(victim, SIGSTOP), 0);
  ASSERT_TRUE(eventually([&]() { return !sub.lost_of(id).empty(); }, kTimeout + 5s));
  const auto lost = sub.lost_of(id)[0];
  const auto detection = lost.second - t0;
  // Detected by the timeout, not at once; the upper bound leaves room for a loaded machine (the
  // benchmark measures the precise figure).
  EXPECT_GE(detection, kTimeout / 2);
  EXPECT_LE(detection, kTimeout + kInterval + 2000ms);
  EXPECT_NE(lost.first.node.lost_reason.find("no heartbeat"), std::string::npos) << lost.first.node.lost_reason;
  EXPECT_EQ(lost.first.epoch, before->epoch + 1);

  ASSERT_EQ(::kill(victim, SIGCONT), 0);
  expected<cluster_status> now = make_error(errc::failed, "");
  ASSERT_TRUE(eventually([&]() {
    now = sub.client->status();
    return now && find_pid(*now, victim, node_state::alive) != nullptr;
  }));
  const auto* again = find_pid(*now, victim, node_state::alive);
  EXPECT_NE(again->id, id) << "a returning process joins under a new id";
  EXPECT_EQ(now->epoch, before->epoch + 2);
  // The head lists the new membership before the node has read (and logged) the head's reply.
  const auto said = fmt::format("previous membership as node {} had been ended by the head", id);
  std::string log;
  EXPECT_TRUE(eventually([&]() {
    log = read_all(state_ / "logs" / fmt::format("node-{}.log", victim));
    return log.find(said) != std::string::npos;
  })) << log;
}

TEST_F(ClusterProcesses, ANodeWithTheWrongSecretIsRejectedAndTheHeadLogsIt) {
  auto r = run(fmt::format("start --address {} --devices cpu:1", address_), "FLEXSP_CLUSTER_SECRET=wrong-secret");
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("authentication failed"), std::string::npos) << r.output;
  auto s = run("status --json", "FLEXSP_CLUSTER_SECRET=wrong-secret");
  EXPECT_NE(s.exit_code, 0) << s.output;
  // The head logs the rejection as it sends it: the log may trail the client's error a little.
  std::string log;
  EXPECT_TRUE(eventually([&]() {
    log = read_all(state_ / "logs" / fmt::format("head-{}.log", head_pid_));
    return log.find("wrong or missing cluster secret") != std::string::npos;
  })) << log;
  auto j = status_json();
  EXPECT_EQ(j["nodes"].size(), 0u);
}

int raw_connect(std::uint16_t port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  timeval tv{10, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  return fd;
}

bool closed_by_peer(int fd) {
  char buf[4096];
  for (;;) {
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n == 0) return true;
    if (n < 0) return errno == ECONNRESET;
  }
}

TEST_F(ClusterProcesses, MalformedFramesCloseOnlyTheirConnectionWhileTheHeadKeepsServing) {
  start_node("cpu:1");
  const auto epoch = status_json()["epoch"];
  const std::uint16_t port = static_cast<std::uint16_t>(std::stoi(address_.substr(address_.rfind(':') + 1)));
  std::mt19937 rng{7};
  std::vector<std::vector<std::uint8_t>> attacks;
  std::vector<std::uint8_t> random_bytes(512);
  for (auto& b : random_bytes) b = static_cast<std::uint8_t>(rng());
  attacks.push_back(random_bytes);                                    // random
  attacks.push_back({0, 0, 0, 0, 0, 0, 0, 0x40});                     // oversized: 2^30 words announced
  // wrong schema: a well-formed message whose root struct is not an envelope
  attacks.push_back({0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8});
  for (const auto& a : attacks) {
    const int fd = raw_connect(port);
    ASSERT_EQ(::send(fd, a.data(), a.size(), 0), static_cast<ssize_t>(a.size()));
    EXPECT_TRUE(closed_by_peer(fd));
    ::close(fd);
  }
  {  // truncated: half a frame, then the sender goes away
    const int fd = raw_connect(port);
    const std::uint8_t half[] = {0, 0, 0, 0, 10, 0, 0, 0, 1, 2, 3};
    ASSERT_EQ(::send(fd, half, sizeof half, 0), static_cast<ssize_t>(sizeof half));
    ::shutdown(fd, SHUT_WR);
    EXPECT_TRUE(closed_by_peer(fd));
    ::close(fd);
  }
  auto j = status_json();
  EXPECT_EQ(j["epoch"], epoch) << "the node connection was untouched";
  EXPECT_EQ(j["alive"], 1);
  std::string log;
  EXPECT_TRUE(eventually([&]() {
    log = read_all(state_ / "logs" / fmt::format("head-{}.log", head_pid_));
    return log.find("exceeds the limit") != std::string::npos && log.find("not a flexsp frame") != std::string::npos;
  })) << log;
}

TEST_F(ClusterProcesses, DeviceActorsInOtherProcessesAnswerThroughProxies) {
  const pid_t a = start_node("cpu:2");
  const pid_t b = start_node("cpu:1");
  auto c = client();
  auto s = c->status();
  ASSERT_TRUE(s);
  net::event_loop loop;
  loop.start();
  actor_host_config hc;
  hc.transport = transport();
  auto host = actor_host::start(loop, hc);
  ASSERT_TRUE(host);
  for (pid_t pid : {a, b}) {
    const auto* rec = find_pid(*s, pid, node_state::alive);
    ASSERT_NE(rec, nullptr);
    expected<remote_address> where = make_error(errc::not_found, "");
    ASSERT_TRUE(eventually([&]() { return (where = c->lookup(fmt::format("device/{}/cpu:0", rec->id))).has_value(); }));
    core::actor_ref<device_actor> ref = (*host)->proxy<device_actor>(*where);
    // Many asks in flight at once, each answered once.
    std::vector<core::pending<device_info>> asks;
    for (int i = 0; i < 500; ++i) asks.push_back(ref.ask(describe_device{}, 10s));
    for (auto& p : asks) {
      auto info = p.get();
      ASSERT_TRUE(info) << info.error().to_string();
      EXPECT_EQ(info->device, "cpu:0");
      EXPECT_EQ(info->node_id, rec->id);
    }
  }

  // A hung peer: the ask times out cleanly. A dead peer: asks fail without waiting, and a
  // monitor on the proxy fires.
  const auto* rec = find_pid(*s, b, node_state::alive);
  auto where = c->lookup(fmt::format("device/{}/cpu:0", rec->id));
  ASSERT_TRUE(where);
  auto ref = (*host)->proxy<device_actor>(*where);
  ASSERT_EQ(::kill(b, SIGSTOP), 0);
  ASSERT_TRUE(eventually([b]() { return proc_state(b) == 'T'; })) << "SIGSTOP takes effect asynchronously";
  auto hung = ref.ask(describe_device{}, 300ms).get();
  ASSERT_FALSE(hung);
  EXPECT_EQ(hung.error().kind(), errc::timeout) << hung.error().to_string();
  std::promise<core::down_msg> down;
  core::actor_system system{core::actor_system_config{.workers = 1}};
  system.monitor(ref, [&down](const core::down_msg& d) { down.set_value(d); });
  auto pending = ref.ask(describe_device{}, 60000ms);
  const auto t0 = Clock::now();
  ASSERT_EQ(::kill(b, SIGKILL), 0);
  ASSERT_TRUE(eventually([&]() { return pending.ready(); }));
  auto dead = pending.get();
  ASSERT_FALSE(dead);
  EXPECT_EQ(dead.error().kind(), errc::disconnected) << dead.error().to_string();
  EXPECT_LT(Clock::now() - t0, 5s);
  auto d = down.get_future();
  ASSERT_EQ(d.wait_for(10s), std::future_status::ready);
  EXPECT_EQ(d.get().reason, core::exit_reason::unreachable);
  auto after = ref.ask(describe_device{}, 60000ms).get();
  ASSERT_FALSE(after);
  EXPECT_EQ(after.error().kind(), errc::disconnected);
  (*host)->stop();
  loop.stop();
}

TEST_F(ClusterProcesses, StopLeavesNoProcessBehind) {
  start_node("cpu:1");
  start_node("cpu:2");
  auto r = run("stop");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("stopped 3"), std::string::npos) << r.output;
  for (pid_t p : pids_) EXPECT_TRUE(gone(p)) << p;
  EXPECT_TRUE(gone(head_pid_));
  EXPECT_TRUE(fs::is_empty(state_ / "procs"));
  EXPECT_FALSE(fs::exists(state_ / "current_cluster.json"));
  auto s = run("status");
  EXPECT_NE(s.exit_code, 0);
}

TEST(ClusterCommands, HelpAndBadFlagsGiveClearMessages) {
  for (const char* cmd : {"start --help", "status --help", "stop --help"}) {
    auto r = run(cmd);
    EXPECT_EQ(r.exit_code, 0) << cmd << r.output;
  }
  auto both = run("start --head --address 127.0.0.1:1");
  EXPECT_NE(both.exit_code, 0);
  EXPECT_NE(both.output.find("either --head or --address HOST:PORT, not both"), std::string::npos) << both.output;
  auto bad_devices = run("start --address 127.0.0.1:1 --devices gpu:3", "FLEXSP_CLUSTER_SECRET=x");
  EXPECT_NE(bad_devices.exit_code, 0);
  EXPECT_NE(bad_devices.output.find("unknown device kind 'gpu'"), std::string::npos) << bad_devices.output;
  auto bad_timeout = run("start --head --port 0 --heartbeat-interval 2s --failure-timeout 1s --block",
                         "FLEXSP_CLUSTER_SECRET=x");
  EXPECT_NE(bad_timeout.exit_code, 0);
  EXPECT_NE(bad_timeout.output.find("must exceed the heartbeat interval"), std::string::npos) << bad_timeout.output;
  auto help = run("start --help");
  EXPECT_NE(help.output.find("--give-up-after"), std::string::npos) << help.output;
  auto bad_give_up = run("start --address 127.0.0.1:1 --give-up-after soon --block", "FLEXSP_CLUSTER_SECRET=x");
  EXPECT_NE(bad_give_up.exit_code, 0);
  EXPECT_NE(bad_give_up.output.find("soon"), std::string::npos) << bad_give_up.output;
  auto unreachable = run("status --address 127.0.0.1:1", "FLEXSP_CLUSTER_SECRET=x");
  EXPECT_NE(unreachable.exit_code, 0);
  EXPECT_NE(unreachable.output.find("cannot reach the head at 127.0.0.1:1"), std::string::npos) << unreachable.output;
}

}  // namespace

namespace {

TEST(LaunchScript, StartsEveryNodeThenStopLeavesNoProcess) {
  char tmpl[] = "/tmp/flexsp-launch-test-XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  const std::string state = tmpl;
  const std::string env = fmt::format("FLEXSP_STATE_DIR={} FLEXSP_BIN={}", state, FLEXSP_CLI_PATH);
  const std::string script = std::string{FLEXSP_SOURCE_DIR} + "/scripts/launch_cluster.sh";
  auto run_script = [&](const std::string& args) {
    FILE* pipe = ::popen((env + " " + script + " " + args + " 2>&1").c_str(), "r");
    std::string out;
    std::array<char, 4096> buf{};
    while (auto n = std::fread(buf.data(), 1, buf.size(), pipe)) out.append(buf.data(), n);
    const int status = ::pclose(pipe);
    return run_result{WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
  };
  auto up = run_script("--nodes 3 --devices cpu:2 --port 0 --heartbeat-interval 100ms --failure-timeout 1s --timeout 30");
  ASSERT_EQ(up.exit_code, 0) << up.output;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(up.output, m, std::regex{R"(head address: (\S+):(\d+))"})) << up.output;
  const std::string port = m[2];
  auto st = run(fmt::format("status --address {}:{} --json", std::string{m[1]}, port), "FLEXSP_STATE_DIR=" + state);
  ASSERT_EQ(st.exit_code, 0) << st.output;
  auto j = nlohmann::json::parse(st.output);
  ASSERT_EQ(j["nodes"].size(), 3u);
  std::vector<pid_t> pids{j["head_pid"].get<pid_t>()};
  for (const auto& n : j["nodes"]) {
    EXPECT_EQ(n["state"], "alive");
    EXPECT_EQ(n["devices"].size(), 2u);
    pids.push_back(n["pid"].get<pid_t>());
  }
  auto down = run_script("--stop --port " + port);
  EXPECT_EQ(down.exit_code, 0) << down.output;
  for (pid_t p : pids) EXPECT_TRUE(gone(p)) << "pid " << p << " survived --stop";
  auto bad = run_script("--nodes 2 --devices gpu:1 --port 0");
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.output.find("did not start"), std::string::npos) << bad.output;
  EXPECT_TRUE(fs::is_empty(fs::path{state} / "procs")) << "a failed launch stops what it started";
  std::error_code ec;
  fs::remove_all(state, ec);
}

// Stand-ins for ssh and srun that run the command on this machine, so that the script's remote
// modes (hostfile over ssh, Slurm allocation) run end to end on loopback.
void write_executable(const fs::path& p, const std::string& text) {
  std::ofstream{p} << text;
  fs::permissions(p, fs::perms::owner_all);
}

void check_remote_mode(const std::string& mode_args, const std::string& extra_env, const fs::path& dir) {
  const std::string env = fmt::format("PATH={}:$PATH FLEXSP_STATE_DIR={} FLEXSP_BIN={} FLEXSP_REMOTE_BIN={} {}",
                                      (dir / "bin").string(), (dir / "state").string(), FLEXSP_CLI_PATH,
                                      FLEXSP_CLI_PATH, extra_env);
  const std::string script = std::string{FLEXSP_SOURCE_DIR} + "/scripts/launch_cluster.sh";
  auto run_script = [&](const std::string& args) {
    FILE* pipe = ::popen((env + " " + script + " " + args + " 2>&1").c_str(), "r");
    std::string out;
    std::array<char, 4096> buf{};
    while (auto n = std::fread(buf.data(), 1, buf.size(), pipe)) out.append(buf.data(), n);
    const int status = ::pclose(pipe);
    return run_result{WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
  };
  auto up = run_script(mode_args + " --devices cpu:1 --port 0 --head-host 127.0.0.1 --timeout 30");
  ASSERT_EQ(up.exit_code, 0) << up.output;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(up.output, m, std::regex{R"(head address: (\S+):(\d+))"})) << up.output;
  const std::string port = m[2];
  auto st = run(fmt::format("status --address 127.0.0.1:{} --json", port), "FLEXSP_STATE_DIR=" + (dir / "state").string());
  ASSERT_EQ(st.exit_code, 0) << st.output;
  auto j = nlohmann::json::parse(st.output);
  EXPECT_EQ(j["alive"], 2) << st.output;
  std::vector<pid_t> pids{j["head_pid"].get<pid_t>()};
  for (const auto& n : j["nodes"]) {
    pids.push_back(n["pid"].get<pid_t>());
    EXPECT_EQ(n["address"].get<std::string>().rfind("127.0.0.1:", 0), 0u) << "a node bound to 0.0.0.0 advertises a reachable address";
  }
  auto down = run_script("--stop --port " + port + (mode_args.find("--hostfile") != std::string::npos
                                                        ? " --hostfile " + (dir / "hosts").string()
                                                        : std::string{}));
  EXPECT_EQ(down.exit_code, 0) << down.output;
  for (pid_t p : pids) EXPECT_TRUE(eventually([p]() { return gone(p); }, 5s)) << "pid " << p << " survived --stop";
}

TEST(LaunchScript, StartsNodesOverSshFromAHostfile) {
  char tmpl[] = "/tmp/flexsp-launch-ssh-XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  const fs::path dir = tmpl;
  fs::create_directories(dir / "bin");
  write_executable(dir / "bin" / "ssh",
                   "#!/bin/sh\n# test stand-in: drop options, then run the command here\n"
                   "while [ \"${1#-}\" != \"$1\" ]; do if [ \"$1\" = -o ]; then shift; fi; shift; done\n"
                   "shift\nexec sh -c \"$*\"\n");
  std::ofstream{dir / "hosts"} << "# two hosts\nnode-a\nnode-b\n";
  check_remote_mode("--nodes 2 --hostfile " + (dir / "hosts").string(), "", dir);
  std::error_code ec;
  fs::remove_all(dir, ec);
}

TEST(LaunchScript, StartsOneNodePerAllocatedMachineUnderSlurm) {
  char tmpl[] = "/tmp/flexsp-launch-slurm-XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  const fs::path dir = tmpl;
  fs::create_directories(dir / "bin");
  write_executable(dir / "bin" / "srun",
                   "#!/bin/bash\n# test stand-in: start --ntasks copies of the command here, stop them on TERM\n"
                   "n=1; while [[ \"$1\" == -* ]]; do [[ \"$1\" == --ntasks=* ]] && n=\"${1#--ntasks=}\"; shift; done\n"
                   "pids=(); for ((i = 0; i < n; i++)); do \"$@\" & pids+=($!); done\n"
                   "trap 'kill \"${pids[@]}\" 2>/dev/null; wait; exit 0' TERM INT\nwait\n");
  check_remote_mode("", "SLURM_JOB_ID=1 SLURM_JOB_NUM_NODES=2", dir);
  std::error_code ec;
  fs::remove_all(dir, ec);
}

}  // namespace
