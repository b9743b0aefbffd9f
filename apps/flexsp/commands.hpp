#pragma once
// Each subcommand family registers itself on the root app; main() calls them in order.
#include <cstdlib>
#include <string>

#include <CLI/CLI.hpp>

namespace flexsp::app {

/// Option checks whose messages say what is wrong with the value; CLI11 puts the flag in front:
/// "--devices: 'lots' is not a positive number".
inline std::string check_number(const std::string& v, bool zero_allowed) {
  char* end = nullptr;
  const double d = std::strtod(v.c_str(), &end);
  if (v.empty() || end == nullptr || *end != '\0') return "'" + v + "' is not a number";
  if (zero_allowed ? !(d >= 0) : !(d > 0))
    return "'" + v + "' is not a " + (zero_allowed ? "non-negative" : "positive") + " number";
  return {};
}
inline const CLI::Validator positive_number{[](std::string& v) { return check_number(v, false); }, "POSITIVE"};
inline const CLI::Validator non_negative_number{[](std::string& v) { return check_number(v, true); }, "NON-NEGATIVE"};
/// What `flexsp` prints for a command line it cannot parse: the command, the flag and the value.
std::string describe_parse_error(const CLI::App* app, const CLI::Error& e);

/// `flexsp info`: build configuration and the devices this machine offers.
void add_info_command(CLI::App& root);

/// `flexsp plan` and `flexsp plan-replay`: the planner on one batch or a replayed dataset.
void add_plan_commands(CLI::App& root);

/// `flexsp start`, `flexsp status`, `flexsp stop`: the cluster's head and node processes.
void add_cluster_commands(CLI::App& root);

/// `flexsp train`: an embedded cluster (head, node, job) in one process.
void add_train_command(CLI::App& root);

/// `flexsp job submit|status|logs|stop|list`: the job API of a running cluster.
void add_job_commands(CLI::App& root);

/// `flexsp profile`: cost-model constants measured on real devices, as a planner profile.
void add_profile_command(CLI::App& root);

// cmd_model.cpp: export, import, generate
void add_model_commands(CLI::App& root);

/// `flexsp data train-tokenizer|prepare|stats` (cmd_data.cpp).
void add_data_commands(CLI::App& root);

}  // namespace flexsp::app
