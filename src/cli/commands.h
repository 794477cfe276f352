// Subcommands of the tandem binary. Each Add*Command adds its CLI::App with options and a callback
// that runs the command and stores its exit code in *exit_code.
#pragma once

#include <CLI/CLI.hpp>

namespace tandem::cli {

void AddGenerateCommand(CLI::App& app, int* exit_code);
void AddChatTemplateCommand(CLI::App& app, int* exit_code);
void AddTokenizeCommand(CLI::App& app, int* exit_code);
void AddServeCommand(CLI::App& app, int* exit_code);
void AddWorkerCommand(CLI::App& app, int* exit_code);
void AddRouterCommand(CLI::App& app, int* exit_code);

inline void RegisterCommands(CLI::App& app, int* exit_code) {
  AddGenerateCommand(app, exit_code);
  AddChatTemplateCommand(app, exit_code);
  AddTokenizeCommand(app, exit_code);
  AddServeCommand(app, exit_code);
  AddWorkerCommand(app, exit_code);
  AddRouterCommand(app, exit_code);
}

}  // namespace tandem::cli
