#pragma once
// Each subcommand family registers itself on the root app; main() calls them in order.
#include <CLI/CLI.hpp>

namespace flexsp::app {

/// `flexsp info`: build configuration and the devices this machine offers.
void add_info_command(CLI::App& root);

}  // namespace flexsp::app
