#include "snakepit/server/config.h"

#include <toml++/toml.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <map>
#include <set>
#include <string_view>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

#include "snakepit/base/status.h"

namespace snakepit::server {
namespace {

constexpr int kMaxPoolSize = 1024;
constexpr int64_t kMaxU32 = std::numeric_limits<uint32_t>::max();
// A token file is a secret of a few dozen bytes; anything this large is
// the wrong file.
constexpr size_t kMaxTokenFileBytes = 64 << 10;
constexpr size_t kMaxConfigFileBytes = 16 << 20;

absl::Status ConfigError(std::string_view message) {
  return ReasonError(reason::kInvalidArgument, message);
}

// ---- Values shared by the file, the environment and the flags ----------

bool IsLogFormat(std::string_view s) {
  return s == "auto" || s == "text" || s == "json";
}

bool IsLogLevel(std::string_view s) {
  for (std::string_view name : {"trace", "debug", "info", "warn", "warning",
                                "error", "err", "critical", "off"}) {
    if (s == name) {
      return true;
    }
  }
  return false;
}

// "30s", "500ms", "2m", "1m30s"; finite and not negative.
absl::StatusOr<absl::Duration> ParseDurationText(std::string_view text) {
  absl::Duration d;
  if (!absl::ParseDuration(ToAbsl(text), &d) || d < absl::ZeroDuration() ||
      d == absl::InfiniteDuration()) {
    return ConfigError(absl::StrCat("bad duration \"", ToAbsl(text),
                                    "\" (use e.g. \"30s\", \"500ms\", "
                                    "\"2m\")"));
  }
  return d;
}

std::string RangeMessage(int64_t value, int64_t lo, int64_t hi) {
  return absl::StrCat(value, " is out of range ", lo, "..", hi);
}

// A listener is "unix:PATH" or "HOST:PORT" with a numeric port.
bool IsHostPort(std::string_view s) {
  size_t colon = s.rfind(':');
  int port = 0;
  return colon != std::string_view::npos && colon > 0 &&
         absl::SimpleAtoi(ToAbsl(s.substr(colon + 1)), &port) && port >= 0 &&
         port <= 65535;
}

bool IsListener(std::string_view s) {
  if (s.starts_with("unix:")) {
    return s.size() > 5;
  }
  return IsHostPort(s);
}

// Reads all of `path`, refusing files over `max_bytes`.
absl::StatusOr<std::string> ReadWholeFile(const std::string& path,
                                          size_t max_bytes) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) {
    return ConfigError(
        absl::StrCat("cannot read ", path, ": ", std::strerror(errno)));
  }
  std::string text;
  char buf[4096];
  size_t n = 0;
  while (text.size() <= max_bytes &&
         (n = std::fread(buf, 1, sizeof buf, f)) > 0) {
    text.append(buf, n);
  }
  bool failed = std::ferror(f) != 0;
  std::fclose(f);
  if (failed) {
    return ConfigError(absl::StrCat("cannot read ", path, ": read error"));
  }
  if (text.size() > max_bytes) {
    return ConfigError(
        absl::StrCat(path, " is larger than ", max_bytes, " bytes"));
  }
  return text;
}

// ---- TOML ----------------------------------------------------------------

std::string_view TypeName(toml::node_type type) {
  switch (type) {
    case toml::node_type::table:
      return "a table";
    case toml::node_type::array:
      return "an array";
    case toml::node_type::string:
      return "a string";
    case toml::node_type::integer:
      return "an integer";
    case toml::node_type::floating_point:
      return "a float";
    case toml::node_type::boolean:
      return "a boolean";
    case toml::node_type::date:
    case toml::node_type::time:
    case toml::node_type::date_time:
      return "a date or time";
    default:
      return "nothing";
  }
}

// Reads one TOML table whose allowed keys are declared up front. The
// first error sticks: later reads and checks do nothing, so a section
// parser reads every key in a row and returns status() at the end. Every
// error names FILE:LINE:COLUMN of the key or value at fault. Reads leave
// their output untouched when the key is absent.
class TableReader {
 public:
  TableReader(const toml::table& table, std::string prefix,
              const std::string& file,
              std::initializer_list<std::string_view> allowed)
      : table_(table), prefix_(std::move(prefix)), file_(file) {
    CheckKeys(allowed);
  }

