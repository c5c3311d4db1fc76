// The `snakepit` command's subcommands, apart from argument parsing.

#ifndef SNAKEPIT_CLI_COMMANDS_H_
#define SNAKEPIT_CLI_COMMANDS_H_

#include <string>
#include <vector>

#include "absl/time/time.h"

namespace snakepit::cli {

// Exit statuses, part of the CLI's contract.
inline constexpr int kExitOk = 0;
inline constexpr int kExitUsage = 1;
inline constexpr int kExitPoolFailed = 2;
inline constexpr int kExitCallFailed = 3;
inline constexpr int kExitUnhealthy = 4;

// Where calls go: an embedded pool of `modules`, or the node at `addr`.
struct PoolFlags {
  std::vector<std::string> modules;
  std::vector<std::string> paths;
  std::string python;
  int workers = 1;
  absl::Duration startup_timeout = absl::Seconds(60);

  std::string addr;   // HOST:PORT or unix:PATH; also $SNAKEPIT_ADDR
  std::string token;  // also $SNAKEPIT_TOKEN
  std::string tls_ca;
};

struct CallFlags {
  std::string function;
  std::string json_args;              // --json
  std::vector<std::string> assigns;   // -a key=value
  absl::Duration timeout = absl::InfiniteDuration();
  bool stream = false;
  std::string output = "auto";        // auto | json | table
  std::string session;                // --session
  std::string affinity = "hint";      // hint | strict-queue | strict-fail
};

struct SessionFlags {
  std::string action;  // create, list, show, drop, export, import
  std::string id;
  absl::Duration ttl = absl::ZeroDuration();
  bool strict = false;
  std::string output = "auto";
};

// "auto" becomes "table" on a terminal and "json" otherwise.
std::string ResolveOutput(const std::string& output);

int RunCall(const PoolFlags& pool, const CallFlags& call);
int RunFnList(const PoolFlags& pool, const std::string& output);
int RunHealth(const PoolFlags& target, bool ready);
int RunNodeInfo(const PoolFlags& target, const std::string& output);
int RunSession(const PoolFlags& target, const SessionFlags& flags);

// Parses "5s", "250ms", "2m" or a bare number of seconds.
bool ParseTimeout(const std::string& text, absl::Duration* out);

}  // namespace snakepit::cli

#endif  // SNAKEPIT_CLI_COMMANDS_H_
