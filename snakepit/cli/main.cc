// snakepit: call Python functions in a pool of worker processes.
//
//   snakepit call FUNCTION (--module PATH | --addr ADDR) [--json ARGS]
//       [-a key=value]... [--timeout 5s] [--stream] [-o json|table]
//   snakepit fn list (--module PATH | --addr ADDR)
//   snakepit health [--ready] --addr ADDR
//   snakepit node info --addr ADDR
//   snakepit session create|list|show|drop|export|import --addr ADDR
//
// With --module the calls run in a pool embedded in this process; with
// --addr (or $SNAKEPIT_ADDR) they go to a snakepitd node.
//
// Exit status: 0 ok, 1 usage, 2 the pool could not start or the node
// cannot be reached, 3 the call failed, 4 the node is unhealthy.

#include <cstdlib>
#include <iostream>

#include "CLI/CLI.hpp"
#include "snakepit/base/log.h"
#include "snakepit/cli/commands.h"

namespace {

using snakepit::cli::CallFlags;
using snakepit::cli::PoolFlags;

void AddRemoteFlags(CLI::App* app, PoolFlags* flags) {
  app->add_option("--addr", flags->addr,
                  "snakepitd node: HOST:PORT or unix:PATH "
                  "(default $SNAKEPIT_ADDR)");
  app->add_option("--token", flags->token,
                  "Bearer token for the node (default $SNAKEPIT_TOKEN)");
  app->add_option("--tls-ca", flags->tls_ca,
                  "CA certificate (PEM) to reach a TLS node");
}

void AddPoolFlags(CLI::App* app, PoolFlags* flags) {
  app->add_option("-m,--module", flags->modules,
                  "Python module to load: a .py file, a package folder or "
                  "a module name (repeatable)");
  AddRemoteFlags(app, flags);
  app->add_option("-p,--path", flags->paths,
                  "Folder to add to the workers' sys.path (repeatable)");
  app->add_option("--python", flags->python,
                  "Python interpreter (default: $SNAKEPIT_PYTHON or "
                  "python3)");
  app->add_option("-w,--workers", flags->workers, "Worker processes")
      ->check(CLI::Range(1, 1024));
}

std::string EnvOr(const char* name, const std::string& value) {
  const char* env = std::getenv(name);
  return value.empty() && env != nullptr ? env : value;
}

// Fills --addr and --token from the environment, and checks that a
// command that needs a target has exactly one.
bool ResolveTarget(PoolFlags* flags, bool modules_allowed) {
  flags->token = EnvOr("SNAKEPIT_TOKEN", flags->token);
  if (flags->modules.empty()) {
    flags->addr = EnvOr("SNAKEPIT_ADDR", flags->addr);
  }
  if (!flags->modules.empty() && !flags->addr.empty()) {
    std::cerr << "error: invalid_argument: give --module or --addr, not "
                 "both\n";
    return false;
  }
  if (flags->modules.empty() && flags->addr.empty()) {
    std::cerr << "error: invalid_argument: "
              << (modules_allowed ? "give --module PATH (a local pool) or "
                                    "--addr ADDR (a node)"
                                  : "give --addr ADDR (or $SNAKEPIT_ADDR)")
              << "\n";
    return false;
  }
  return true;
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
                       "array (positional); @FILE reads them from FILE, - "
                       "from standard input");
  call_cmd->add_option("-a,--arg", call.assigns,
                       "One keyword argument, key=value; the value is read "
                       "as JSON when it parses, else as text (repeatable)");
  call_cmd->add_option("-t,--timeout", timeout_text,
                       "Deadline for the whole call: 5s, 250ms, 2m");
  call_cmd->add_flag("-s,--stream", call.stream,
                     "Print each chunk a generator yields as it comes, one "
                     "JSON document per line");
  call_cmd->add_option("--session", call.session,
                       "Run in this session (ctx.session)");
  call_cmd->add_option("--affinity", call.affinity,
                       "hint, strict-queue or strict-fail")
      ->check(CLI::IsMember({"hint", "strict-queue", "strict-fail"}));
  call_cmd->add_option("-o,--output", call.output,
                       "auto (table on a terminal, else json), json or "
                       "table")
      ->check(CLI::IsMember({"auto", "json", "table"}));