  // Any key is allowed (a table of names, such as pool.env).
  TableReader(const toml::table& table, std::string prefix,
              const std::string& file)
      : table_(table), prefix_(std::move(prefix)), file_(file) {}

  const absl::Status& status() const { return status_; }

  void Read(std::string_view key, std::string* out);
  // With `valid`, each element must pass it; else `invalid` is reported.
  void Read(std::string_view key, std::vector<std::string>* out,
            bool (*valid)(std::string_view) = nullptr,
            std::string_view invalid = "");
  void Read(std::string_view key, absl::Duration* out);
  void Read(std::string_view key, bool* out);
  // Integers must lie in lo..hi, which must fit in T.
  template <typename T>
  void ReadInt(std::string_view key, int64_t lo, int64_t hi, T* out);
  // The table under `key`; nullptr when absent or after an error.
  const toml::table* Table(std::string_view key);

  // Records "KEY: message" at `key` (at the table when the key is absent)
  // unless `ok`.
  void Check(std::string_view key, bool ok, std::string_view message);
  void Fail(const toml::node& at, std::string_view message);

  const toml::node* Find(std::string_view key) const { return table_.get(key); }
  std::string Name(std::string_view key) const {
    return prefix_.empty() ? std::string(key)
                           : absl::StrCat(prefix_, ".", ToAbsl(key));
  }

 private:
  void CheckKeys(std::initializer_list<std::string_view> allowed);
  void FailAt(const toml::source_region& where, std::string_view message);
  // The node under `key` if it has the wanted type; else nullptr, with a
  // type error recorded when the key is present.
  const toml::node* Get(std::string_view key, toml::node_type type,
                        std::string_view expected);

  const toml::table& table_;
  const std::string prefix_;
  const std::string& file_;
  absl::Status status_;
};

void TableReader::FailAt(const toml::source_region& where,
                         std::string_view message) {
  if (status_.ok()) {
    status_ =
        ConfigError(absl::StrCat(file_, ":", where.begin.line, ":",
                                 where.begin.column, ": ", ToAbsl(message)));
  }
}

void TableReader::Fail(const toml::node& at, std::string_view message) {
  FailAt(at.source(), message);
}

void TableReader::Check(std::string_view key, bool ok,
                        std::string_view message) {
  if (!ok) {
    const toml::node* node = Find(key);
    Fail(node != nullptr ? *node : table_,
         absl::StrCat(Name(key), ": ", ToAbsl(message)));
  }
}

void TableReader::CheckKeys(std::initializer_list<std::string_view> allowed) {
  const toml::key* first = nullptr;
  const toml::node* first_node = nullptr;
  for (auto&& [key, node] : table_) {
    bool known = false;
    for (std::string_view name : allowed) {
      known = known || key.str() == name;
    }
    if (!known &&
        (first == nullptr || key.source().begin < first->source().begin)) {
      first = &key;
      first_node = &node;
    }
  }
  if (first != nullptr) {
    std::string name = Name(first->str());
    FailAt(first->source(), first_node->is_table()
                                ? absl::StrCat("unknown table [", name, "]")
                                : absl::StrCat("unknown key ", name));
  }
}

const toml::node* TableReader::Get(std::string_view key, toml::node_type type,
                                   std::string_view expected) {
  const toml::node* node = Find(key);
  if (!status_.ok() || node == nullptr) {
    return nullptr;
  }
  if (node->type() != type) {
    Fail(*node, absl::StrCat(Name(key), ": expected ", ToAbsl(expected),
                             ", got ", ToAbsl(TypeName(node->type()))));
    return nullptr;
  }
  return node;
}

void TableReader::Read(std::string_view key, std::string* out) {
  const toml::node* node = Get(key, toml::node_type::string, "a string");
  if (node != nullptr) {
    *out = node->as_string()->get();
  }
}

