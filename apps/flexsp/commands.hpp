#pragma once
// Each subcommand family registers itself on the root app; main() calls them in order.
#include <CLI/CLI.hpp>

namespace flexsp::app {

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
