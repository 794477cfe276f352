// tandem generate: runs prompts through the engine on one backend and prints JSON results.
#include <CLI/CLI.hpp>

#include <iostream>

#include "cli/commands.h"

namespace tandem::cli {

void AddGenerateCommand(CLI::App& app, int* exit_code) {
  auto* cmd = app.add_subcommand("generate", "Generate tokens for prompts on this machine");
  cmd->callback([exit_code] {
    std::cerr << "generate: not built yet\n";
    *exit_code = 1;
  });
}

}  // namespace tandem::cli