void TableReader::Read(std::string_view key, std::vector<std::string>* out,
                       bool (*valid)(std::string_view),
                       std::string_view invalid) {
  const toml::node* node =
      Get(key, toml::node_type::array, "an array of strings");
  if (node == nullptr) {
    return;
  }
  std::vector<std::string> values;
  for (const toml::node& element : *node->as_array()) {
    if (!element.is_string()) {
      Fail(element, absl::StrCat(Name(key), ": expected strings, got ",
                                 ToAbsl(TypeName(element.type()))));
      return;
    }
    values.push_back(element.as_string()->get());
    if (valid != nullptr && !valid(values.back())) {
      Fail(element, absl::StrCat(Name(key), ": \"", values.back(), "\" ",
                                 ToAbsl(invalid)));
      return;
    }
  }
  *out = std::move(values);
}

void TableReader::Read(std::string_view key, bool* out) {
  const toml::node* node = Get(key, toml::node_type::boolean, "true or false");
  if (node != nullptr) {
    *out = node->as_boolean()->get();
  }
}

void TableReader::Read(std::string_view key, absl::Duration* out) {
  const toml::node* node =
      Get(key, toml::node_type::string, "a duration string such as \"30s\"");
  if (node == nullptr) {
    return;
  }
  absl::StatusOr<absl::Duration> d =
      ParseDurationText(node->as_string()->get());
  if (!d.ok()) {
    Fail(*node, absl::StrCat(Name(key), ": ", d.status().message()));
    return;
  }
  *out = *d;
}

template <typename T>
void TableReader::ReadInt(std::string_view key, int64_t lo, int64_t hi,
                          T* out) {
  const toml::node* node = Get(key, toml::node_type::integer, "an integer");
  if (node == nullptr) {
    return;
  }
  int64_t value = node->as_integer()->get();
  if (value < lo || value > hi) {
    Fail(*node, absl::StrCat(Name(key), ": ", RangeMessage(value, lo, hi)));
    return;
  }
  *out = static_cast<T>(value);
}

const toml::table* TableReader::Table(std::string_view key) {
  const toml::node* node = Get(key, toml::node_type::table, "a table");
  return node != nullptr ? node->as_table() : nullptr;
}

absl::Status ParseNode(const toml::table& table, const std::string& file,
                       NodeConfig* config) {
  TableReader r(
      table, "node", file,
      {"listen", "admin", "ready_file", "drain_timeout", "worker_grace",
       "max_message_bytes", "log_format", "log_level"});
  r.Read("listen", &config->listen, IsListener,
         "is not HOST:PORT or unix:PATH");
  r.Check("listen", !config->listen.empty(), "needs a listener");
  r.Read("admin", &config->admin);
  r.Check("admin", config->admin.empty() || IsHostPort(config->admin),
          "expected \"HOST:PORT\" or \"\"");
  r.Read("ready_file", &config->ready_file);
  r.Read("drain_timeout", &config->drain_timeout);
  r.Read("worker_grace", &config->worker_grace);
  r.ReadInt("max_message_bytes", 1, kMaxU32, &config->max_message_bytes);
  r.Read("log_format", &config->log_format);
  r.Check("log_format", IsLogFormat(config->log_format),
          "expected \"auto\", \"text\" or \"json\"");
  r.Read("log_level", &config->log_level);
  r.Check("log_level", IsLogLevel(config->log_level),
          "expected trace, debug, info, warn, error, critical or off");
  return r.status();
}

// Trailing newlines are what editors and `echo` add; they are never part
// of a token. A relative path is read from the working directory, like
// every other path in the file.
absl::Status ParseAuth(const toml::table& table, const std::string& file,
                       NodeConfig* config) {
  TableReader r(table, "auth", file, {"token", "token_file"});
  std::string token_file;
  r.Read("token", &config->token);
  r.Read("token_file", &token_file);
  r.Check("token_file", token_file.empty() || r.Find("token") == nullptr,
          "give token or token_file, not both");
  if (!r.status().ok() || token_file.empty()) {
    return r.status();
  }
  absl::StatusOr<std::string> text =
      ReadWholeFile(token_file, kMaxTokenFileBytes);
  r.Check("token_file", text.ok(), std::string(text.status().message()));
  if (text.ok()) {
    while (!text->empty() && (text->back() == '\n' || text->back() == '\r')) {
      text->pop_back();
    }
    r.Check("token_file", !text->empty(),
            absl::StrCat(token_file, " is empty"));
    config->token = std::move(*text);
  }
  return r.status();
}

