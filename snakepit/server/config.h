// The configuration of a snakepitd node: a TOML file, overridden by
// SNAKEPIT_* environment variables, overridden by flags (DESIGN D11).
// docs/operations.md lists every key.

#ifndef SNAKEPIT_SERVER_CONFIG_H_
#define SNAKEPIT_SERVER_CONFIG_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace snakepit::server {

// One pool the node serves.
struct PoolConfig {
  std::string name = "default";
  std::vector<std::string> modules;  // .py paths, package dirs or names
  std::vector<std::string> paths;    // extra sys.path folders
  std::string python;                // empty: $SNAKEPIT_PYTHON or python3
  int size = 2;
  size_t max_queue = 1024;
  absl::Duration startup_timeout = absl::Seconds(60);
  absl::Duration cancel_grace = absl::Seconds(2);
  uint32_t max_payload_bytes = 256u << 20;
  int max_concurrency = 1;
  bool zygote = false;  // fork workers from a zygote
  absl::Duration liveness_interval = absl::Seconds(5);
  absl::Duration liveness_timeout = absl::Seconds(5);
  // Recycling; 0: no limit.
  uint64_t max_calls_per_worker = 0;
  absl::Duration max_worker_age = absl::ZeroDuration();
  uint64_t max_worker_rss_bytes = 0;
  uint64_t max_worker_pss_bytes = 0;
  std::map<std::string, std::string> env;

  friend bool operator==(const PoolConfig&, const PoolConfig&) = default;
};

struct NodeConfig {
  // gRPC listeners: "HOST:PORT" or "unix:PATH". Port 0 picks a free one.
  std::vector<std::string> listen = {"127.0.0.1:50051"};
  // Admin HTTP listener, "HOST:PORT"; empty disables it.
  std::string admin = "127.0.0.1:9090";
  // Files the node writes the bound addresses to once it serves (for
  // tests and supervisors that use port 0); empty: none.
  std::string ready_file;

  absl::Duration drain_timeout = absl::Seconds(30);
  absl::Duration worker_grace = absl::Seconds(5);
  // Largest gRPC message either way.
  uint32_t max_message_bytes = 128u << 20;

  // Bearer token clients must send; empty: no auth. A secret: redacted
  // by --print-config.
  std::string token;
  // TLS for the gRPC listeners; both empty: plaintext.
  std::string tls_cert_file;
  std::string tls_key_file;

  // The session store: "memory" (lost with the node) or "sqlite"
  // (durable; `sessions_path` is the database file).
  std::string sessions_store = "memory";
  std::string sessions_path;
  absl::Duration sessions_ttl = absl::Hours(1);
  size_t max_sessions = 100'000;
  size_t max_program_bytes = 1u << 20;

  std::string log_format = "auto";  // auto (text on a terminal), text, json
  std::string log_level = "info";

  std::vector<PoolConfig> pools;

  friend bool operator==(const NodeConfig&, const NodeConfig&) = default;
};

// Flags given on the command line; unset fields leave the file and the
// environment in charge.
struct ConfigOverrides {
  std::vector<std::string> listen;
  std::string admin;
  bool admin_set = false;
  std::string token;
  std::string log_format;
  std::string log_level;
  std::string ready_file;
  // A pool described on the command line (--module ...); replaces the
  // file's pools when modules are given.
  std::vector<std::string> modules;
  std::string python;
  int workers = 0;
};

// Parses TOML text. INVALID_ARGUMENT with "FILE:LINE:COLUMN: what" on
// syntax errors, unknown keys and bad values.
absl::StatusOr<NodeConfig> ParseConfig(const std::string& toml_text,
                                       const std::string& file_name);

// Reads `path` (empty: defaults only), then applies SNAKEPIT_* variables
// from `environ`-style "NAME=value" entries, then `overrides`, then
// validates the result.
absl::StatusOr<NodeConfig> LoadConfig(const std::string& path,
                                      const std::vector<std::string>& env,
                                      const ConfigOverrides& overrides);

// The effective configuration as TOML, secrets replaced by "<redacted>".
std::string PrintConfig(const NodeConfig& config);

}  // namespace snakepit::server

#endif  // SNAKEPIT_SERVER_CONFIG_H_