  PoolFlags list_pool;
  std::string list_output = "auto";
  CLI::App* fn_cmd = app.add_subcommand("fn", "Inspect functions");
  fn_cmd->require_subcommand(1);
  CLI::App* list_cmd =
      fn_cmd->add_subcommand("list", "List the functions of modules");
  AddPoolFlags(list_cmd, &list_pool);
  list_cmd->add_option("-o,--output", list_output, "auto, table or json")
      ->check(CLI::IsMember({"auto", "json", "table"}));

  PoolFlags health_target;
  bool ready = false;
  CLI::App* health_cmd =
      app.add_subcommand("health", "Ask a node whether it is alive or ready");
  AddRemoteFlags(health_cmd, &health_target);
  health_cmd->add_flag("--ready", ready,
                       "Exit 4 unless the node is ready to take calls");

  PoolFlags session_target;
  snakepit::cli::SessionFlags session;
  std::string ttl_text;
  CLI::App* session_cmd =
      app.add_subcommand("session", "Manage a node's sessions");
  session_cmd->require_subcommand(1);
  struct SessionAction {
    const char* name;
    const char* help;
    bool takes_id;
  };
  for (const SessionAction& a :
       {SessionAction{"create", "Create a session (idempotent)", false},
        SessionAction{"list", "List session ids", false},
        SessionAction{"show", "Show a session and its variables", true},
        SessionAction{"drop", "Delete a session", true},
        SessionAction{"export", "Write every session to stdout", false},
        SessionAction{"import", "Read sessions from stdin", false}}) {
    CLI::App* sub = session_cmd->add_subcommand(a.name, a.help);
    AddRemoteFlags(sub, &session_target);
    if (a.takes_id) {
      sub->add_option("id", session.id, "Session id")->required();
    }
    if (std::string(a.name) == "create") {
      sub->add_option("--id", session.id, "Id to use (default: random)");
      sub->add_option("--ttl", ttl_text, "Time to live: 30m, 2h");
      sub->add_flag("--strict", session.strict,
                    "Fail if the id is taken");
    }
    if (std::string(a.name) != "export" && std::string(a.name) != "import") {
      sub->add_option("-o,--output", session.output, "auto, table or json")
          ->check(CLI::IsMember({"auto", "json", "table"}));
    }
    sub->callback([&session, name = std::string(a.name)] {
      session.action = name;
    });
  }

  PoolFlags info_target;
  std::string info_output = "auto";
  CLI::App* node_cmd = app.add_subcommand("node", "Inspect a node");
  node_cmd->require_subcommand(1);
  CLI::App* info_cmd = node_cmd->add_subcommand("info", "What a node runs");
  AddRemoteFlags(info_cmd, &info_target);
  info_cmd->add_option("-o,--output", info_output, "auto, table or json")
      ->check(CLI::IsMember({"auto", "json", "table"}));

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
    if (!ResolveTarget(&call_pool, true)) {
      return snakepit::cli::kExitUsage;
    }
    return snakepit::cli::RunCall(call_pool, call);
  }
  if (*health_cmd) {
    if (!ResolveTarget(&health_target, false)) {
      return snakepit::cli::kExitUsage;
    }
    return snakepit::cli::RunHealth(health_target, ready);
  }
  if (*session_cmd) {
    if (!ttl_text.empty() &&
        !snakepit::cli::ParseTimeout(ttl_text, &session.ttl)) {
      std::cerr << "error: invalid_argument: --ttl " << ttl_text
                << " is not a duration such as 30m\n";
      return snakepit::cli::kExitUsage;
    }
    if (!ResolveTarget(&session_target, false)) {
      return snakepit::cli::kExitUsage;
    }
    return snakepit::cli::RunSession(session_target, session);
  }
  if (*node_cmd) {
    if (!ResolveTarget(&info_target, false)) {
      return snakepit::cli::kExitUsage;
    }
    return snakepit::cli::RunNodeInfo(info_target, info_output);
  }
  if (!ResolveTarget(&list_pool, true)) {
    return snakepit::cli::kExitUsage;
  }
  return snakepit::cli::RunFnList(list_pool, list_output);
}