absl::Status ParseTls(const toml::table& table, const std::string& file,
                      NodeConfig* config) {
  TableReader r(table, "tls", file, {"cert_file", "key_file"});
  r.Read("cert_file", &config->tls_cert_file);
  r.Read("key_file", &config->tls_key_file);
  r.Check("key_file",
          config->tls_cert_file.empty() == config->tls_key_file.empty(),
          "give both cert_file and key_file, or neither");
  return r.status();
}

absl::Status ParseSessions(const toml::table& table, const std::string& file,
                           NodeConfig* config) {
  TableReader r(table, "sessions", file,
                {"store", "path", "ttl", "max_sessions", "max_program_bytes"});
  r.Read("store", &config->sessions_store);
  r.Check("store",
          config->sessions_store == "memory" ||
              config->sessions_store == "sqlite",
          "expected memory or sqlite");
  r.Read("path", &config->sessions_path);
  r.Check("path",
          config->sessions_store != "sqlite" || !config->sessions_path.empty(),
          "the sqlite store needs a path");
  r.Read("ttl", &config->sessions_ttl);
  r.ReadInt("max_sessions", 1, std::numeric_limits<int64_t>::max(),
            &config->max_sessions);
  r.ReadInt("max_program_bytes", 1, kMaxU32, &config->max_program_bytes);
  return r.status();
}

// Any name is allowed; values must be strings.
absl::Status ParsePoolEnv(const toml::table& table, const std::string& file,
                          PoolConfig* pool) {
  TableReader r(table, "pool.env", file);
  for (auto&& [key, node] : table) {
    r.Read(key.str(), &pool->env[std::string(key.str())]);
  }
  return r.status();
}

absl::Status ParsePool(const toml::table& table, const std::string& file,
                       PoolConfig* pool) {
  TableReader r(
      table, "pool", file,
      {"name", "modules", "paths", "python", "size", "max_queue",
       "startup_timeout", "cancel_grace", "max_payload_bytes",
       "max_concurrency", "max_calls_per_worker", "max_worker_age",
       "max_worker_rss_bytes", "max_worker_pss_bytes", "zygote",
       "liveness_interval", "liveness_timeout", "env"});
  r.Read("name", &pool->name);
  r.Check("name", !pool->name.empty(), "is empty");
  r.Read("modules", &pool->modules);
  r.Check("modules", !pool->modules.empty(), "needs at least one module");
  r.Read("paths", &pool->paths);
  r.Read("python", &pool->python);
  r.ReadInt("size", 1, kMaxPoolSize, &pool->size);
  r.ReadInt("max_queue", 0, std::numeric_limits<int64_t>::max(),
            &pool->max_queue);
  r.Read("startup_timeout", &pool->startup_timeout);
  r.Read("cancel_grace", &pool->cancel_grace);
  r.ReadInt("max_payload_bytes", 1, kMaxU32, &pool->max_payload_bytes);
  r.ReadInt("max_concurrency", 1, 256, &pool->max_concurrency);
  r.Read("zygote", &pool->zygote);
  r.Read("liveness_interval", &pool->liveness_interval);
  r.Check("liveness_interval", pool->liveness_interval > absl::ZeroDuration(),
          "must be positive");
  r.Read("liveness_timeout", &pool->liveness_timeout);
  r.Check("liveness_timeout", pool->liveness_timeout > absl::ZeroDuration(),
          "must be positive");
  r.ReadInt("max_calls_per_worker", 0, std::numeric_limits<int64_t>::max(),
            &pool->max_calls_per_worker);
  r.Read("max_worker_age", &pool->max_worker_age);
  r.ReadInt("max_worker_rss_bytes", 0, std::numeric_limits<int64_t>::max(),
            &pool->max_worker_rss_bytes);
  r.ReadInt("max_worker_pss_bytes", 0, std::numeric_limits<int64_t>::max(),
            &pool->max_worker_pss_bytes);
  const toml::table* env = r.Table("env");
  if (env == nullptr) {
    return r.status();
  }
  return ParsePoolEnv(*env, file, pool);
}

