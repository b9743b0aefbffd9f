// `flexsp job submit|status|logs|stop|list`: the job API of a running cluster, through the C++
// client (flexsp/actors/job_client.hpp).
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <thread>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cluster_state.hpp"
#include "commands.hpp"
#include "flexsp/actors/job_client.hpp"
#include "flexsp/core/clock.hpp"

namespace flexsp::app {

namespace {

namespace fs = std::filesystem;

struct job_flags {
  std::string address;
  std::string secret_file;
};

expected<std::shared_ptr<actors::job_client>> connect(const job_flags& f) {
  return connect_job_client(f.address, f.secret_file);
}

nlohmann::json info_json(const actors::job_info& i) { return nlohmann::json::parse(actors::job_info_to_json(i)); }

/// A committed step as the console shows it ("step 3/30  loss 5.210  devices 4  step 812 ms").
std::string step_line(const nlohmann::json& j, std::uint64_t total) {
  return fmt::format("step {}/{}  loss {:.3f}  devices {}  step {:.0f} ms{}", j.value("step", 0), total,
                     j.value("loss", 0.0), j.value("devices", 0), j.value("step_ms", 0.0),
                     j.value("retried", 0) ? fmt::format("  retried {}", j.value("retried", 0)) : std::string{});
}

/// `flexsp job logs`: the job's log lines and its steps, in time order; with `follow`, what comes
/// next too, until the job ends. `metrics_only` prints the raw JSON metrics lines instead.
expected<void> print_logs(actors::job_client& client, const std::string& id, bool follow, bool metrics_only) {
  std::size_t logs_shown = 0;
  std::uint64_t metrics_from = 0;
  for (;;) {
    FLEXSP_TRY_ASSIGN(auto i, client.query(id, metrics_from, !metrics_only));
    std::vector<std::pair<std::string, std::string>> lines;  // (UTC time, text); the time sorts as text
    for (; logs_shown < i.logs.size(); ++logs_shown) {
      const auto& l = i.logs[logs_shown];
      const auto space = l.find(' ');
      const bool stamped = space == 24 && l[10] == 'T' && l[23] == 'Z';
      lines.emplace_back(stamped ? l.substr(0, space) : std::string{}, stamped ? l.substr(space + 1) : l);
    }
    for (const auto& m : i.metrics) {
      if (metrics_only) {
        fmt::print("{}\n", m);
        continue;
      }
      auto j = nlohmann::json::parse(m, nullptr, false);
      if (j.is_discarded()) continue;
      lines.emplace_back(core::utc_timestamp(j.value("committed_at_ms", std::int64_t{0})), step_line(j, i.steps_total));
    }
    metrics_from += i.metrics.size();
    std::stable_sort(lines.begin(), lines.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    for (const auto& [time, text] : lines) fmt::print("{}{}{}\n", time, time.empty() ? "" : "  ", text);
    std::fflush(stdout);
    if (!follow || actors::terminal(i)) return {};
    std::this_thread::sleep_for(std::chrono::milliseconds{500});
  }
}

int fail(const std::string& what, const error& e) {
  fmt::print(stderr, "flexsp job {}: {}\n", what, e.message());
  return e.kind() == errc::invalid_argument || e.kind() == errc::not_found ? 2 : 1;
}

void add_common(CLI::App* c, const std::shared_ptr<job_flags>& f) {
  c->add_option("--address", f->address, "head address HOST:PORT (default: FLEXSP_ADDRESS or the local cluster)");
  c->add_option("--secret-file", f->secret_file, "file holding the cluster's shared secret");
}

}  // namespace

void add_job_commands(CLI::App& root) {
  auto* job = root.add_subcommand("job", "submit and manage training jobs on a running cluster");
  job->require_subcommand(1);

  auto f = std::make_shared<job_flags>();
  auto spec_file = std::make_shared<std::string>();
  auto wait = std::make_shared<bool>(false);
  auto metrics = std::make_shared<std::string>();
  auto* submit = job->add_subcommand("submit", "submit a job spec (JSON); prints the job id");
  add_common(submit, f);
  submit->add_option("spec", *spec_file, "job spec JSON file")->required();
  submit->add_flag("--wait", *wait, "wait for the job, printing a line per step; exit non-zero if it failed");
  submit->add_option("--metrics", *metrics, "with --wait: write per-step metrics as JSON lines to this file");
  submit->callback([f, spec_file, wait, metrics]() {
    auto text = read_file(*spec_file);
    if (!text) std::exit(fail("submit", text.error()));
    auto spec = actors::parse_job_spec(*text);
    if (!spec) std::exit(fail("submit", error{spec.error().kind(), *spec_file + ": " + spec.error().message()}));
    auto client = connect(*f);
    if (!client) std::exit(fail("submit", client.error()));
    auto handle = (*client)->submit_json(*text);
    if (!handle) std::exit(fail("submit", handle.error()));
    fmt::print("{}\n", handle->id());
    std::fflush(stdout);
    if (!*wait) return;
    // Ctrl-C ends the wait, not the job: say so, and how to stop it.
    static std::string waiting_on;
    waiting_on = handle->id();
    std::signal(SIGINT, [](int) {
      const auto msg = fmt::format("\nflexsp job submit: no longer waiting; job {} keeps running (flexsp job stop {} "
                                   "cancels it)\n",
                                   waiting_on, waiting_on);
      (void)!::write(2, msg.data(), msg.size());
      std::_Exit(130);
    });
    std::unique_ptr<std::ofstream> out;
    if (!metrics->empty()) {
      out = std::make_unique<std::ofstream>(*metrics, std::ios::trunc);
      if (!*out) std::exit(fail("submit", error{errc::io, "cannot write " + *metrics}));
    }
    auto final = handle->wait([&out, total = spec->steps](const std::string& line) {
      if (out) {
        *out << line << "\n";
        out->flush();
      }
      auto j = nlohmann::json::parse(line, nullptr, false);
      if (!j.is_discarded()) fmt::print("{}\n", step_line(j, total));
      std::fflush(stdout);
    });
    if (!final) std::exit(fail("submit", final.error()));
    fmt::print("job {} {}: {} of {} steps, loss {:.3f} -> {:.3f}{}\n", final->id, actors::to_string(final->state), final->steps_done,
               final->steps_total, final->first_loss, final->last_loss, final->error.empty() ? "" : "; " + final->error);
    if (final->state != actors::job_state::succeeded) std::exit(1);
  });

  auto sid = std::make_shared<std::string>();
  auto* status = job->add_subcommand("status", "a job's state as JSON (all jobs without an id)");
  add_common(status, f);
  status->add_option("id", *sid, "job id");
  status->add_flag("--json")->description("print JSON (the only format; accepted as `flexsp status --json` is)");
  status->callback([f, sid]() {
    auto client = connect(*f);
    if (!client) std::exit(fail("status", client.error()));
    if (sid->empty()) {
      auto l = (*client)->list();
      if (!l) std::exit(fail("status", l.error()));
      nlohmann::json arr = nlohmann::json::array();
      for (const auto& i : *l) arr.push_back(info_json(i));
      fmt::print("{}\n", arr.dump(2));
      return;
    }
    auto i = (*client)->query(*sid, ~std::uint64_t{0}, false);
    if (!i) std::exit(fail("status", i.error()));
    fmt::print("{}\n", info_json(*i).dump(2));
  });

  auto lid = std::make_shared<std::string>();
  auto follow = std::make_shared<bool>(false);
  auto metrics_only = std::make_shared<bool>(false);
  auto* logs = job->add_subcommand("logs", "a job's log lines and committed steps, with their UTC times");
  add_common(logs, f);
  logs->add_option("id", *lid, "job id")->required();
  logs->add_flag("-f,--follow", *follow, "keep printing new lines until the job ends");
  logs->add_flag("--metrics", *metrics_only, "print the per-step metrics as JSON lines instead (one object per step)");
  logs->callback([f, lid, follow, metrics_only]() {
    auto client = connect(*f);
    if (!client) std::exit(fail("logs", client.error()));
    if (auto r = print_logs(**client, *lid, *follow, *metrics_only); !r) std::exit(fail("logs", r.error()));
  });

  auto kid = std::make_shared<std::string>();
  auto* stop = job->add_subcommand("stop", "cancel a job (the step in flight is aborted everywhere)");
  add_common(stop, f);
  stop->add_option("id", *kid, "job id")->required();
  stop->callback([f, kid]() {
    auto client = connect(*f);
    if (!client) std::exit(fail("stop", client.error()));
    auto before = (*client)->query(*kid, ~std::uint64_t{0}, false);
    if (!before) std::exit(fail("stop", before.error()));
    if (actors::terminal(*before)) {
      fmt::print(stderr, "flexsp job stop: job {} already {}; nothing to stop\n", *kid, actors::to_string(before->state));
      std::exit(1);
    }
    if (auto r = (*client)->cancel(*kid); !r) std::exit(fail("stop", r.error()));
    fmt::print("cancelling {}\n", *kid);
  });
}

}  // namespace flexsp::app
