// snakepitd: serves pools of Python workers over gRPC.
//
//   snakepitd [--config FILE] [--listen ADDR]... [--module PATH]...
//   snakepitd check-config FILE
//   snakepitd --print-config [...]
//
// Exit status: 0 after an orderly shutdown, 1 on bad usage or config, 2
// when a pool or listener cannot start.

#include <iostream>

#include "CLI/CLI.hpp"
#include "absl/synchronization/mutex.h"
#include "snakepit/base/log.h"
#include "snakepit/base/log_format.h"
#include "snakepit/base/status.h"
#include "snakepit/server/config.h"
#include "snakepit/server/node.h"

extern char** environ;

namespace {

std::vector<std::string> Environment() {
  std::vector<std::string> env;
  for (char** e = environ; e && *e; ++e) {
    env.emplace_back(*e);
  }
  return env;
}

}  // namespace

int main(int argc, char** argv) {
  // Before any thread exists, so all of them inherit the mask.
  snakepit::server::BlockShutdownSignals();
  // Debian's absl checks every absl::Mutex (gRPC's locks among them) for
  // lock-order cycles, a debugging aid that showed in every call's
  // profile; the node does not rely on it.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);

  CLI::App app{"snakepitd: serves pools of Python workers over gRPC"};
  std::string config_file;
  bool print_config = false;
  snakepit::server::ConfigOverrides flags;
  app.add_option("-c,--config", config_file, "TOML configuration file");
  app.add_flag("--print-config", print_config,
               "Print the effective configuration (secrets redacted) and "
               "exit");
  app.add_option("-l,--listen", flags.listen,
                 "gRPC address, HOST:PORT or unix:PATH (repeatable)");
  app.add_option("--admin", flags.admin,
                 "Admin HTTP address HOST:PORT; empty turns it off")
      ->each([&](const std::string&) { flags.admin_set = true; });
  app.add_option("-m,--module", flags.modules,
                 "Serve one pool of these modules (repeatable)");
  app.add_option("--python", flags.python, "Interpreter for that pool");
  app.add_option("-w,--workers", flags.workers, "Workers in that pool")
      ->check(CLI::Range(1, 1024));
  app.add_option("--token", flags.token, "Bearer token clients must send");
  app.add_option("--log-format", flags.log_format, "auto, text or json");
  app.add_option("--log-level", flags.log_level, "spdlog level name");
  app.add_option("--ready-file", flags.ready_file,
                 "Write the bound addresses here once serving");
  std::string check_file;
  CLI::App* check = app.add_subcommand(
      "check-config", "Validate a configuration file and exit");
  check->add_option("file", check_file, "TOML file")->required();

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 1;
  }

  if (*check) {
    absl::StatusOr<snakepit::server::NodeConfig> config =
        snakepit::server::LoadConfig(check_file, {}, {});
    if (!config.ok()) {
      std::cerr << "error: " << config.status().message() << "\n";
      return 1;
    }
    std::cout << check_file << ": ok\n";
    return 0;
  }

  absl::StatusOr<snakepit::server::NodeConfig> config =
      snakepit::server::LoadConfig(config_file, Environment(), flags);
  if (!config.ok()) {
    std::cerr << "error: " << config.status().message() << "\n";
    return 1;
  }
  if (print_config) {
    std::cout << snakepit::server::PrintConfig(*config);
    return 0;
  }
  snakepit::ConfigureLogging(config->log_format, config->log_level);

  absl::StatusOr<std::unique_ptr<snakepit::server::Node>> node =
      snakepit::server::Node::Start(*std::move(config));
  if (!node.ok()) {
    snakepit::Log().error("node cannot start: {}",
                          snakepit::DescribeError(node.status()));
    return 2;
  }
  return (*node)->ServeUntilSignalled();
}