// [[pool]] tables, in file order; names must be unique.
absl::Status ParsePools(const toml::array& tables, const std::string& file,
                        std::vector<PoolConfig>* pools) {
  std::map<std::string, uint32_t> first_line;
  for (const toml::node& element : tables) {
    const toml::table& table = *element.as_table();
    PoolConfig pool;
    if (absl::Status s = ParsePool(table, file, &pool); !s.ok()) {
      return s;
    }
    auto [it, added] = first_line.emplace(pool.name, table.source().begin.line);
    if (!added) {
      TableReader r(table, "pool", file);
      r.Check("name", false,
              absl::StrCat("\"", pool.name,
                           "\" is already the name of the pool at line ",
                           it->second));
      return r.status();
    }
    pools->push_back(std::move(pool));
  }
  return absl::OkStatus();
}

absl::Status ParseRoot(const toml::table& root, const std::string& file,
                       NodeConfig* config) {
  using Parser =
      absl::Status (*)(const toml::table&, const std::string&, NodeConfig*);
  struct Section {
    const toml::table* table;
    Parser parse;
  };
  TableReader r(root, "", file, {"node", "auth", "tls", "sessions", "pool"});
  const Section sections[] = {{r.Table("node"), ParseNode},
                              {r.Table("auth"), ParseAuth},
                              {r.Table("tls"), ParseTls},
                              {r.Table("sessions"), ParseSessions}};
  const toml::node* pools = r.Find("pool");
  r.Check("pool", pools == nullptr || pools->is_array_of_tables(),
          "expected [[pool]] tables");
  if (!r.status().ok()) {
    return r.status();
  }
  for (const Section& section : sections) {
    if (section.table == nullptr) {
      continue;
    }
    if (absl::Status s = section.parse(*section.table, file, config); !s.ok()) {
      return s;
    }
  }
  if (pools == nullptr) {
    return absl::OkStatus();
  }
  return ParsePools(*pools->as_array(), file, &config->pools);
}

// ---- Environment and flags -----------------------------------------------

absl::Status EnvError(std::string_view name, std::string_view message) {
  return ConfigError(absl::StrCat(ToAbsl(name), ": ", ToAbsl(message)));
}

absl::StatusOr<std::vector<std::string>> SplitListeners(
    std::string_view name, std::string_view value) {
  std::vector<std::string> listeners;
  for (absl::string_view part : absl::StrSplit(ToAbsl(value), ',')) {
    std::string listener(absl::StripAsciiWhitespace(part));
    if (!IsListener(listener)) {
      return EnvError(name, absl::StrCat("\"", listener,
                                         "\" is not HOST:PORT or unix:PATH"));
    }
    listeners.push_back(std::move(listener));
  }
  return listeners;
}

absl::Status ApplyEnvDuration(std::string_view name, std::string_view value,
                              absl::Duration* out) {
  absl::StatusOr<absl::Duration> d = ParseDurationText(value);
  if (!d.ok()) {
    return EnvError(name, std::string(d.status().message()));
  }
  *out = *d;
  return absl::OkStatus();
}

absl::Status ApplyEnvBytes(std::string_view name, std::string_view value,
                           uint32_t* out) {
  int64_t n = 0;
  if (!absl::SimpleAtoi(ToAbsl(value), &n)) {
    return EnvError(name,
                    absl::StrCat("\"", ToAbsl(value), "\" is not an integer"));
  }
  if (n < 1 || n > kMaxU32) {
    return EnvError(name, RangeMessage(n, 1, kMaxU32));
  }
  *out = static_cast<uint32_t>(n);
  return absl::OkStatus();
}

absl::Status ApplyEnvChoice(std::string_view name, std::string_view value,
                            bool valid, std::string* out) {
  if (!valid) {
    return EnvError(name,
                    absl::StrCat("unknown value \"", ToAbsl(value), "\""));
  }
  *out = std::string(value);
  return absl::OkStatus();
}

