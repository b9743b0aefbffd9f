// The `flexsp` command: builds the CLI from each subcommand family and runs one.
#include <cstdio>
#include <exception>
#include <string>

#include <CLI/CLI.hpp>

#include "commands.hpp"
#include "flexsp/core/log.hpp"
#include "flexsp/kernels/ops.hpp"

namespace flexsp::app {

std::string describe_parse_error(const CLI::App* app, const CLI::Error& e) {
  std::string command = "flexsp";
  for (const CLI::App* sub = app; sub != nullptr; sub = sub->get_subcommands().empty() ? nullptr : sub->get_subcommands().front())
    if (sub != app) command += " " + sub->get_name();
  std::string what = e.what();
  // CLI11 says "Could not convert: --steps = abc"; say which flag and value, and what was expected.
  static const std::string kConvert = "Could not convert: ";
  if (what.starts_with(kConvert)) {
    const auto rest = what.substr(kConvert.size());
    const auto eq = rest.find(" = ");
    if (eq != std::string::npos)
      what = rest.substr(0, eq) + ": '" + rest.substr(eq + 3) + "' is not a value of the expected type (see --help)";
  }
  return command + ": " + what + "\nRun '" + command + " --help' for its options.\n";
}

}  // namespace flexsp::app

int main(int argc, char** argv) {
  flexsp::kernels::restart_with_best_blas_kernels(argv);
  CLI::App app{"flexsp: heterogeneity-adaptive sequence-parallel LLM training on a C++ actor runtime", "flexsp"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string{"flexsp 0.1.0"});
  std::string log_spec;
  app.add_option("--log-level", log_spec,
                 "log levels: a default and per-logger overrides, e.g. 'info' or 'warn,net=debug' "
                 "(also FLEXSP_LOG)");
  app.footer("Environment:\n  FLEXSP_LOG                     log level spec, as --log-level (the flag wins)\n"
             "  FLEXSP_CPU_THREADS             GEMM threads of each CPU device (default: cores / CPU devices of the "
             "process)\n"
             "  FLEXSP_IN_PROCESS_COLLECTIVES  0: groups of devices in one process use Gloo's TCP too "
             "(default 1: through memory)\n\n"
             "Run 'flexsp <command> --help' for a command's options.");

  flexsp::app::add_info_command(app);
  flexsp::app::add_cluster_commands(app);
  flexsp::app::add_plan_commands(app);
  flexsp::app::add_train_command(app);
  flexsp::app::add_job_commands(app);
  flexsp::app::add_profile_command(app);
  flexsp::app::add_model_commands(app);
  flexsp::app::add_data_commands(app);

  app.failure_message(flexsp::app::describe_parse_error);
  app.parse_complete_callback([&log_spec]() {
    if (auto r = flexsp::log::configure_from_env(); !r) throw CLI::ValidationError("FLEXSP_LOG", r.error().message());
    if (!log_spec.empty())
      if (auto r = flexsp::log::configure(log_spec); !r) throw CLI::ValidationError("--log-level", r.error().message());
  });

  if (argc > 1 && argv[1][0] != '-') {
    bool known = false;
    for (const auto* sub : app.get_subcommands([](const CLI::App*) { return true; }))
      known = known || sub->check_name(argv[1]);
    if (!known) {
      std::fprintf(stderr, "flexsp: unknown command '%s'; run 'flexsp --help' for the list\n", argv[1]);
      return 2;
    }
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "flexsp: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
