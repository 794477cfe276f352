// tandem: one binary, one subcommand per role (generate, tokenize, serve, router, worker, bench...).
#include <CLI/CLI.hpp>

#include "cli/commands.h"

int main(int argc, char** argv) {
  CLI::App app{"Tandem: LLM inference with disaggregated prefill and decode"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "tandem 0.1.0");
  int exit_code = 0;
  tandem::cli::RegisterCommands(app, &exit_code);
  try {
    app.parse(argc, argv);  // runs the chosen subcommand's callback
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  return exit_code;
}