absl::Status ApplyEnvVar(std::string_view name, std::string_view value,
                         NodeConfig* config) {
  if (name == "SNAKEPIT_LISTEN") {
    absl::StatusOr<std::vector<std::string>> listeners =
        SplitListeners(name, value);
    if (!listeners.ok()) {
      return listeners.status();
    }
    config->listen = std::move(*listeners);
  } else if (name == "SNAKEPIT_ADMIN") {
    if (!value.empty() && !IsHostPort(value)) {
      return EnvError(name,
                      absl::StrCat("\"", ToAbsl(value), "\" is not HOST:PORT"));
    }
    config->admin = std::string(value);
  } else if (name == "SNAKEPIT_TOKEN") {
    config->token = std::string(value);
  } else if (name == "SNAKEPIT_READY_FILE") {
    config->ready_file = std::string(value);
  } else if (name == "SNAKEPIT_LOG_FORMAT") {
    return ApplyEnvChoice(name, value, IsLogFormat(value), &config->log_format);
  } else if (name == "SNAKEPIT_LOG_LEVEL") {
    return ApplyEnvChoice(name, value, IsLogLevel(value), &config->log_level);
  } else if (name == "SNAKEPIT_DRAIN_TIMEOUT") {
    return ApplyEnvDuration(name, value, &config->drain_timeout);
  } else if (name == "SNAKEPIT_WORKER_GRACE") {
    return ApplyEnvDuration(name, value, &config->worker_grace);
  } else if (name == "SNAKEPIT_MAX_MESSAGE_BYTES") {
    return ApplyEnvBytes(name, value, &config->max_message_bytes);
  }
  // Other variables, SNAKEPIT_PYTHON included, are not the node's config.
  return absl::OkStatus();
}

