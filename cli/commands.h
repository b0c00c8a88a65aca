// Each file adds one command family to the application. A subcommand's
// callback stores the work to do in `action`; main runs it after parsing.
#pragma once

#include <functional>

#include <CLI/CLI.hpp>

#include "context.h"

namespace ebs::cli {

void AddVolumeCommands(CLI::App* app, Context* ctx, std::function<int()>* action);
void AddServeCommand(CLI::App* app, Context* ctx, std::function<int()>* action);
void AddSnapshotCommands(CLI::App* app, Context* ctx, std::function<int()>* action);
void AddKeyCommands(CLI::App* app, Context* ctx, std::function<int()>* action);
// --encrypted and --key on commands that create a volume.
void AddEncryptionOptions(CLI::App* command, bool* encrypted, std::string* key);

}  // namespace ebs::cli
