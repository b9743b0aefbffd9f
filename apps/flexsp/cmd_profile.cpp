// `flexsp profile`: measures the planner's cost-model constants on real devices. A one-step job
// with calibration runs either on an embedded cluster in this process (--devices, like `flexsp
// train`) or on a running cluster (--address); the profile it fitted from its timing probes is
// written as JSON that `flexsp plan --profile FILE` reads.
#include <cstdio>
#include <cstdlib>
#include <fstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cluster_state.hpp"
#include "commands.hpp"
#include "embedded_setup.hpp"
#include "flexsp/actors/job_client.hpp"
#include "flexsp/actors/job_spec.hpp"
#include "flexsp/core/log.hpp"
#include "flexsp/scheduler/profile.hpp"

namespace flexsp::app {

namespace {

struct profile_flags {
  std::string devices = "cpu:8";
  int nodes = 1;
  std::string address;
  std::string secret_file;
  std::string config;
  std::string out;
  std::uint64_t seed = 1;
};

/// The calibration job: the --config spec (model, data, batch) with one step and calibration on.
expected<actors::job_spec> calibration_spec(const profile_flags& f) {
  FLEXSP_TRY_ASSIGN(auto j, read_spec_json(f.config));
  j["steps"] = 1;
  j["calibrate"] = true;
  j["milp"] = false;
  if (!j.contains("name")) j["name"] = "profile";
  if (!j.contains("seed")) j["seed"] = f.seed;
  j.erase("checkpoint");
  auto spec = actors::parse_job_spec(j.dump());
  if (!spec) return make_error(errc::invalid_argument, "invalid job: {}", spec.error().message());
  return spec;
}

/// Runs the job and returns the fitted profile's JSON text.
expected<std::string> measure(const profile_flags& f, const actors::job_spec& spec, bool quiet_teardown) {
  if (!f.address.empty()) {
    FLEXSP_TRY_ASSIGN(auto client, connect_job_client(f.address, f.secret_file));
    FLEXSP_TRY_ASSIGN(auto job, client->submit(spec));
    fmt::print(stderr, "flexsp profile: job {} submitted to {}; timing probes on the cluster's devices\n", job.id(),
               f.address);
    FLEXSP_TRY_ASSIGN(const auto final, job.wait());
    if (final.state != actors::job_state::succeeded)
      return make_error(errc::failed, "job {} {}: {}", final.id, actors::to_string(final.state), final.error);
    if (final.calibration.empty()) return make_error(errc::failed, "job {} fitted no profile", final.id);
    return final.calibration;
  }
  FLEXSP_TRY_ASSIGN(auto run, start_embedded(f.devices, f.nodes));
  fmt::print(stderr, "flexsp profile: timing probes on {} {} devices in this process\n", run.devices, run.kinds);
  auto job = run.cluster->jobs().submit(spec, {}, [](const std::string& line) {
    fmt::print(stderr, "  [job] {}\n", line);
  });
  if (!job) return unexpected<error>{job.error()};
  const auto final = (*job)->wait();
  // Tearing the embedded cluster down closes every connection; that is not news.
  if (quiet_teardown) (void)log::configure("error");
  if (final.state != actors::job_state::succeeded)
    return make_error(errc::failed, "job {}: {}", to_string(final.state), final.error);
  if (final.calibration.empty()) return make_error(errc::failed, "the job fitted no profile");
  return final.calibration;
}

int run_profile(const profile_flags& f, const CLI::App& cmd) {
  const bool default_logs = default_log_levels(cmd);
  if (default_logs) (void)log::configure("warn");
  auto spec = calibration_spec(f);
  if (!spec) {
    fmt::print(stderr, "flexsp profile: {}\n", spec.error().message());
    return 2;
  }
  auto text = measure(f, *spec, default_logs);
  if (!text) {
    fmt::print(stderr, "flexsp profile: {}\n", text.error().message());
    return exit_status(text.error());
  }
  // Check it the way `flexsp plan --profile` will read it.
  auto p = scheduler::profile_from_json(*text);
  if (!p) {
    fmt::print(stderr, "flexsp profile: the fitted profile does not read back: {}\n", p.error().message());
    return 1;
  }
  const auto pretty = nlohmann::json::parse(*text).dump(2) + "\n";
  if (f.out.empty() || f.out == "-") {
    std::fputs(pretty.c_str(), stdout);
  } else {
    std::ofstream out{f.out, std::ios::trunc};
    out << pretty;
    if (!out) {
      fmt::print(stderr, "flexsp profile: cannot write {}\n", f.out);
      return 1;
    }
  }
  fmt::print(stderr,
             "flexsp profile: alpha1 {:.3g} ms/token^2, alpha2 {:.3g} ms/token, beta1 {:.3g} ms; {} layers, hidden {}{}\n",
             p->alpha1, p->alpha2, p->beta1, p->layers, p->hidden,
             f.out.empty() || f.out == "-" ? std::string{} : "; written to " + f.out);
  return 0;
}

}  // namespace

void add_profile_command(CLI::App& root) {
  auto f = std::make_shared<profile_flags>();
  auto* cmd = root.add_subcommand(
      "profile", "measure the planner's cost-model constants on real devices and write them as a profile (JSON)");
  cmd->footer(
      "The job spec of --config sets the model and data (everything but steps: one calibration step runs).\n"
      "Examples:\n"
      "  flexsp profile --devices cpu:8 --out cpu8.json && flexsp plan --profile cpu8.json --devices 8 ...\n"
      "  flexsp profile --address 127.0.0.1:7400 --config job.json --out cluster.json");
  cmd->add_option("--devices", f->devices, "embedded devices: cpu:N, cuda:all, cuda:0,1 or auto")->capture_default_str();
  cmd->add_option("--nodes", f->nodes, "split the embedded devices over this many nodes")->capture_default_str();
  cmd->add_option("--address", f->address, "profile a running cluster at HOST:PORT instead (its devices, via a job)");
  cmd->add_option("--secret-file", f->secret_file, "with --address: file holding the cluster's shared secret");
  cmd->add_option("--config", f->config, "job spec JSON: the model and data to profile");
  cmd->add_option("--seed", f->seed, "seed of parameters and data")->capture_default_str();
  cmd->add_option("--out", f->out, "write the profile here (default: standard output)");
  cmd->callback([f, cmd]() {
    if (!f->address.empty() && (cmd->count("--devices") > 0 || cmd->count("--nodes") > 0))
      throw CLI::ValidationError("--address", "profiles the cluster's own devices; drop --devices/--nodes");
    const int rc = run_profile(*f, *cmd);
    if (rc != 0) std::exit(rc);
  });
}

}  // namespace flexsp::app