absl::Status ApplyEnv(const std::vector<std::string>& env, NodeConfig* config) {
  for (const std::string& entry : env) {
    size_t eq = entry.find('=');
    if (eq == std::string::npos || !entry.starts_with("SNAKEPIT_")) {
      continue;
    }
    std::string_view view(entry);
    absl::Status s =
        ApplyEnvVar(view.substr(0, eq), view.substr(eq + 1), config);
    if (!s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

// Flag names here match the snakepitd command line.
absl::Status ApplyLogFlags(const ConfigOverrides& flags, NodeConfig* config) {
  if (!flags.log_format.empty()) {
    if (!IsLogFormat(flags.log_format)) {
      return ConfigError(absl::StrCat("--log-format: unknown value \"",
                                      flags.log_format, "\""));
    }
    config->log_format = flags.log_format;
  }
  if (!flags.log_level.empty()) {
    if (!IsLogLevel(flags.log_level)) {
      return ConfigError(
          absl::StrCat("--log-level: unknown level \"", flags.log_level, "\""));
    }
    config->log_level = flags.log_level;
  }
  return absl::OkStatus();
}

// --module replaces the pools with one. Without it, --python and
// --workers apply to every pool of the file.
void ApplyPoolFlags(const ConfigOverrides& flags, NodeConfig* config) {
  if (!flags.modules.empty()) {
    PoolConfig pool;
    pool.modules = flags.modules;
    config->pools = {std::move(pool)};
  }
  for (PoolConfig& pool : config->pools) {
    if (!flags.python.empty()) {
      pool.python = flags.python;
    }
    if (flags.workers != 0) {
      pool.size = flags.workers;
    }
  }
}

absl::Status ApplyFlags(const ConfigOverrides& flags, NodeConfig* config) {
  if (!flags.listen.empty()) {
    config->listen = flags.listen;
  }
  if (flags.admin_set) {
    config->admin = flags.admin;
  }
  if (!flags.token.empty()) {
    config->token = flags.token;
  }
  if (!flags.ready_file.empty()) {
    config->ready_file = flags.ready_file;
  }
  ApplyPoolFlags(flags, config);
  return ApplyLogFlags(flags, config);
}

// ---- Validation ----------------------------------------------------------

absl::Status ValidateListeners(const NodeConfig& config) {
  if (config.listen.empty()) {
    return ConfigError(
        "no gRPC listener: set node.listen, SNAKEPIT_LISTEN or --listen");
  }
  for (const std::string& listener : config.listen) {
    if (!IsListener(listener)) {
      return ConfigError(absl::StrCat("listener \"", listener,
                                      "\" is not HOST:PORT or unix:PATH"));
    }
  }
  if (!config.admin.empty() && !IsHostPort(config.admin)) {
    return ConfigError(
        absl::StrCat("admin listener \"", config.admin, "\" is not HOST:PORT"));
  }
  return absl::OkStatus();
}

absl::Status ValidatePools(const std::vector<PoolConfig>& pools) {
  if (pools.empty()) {
    return ConfigError("no pools: add a [[pool]] table or pass --module");
  }
  std::set<std::string> names;
  for (const PoolConfig& pool : pools) {
    std::string which = absl::StrCat("pool \"", pool.name, "\"");
    if (pool.name.empty()) {
      return ConfigError("a pool has an empty name");
    }
    if (!names.insert(pool.name).second) {
      return ConfigError(absl::StrCat(which, " is defined twice"));
    }
    if (pool.modules.empty()) {
      return ConfigError(absl::StrCat(which, " has no modules"));
    }
    if (pool.size < 1 || pool.size > kMaxPoolSize) {
      return ConfigError(absl::StrCat(
          which, ": size ", RangeMessage(pool.size, 1, kMaxPoolSize)));
    }
  }
  return absl::OkStatus();
}

// Checks the merged result, whatever source each value came from.
absl::Status Validate(const NodeConfig& config) {
  if (absl::Status s = ValidateListeners(config); !s.ok()) {
    return s;
  }
  if (config.tls_cert_file.empty() != config.tls_key_file.empty()) {
    return ConfigError("tls: give both cert_file and key_file, or neither");
  }
  if (!IsLogFormat(config.log_format)) {
    return ConfigError(
        absl::StrCat("unknown log format \"", config.log_format, "\""));
  }
  if (!IsLogLevel(config.log_level)) {
    return ConfigError(
        absl::StrCat("unknown log level \"", config.log_level, "\""));
  }
  return ValidatePools(config.pools);
}

// ---- Printing ------------------------------------------------------------

// A TOML basic string: quotes, backslashes and control characters
// escaped; other bytes (UTF-8) as they are.
std::string Quote(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    unsigned char u = static_cast<unsigned char>(c);
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\r':
        out += "\\r";
        break;
      default:
        if (u < 0x20 || u == 0x7f) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04X", u);
          out += buf;
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

std::string QuoteKey(std::string_view key) {
  bool bare = !key.empty();
  for (char c : key) {
    bare = bare && (absl::ascii_isalnum(static_cast<unsigned char>(c)) ||
                    c == '_' || c == '-');
  }
  return bare ? std::string(key) : Quote(key);
}

std::string QuoteList(const std::vector<std::string>& items) {
  std::vector<std::string> quoted;
  for (const std::string& item : items) {
    quoted.push_back(Quote(item));
  }
  return absl::StrCat("[", absl::StrJoin(quoted, ", "), "]");
}

std::string QuoteDuration(absl::Duration d) {
  return Quote(absl::FormatDuration(d));
}

// Appends the line "key = value"; `value` is already TOML.
void AppendKey(std::string* out, std::string_view key,
               const std::string& value) {
  absl::StrAppend(out, ToAbsl(key), " = ", value, "\n");
}

void PrintPool(const PoolConfig& pool, std::string* out) {
  absl::StrAppend(out, "\n[[pool]]\n");
  AppendKey(out, "name", Quote(pool.name));
  AppendKey(out, "modules", QuoteList(pool.modules));
  AppendKey(out, "paths", QuoteList(pool.paths));
  AppendKey(out, "python", Quote(pool.python));
  AppendKey(out, "size", absl::StrCat(pool.size));
  AppendKey(out, "max_queue", absl::StrCat(pool.max_queue));
  AppendKey(out, "startup_timeout", QuoteDuration(pool.startup_timeout));
  AppendKey(out, "cancel_grace", QuoteDuration(pool.cancel_grace));
  AppendKey(out, "max_payload_bytes", absl::StrCat(pool.max_payload_bytes));
  AppendKey(out, "max_concurrency", absl::StrCat(pool.max_concurrency));
  AppendKey(out, "zygote", pool.zygote ? "true" : "false");
  AppendKey(out, "liveness_interval", QuoteDuration(pool.liveness_interval));
  AppendKey(out, "liveness_timeout", QuoteDuration(pool.liveness_timeout));
  AppendKey(out, "max_calls_per_worker",
            absl::StrCat(pool.max_calls_per_worker));
  AppendKey(out, "max_worker_age", QuoteDuration(pool.max_worker_age));
  AppendKey(out, "max_worker_rss_bytes",
            absl::StrCat(pool.max_worker_rss_bytes));
  AppendKey(out, "max_worker_pss_bytes",
            absl::StrCat(pool.max_worker_pss_bytes));
  if (pool.env.empty()) {
    return;
  }
  absl::StrAppend(out, "\n[pool.env]\n");
  for (const auto& [name, value] : pool.env) {
    AppendKey(out, QuoteKey(name), Quote(value));
  }
}

}  // namespace

absl::StatusOr<NodeConfig> ParseConfig(const std::string& toml_text,
                                       const std::string& file_name) {
  toml::table root;
  // toml++ reports syntax errors by exception; this is the only place one
  // can arise, so it is converted here (STYLE.md 8).
  try {
    root =
        toml::parse(std::string_view(toml_text), std::string_view(file_name));
  } catch (const toml::parse_error& e) {
    std::string what(e.description());
    if (!what.empty()) {
      what[0] = absl::ascii_tolower(static_cast<unsigned char>(what[0]));
    }
    return ConfigError(absl::StrCat(file_name, ":", e.source().begin.line, ":",
                                    e.source().begin.column, ": ", what));
  }
  NodeConfig config;
  if (absl::Status s = ParseRoot(root, file_name, &config); !s.ok()) {
    return s;
  }
  return config;
}

absl::StatusOr<NodeConfig> LoadConfig(const std::string& path,
                                      const std::vector<std::string>& env,
                                      const ConfigOverrides& overrides) {
  NodeConfig config;
  if (!path.empty()) {
    absl::StatusOr<std::string> text = ReadWholeFile(path, kMaxConfigFileBytes);
    if (!text.ok()) {
      return text.status();
    }
    absl::StatusOr<NodeConfig> parsed = ParseConfig(*text, path);
    if (!parsed.ok()) {
      return parsed.status();
    }
    config = std::move(*parsed);
  }
  absl::Status s = ApplyEnv(env, &config);
  if (s.ok()) {
    s = ApplyFlags(overrides, &config);
  }
  if (s.ok()) {
    s = Validate(config);
  }
  if (!s.ok()) {
    return s;
  }
  return config;
}

std::string PrintConfig(const NodeConfig& config) {
  std::string out = "[node]\n";
  AppendKey(&out, "listen", QuoteList(config.listen));
  AppendKey(&out, "admin", Quote(config.admin));
  AppendKey(&out, "ready_file", Quote(config.ready_file));
  AppendKey(&out, "drain_timeout", QuoteDuration(config.drain_timeout));
  AppendKey(&out, "worker_grace", QuoteDuration(config.worker_grace));
  AppendKey(&out, "max_message_bytes", absl::StrCat(config.max_message_bytes));
  AppendKey(&out, "log_format", Quote(config.log_format));
  AppendKey(&out, "log_level", Quote(config.log_level));

  absl::StrAppend(&out, "\n[auth]\n");
  AppendKey(&out, "token", Quote(config.token.empty() ? "" : "<redacted>"));
  absl::StrAppend(&out, "\n[tls]\n");
  AppendKey(&out, "cert_file", Quote(config.tls_cert_file));
  AppendKey(&out, "key_file", Quote(config.tls_key_file));
  absl::StrAppend(&out, "\n[sessions]\n");
  AppendKey(&out, "store", Quote(config.sessions_store));
  AppendKey(&out, "path", Quote(config.sessions_path));
  AppendKey(&out, "ttl", QuoteDuration(config.sessions_ttl));
  AppendKey(&out, "max_sessions", std::to_string(config.max_sessions));
  AppendKey(&out, "max_program_bytes",
            std::to_string(config.max_program_bytes));
  for (const PoolConfig& pool : config.pools) {
    PrintPool(pool, &out);
  }
  return out;
}

}  // namespace snakepit::server
