// `flexsp job submit|status|logs|stop|list`: the job API of a running cluster, through the C++
// client (flexsp/actors/job_client.hpp).
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "flexsp/actors/job_client.hpp"

namespace flexsp::app {

namespace {

namespace fs = std::filesystem;

struct job_flags {
  std::string address;
  std::string secret_file;
};

std::optional<std::string> read_text(const fs::path& p) {
  std::ifstream in{p, std::ios::binary};
  if (!in) return std::nullopt;
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The cluster record `flexsp start --head` leaves for later commands on this machine.
std::optional<nlohmann::json> current_cluster() {
  fs::path dir;
  if (const char* s = std::getenv("FLEXSP_STATE_DIR"); s && *s) dir = s;
  else if (const char* x = std::getenv("XDG_RUNTIME_DIR"); x && *x) dir = fs::path{x} / "flexsp";
  else dir = fs::path{"/tmp"} / ("flexsp-" + std::to_string(::getuid()));
  auto text = read_text(dir / "current_cluster.json");
  if (!text) return std::nullopt;
  auto j = nlohmann::json::parse(*text, nullptr, false);
  if (j.is_discarded() || !j.contains("address")) return std::nullopt;
  return j;
}

expected<std::shared_ptr<actors::job_client>> connect(const job_flags& f) {
  std::string address = f.address;
  auto cur = current_cluster();
  if (address.empty()) {
    if (const char* a = std::getenv("FLEXSP_ADDRESS"); a && *a) address = a;
    else if (cur) address = (*cur)["address"].get<std::string>();
    else return make_error(errc::invalid_argument, "no cluster address: pass --address HOST:PORT or set FLEXSP_ADDRESS");
  }
  std::optional<std::string> secret;
  if (!f.secret_file.empty()) {
    secret = read_text(f.secret_file);
    if (!secret) return make_error(errc::not_found, "cannot read the secret file {}", f.secret_file);
  } else if (const char* s = std::getenv("FLEXSP_CLUSTER_SECRET"); s && *s) {
    secret = s;
  } else if (const char* sf = std::getenv("FLEXSP_SECRET_FILE"); sf && *sf) {
    secret = read_text(sf);
    if (!secret) return make_error(errc::not_found, "cannot read the secret file {}", sf);
  } else if (cur && cur->contains("secret_file")) {
    secret = read_text((*cur)["secret_file"].get<std::string>());
  }
  if (!secret) return make_error(errc::invalid_argument, "no cluster secret: pass --secret-file or set FLEXSP_CLUSTER_SECRET");
  while (!secret->empty() && std::isspace(static_cast<unsigned char>(secret->back()))) secret->pop_back();
  net::transport_config t;
  t.secret.assign(secret->begin(), secret->end());
  return actors::job_client::connect(address, t);
}

nlohmann::json info_json(const actors::job_info& i) {
  return {{"id", i.id},           {"name", i.name},         {"state", i.state},
          {"steps_done", i.steps_done}, {"steps_total", i.steps_total}, {"devices", i.devices},
          {"first_loss", i.first_loss}, {"last_loss", i.last_loss},   {"resumed_from", i.resumed_from},
          {"error", i.error}};
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
    auto text = read_text(*spec_file);
    if (!text) std::exit(fail("submit", error{errc::not_found, "cannot read " + *spec_file}));
    auto spec = actors::parse_job_spec(*text);
    if (!spec) std::exit(fail("submit", error{spec.error().kind(), *spec_file + ": " + spec.error().message()}));
    auto client = connect(*f);
    if (!client) std::exit(fail("submit", client.error()));
    auto handle = (*client)->submit_json(*text);
    if (!handle) std::exit(fail("submit", handle.error()));
    fmt::print("{}\n", handle->id());
    std::fflush(stdout);
    if (!*wait) return;
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
      if (!j.is_discarded())
        fmt::print("step {}/{}  loss {:.3f}  devices {}  step {:.0f} ms{}\n", j.value("step", 0) + 1, total,
                   j.value("loss", 0.0), j.value("devices", 0), j.value("step_ms", 0.0),
                   j.value("retried", 0) ? fmt::format("  retried {}", j.value("retried", 0)) : std::string{});
      std::fflush(stdout);
    });
    if (!final) std::exit(fail("submit", final.error()));
    fmt::print("job {} {}: {} of {} steps, loss {:.3f} -> {:.3f}{}\n", final->id, final->state, final->steps_done,
               final->steps_total, final->first_loss, final->last_loss, final->error.empty() ? "" : "; " + final->error);
    if (final->state != "succeeded") std::exit(1);
  });

  auto sid = std::make_shared<std::string>();
  auto* status = job->add_subcommand("status", "a job's state as JSON (all jobs without an id)");
  add_common(status, f);
  status->add_option("id", *sid, "job id");
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
  auto* logs = job->add_subcommand("logs", "a job's log and metrics lines");
  add_common(logs, f);
  logs->add_option("id", *lid, "job id")->required();
  logs->callback([f, lid]() {
    auto client = connect(*f);
    if (!client) std::exit(fail("logs", client.error()));
    auto i = (*client)->query(*lid, 0, true);
    if (!i) std::exit(fail("logs", i.error()));
    for (const auto& l : i->logs) fmt::print("{}\n", l);
    for (const auto& m : i->metrics) fmt::print("{}\n", m);
  });

  auto kid = std::make_shared<std::string>();
  auto* stop = job->add_subcommand("stop", "cancel a job (the step in flight is aborted everywhere)");
  add_common(stop, f);
  stop->add_option("id", *kid, "job id")->required();
  stop->callback([f, kid]() {
    auto client = connect(*f);
    if (!client) std::exit(fail("stop", client.error()));
    if (auto r = (*client)->cancel(*kid); !r) std::exit(fail("stop", r.error()));
    fmt::print("cancelling {}\n", *kid);
  });
}

}  // namespace flexsp::app
