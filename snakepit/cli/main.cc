// snakepit: call Python functions in a pool of worker processes.
//
//   snakepit call FUNCTION --module PATH [--json ARGS] [-a key=value]...
//   snakepit fn list --module PATH
//
// Exit status: 0 ok, 1 usage, 2 the pool could not start, 3 the call
// failed.

#include <iostream>

#include "CLI/CLI.hpp"
#include "snakepit/base/log.h"
#include "snakepit/cli/commands.h"

namespace {

using snakepit::cli::CallFlags;
using snakepit::cli::PoolFlags;

void AddPoolFlags(CLI::App* app, PoolFlags* flags) {
  app->add_option("-m,--module", flags->modules,
                  "Python module to load: a .py file, a package folder or "
                  "a module name (repeatable)")
      ->required();
  app->add_option("-p,--path", flags->paths,
                  "Folder to add to the workers' sys.path (repeatable)");
  app->add_option("--python", flags->python,
                  "Python interpreter (default: $SNAKEPIT_PYTHON or "
                  "python3)");
  app->add_option("-w,--workers", flags->workers, "Worker processes")
      ->check(CLI::Range(1, 1024));
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"snakepit: call Python functions in a pool of workers"};
  app.require_subcommand(1);
  std::string log_level = "info";
  app.add_option("--log-level", log_level,
                 "trace, debug, info, warn, error or off")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error",
                             "off"}));

  PoolFlags call_pool;
  CallFlags call;
  std::string timeout_text;
  CLI::App* call_cmd = app.add_subcommand("call", "Call one function");
  call_cmd->add_option("function", call.function,
                       "Function name, module.function")
      ->required();
  AddPoolFlags(call_cmd, &call_pool);
  call_cmd->add_option("-j,--json", call.json_args,
                       "Arguments as JSON: an object (keywords) or an "
                       "array (positional)");
  call_cmd->add_option("-a,--arg", call.assigns,
                       "One keyword argument, key=value; the value is read "
                       "as JSON when it parses, else as text (repeatable)");
  call_cmd->add_option("-t,--timeout", timeout_text,
                       "Deadline for the whole call: 5s, 250ms, 2m");
  call_cmd->add_flag("-s,--stream", call.stream,
                     "Print each chunk a generator yields as it comes, one "
                     "JSON document per line");
  call_cmd->add_option("-o,--output", call.output, "json or table")
      ->check(CLI::IsMember({"json", "table"}));

  PoolFlags list_pool;
  std::string list_output = "table";
  CLI::App* fn_cmd = app.add_subcommand("fn", "Inspect functions");
  fn_cmd->require_subcommand(1);
  CLI::App* list_cmd =
      fn_cmd->add_subcommand("list", "List the functions of modules");
  AddPoolFlags(list_cmd, &list_pool);
  list_cmd->add_option("-o,--output", list_output, "table or json")
      ->check(CLI::IsMember({"json", "table"}));

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);
    return code == 0 ? 0 : snakepit::cli::kExitUsage;
  }
  snakepit::Log().set_level(spdlog::level::from_str(log_level));

  if (*call_cmd) {
    if (!timeout_text.empty() &&
        !snakepit::cli::ParseTimeout(timeout_text, &call.timeout)) {
      std::cerr << "error: invalid_argument: --timeout " << timeout_text
                << " is not a duration such as 5s or 250ms\n";
      return snakepit::cli::kExitUsage;
    }
    return snakepit::cli::RunCall(call_pool, call);
  }
  return snakepit::cli::RunFnList(list_pool, list_output);
}
