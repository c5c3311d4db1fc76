#include "snakepit/cli/commands.h"

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "snakepit/api/client.h"
#include "snakepit/base/status.h"
#include "snakepit/base/value.h"
#include "snakepit/pool/pool.h"
#include "snakepit/session/open_store.h"
#include "snakepit/session/pool_backend.h"

namespace snakepit::cli {
namespace {

void PrintError(const absl::Status& status) {
  std::cerr << DescribeError(status) << "\n";
  PythonDetails details = PythonDetailsOf(status);
  if (!details.path.empty()) {
    std::cerr << "at " << details.path << "\n";
  }
  if (!details.traceback.empty()) {
    std::cerr << details.traceback;
    if (details.traceback.back() != '\n') {
      std::cerr << "\n";
    }
  }
}

// The text of --json: the value itself, or with `@PATH` the file's
// contents, with `-` standard input (arguments too large for a command
// line, which the kernel limits to 128 KiB each).
absl::StatusOr<std::string> JsonArgsText(const std::string& flag) {
  if (flag != "-" && flag.rfind('@', 0) != 0) {
    return flag;
  }
  std::ifstream file;
  std::istream* in = &std::cin;
  if (flag != "-") {
    file.open(flag.substr(1), std::ios::binary);
    if (!file) {
      return ReasonError(reason::kInvalidArgument,
                         absl::StrCat("--json ", flag, ": cannot open ",
                                      flag.substr(1)));
    }
    in = &file;
  }
  std::ostringstream text;
  text << in->rdbuf();
  if (in->bad()) {
    return ReasonError(reason::kInvalidArgument,
                       absl::StrCat("--json ", flag, ": read failed"));
  }
  return text.str();
}

// Builds the call's arguments from --json and -a. A -a value is read as
// JSON when it parses (`-a n=5` is the number 5), else as a string.
absl::StatusOr<Value> BuildArgs(const CallFlags& flags) {
  Value args = nullptr;
  if (!flags.json_args.empty()) {
    absl::StatusOr<std::string> text = JsonArgsText(flags.json_args);
    if (!text.ok()) {
      return text.status();
    }
    absl::StatusOr<Value> parsed = ParseJson(*text);
    if (!parsed.ok()) {
      return ReasonError(reason::kInvalidArgument,
                         absl::StrCat("--json: ", parsed.status().message()));
    }
    args = std::move(*parsed);
    if (!args.is_object() && !args.is_array()) {
      return ReasonError(reason::kInvalidArgument,
                         "--json must be an object (keyword arguments) or "
                         "an array (positional arguments)");
    }
  }
  for (const std::string& assign : flags.assigns) {
    size_t eq = assign.find('=');
    if (eq == std::string::npos || eq == 0) {
      return ReasonError(reason::kInvalidArgument,
                         absl::StrCat("-a ", assign, ": expected key=value"));
    }
    if (args.is_array()) {
      return ReasonError(reason::kInvalidArgument,
                         "-a cannot add keywords to positional --json");
    }
    std::string text = assign.substr(eq + 1);
    absl::StatusOr<Value> value = ParseJson(text);
    args[assign.substr(0, eq)] = value.ok() ? *value : Value(text);
  }
  return args;
}

absl::StatusOr<std::unique_ptr<Pool>> StartPool(
    const PoolFlags& flags, std::shared_ptr<SessionBackend> sessions = {}) {
  PoolOptions options;
  options.sessions = std::move(sessions);
  options.name = "cli";
  options.modules = flags.modules;
  options.search_paths = flags.paths;
  options.python = flags.python;
  options.size = flags.workers;
  options.startup_timeout = flags.startup_timeout;
  return Pool::Start(std::move(options));
}

absl::StatusOr<std::unique_ptr<Client>> ConnectClient(
    const PoolFlags& f, absl::Duration timeout = absl::InfiniteDuration()) {
  ClientOptions options;
  options.connect_timeout = std::min(options.connect_timeout, timeout);
  options.address = f.addr;
  options.token = f.token;
  options.tls_ca_file = f.tls_ca;
  return Client::Connect(options);
}

// A table cell: strings as they are, with control characters (newlines,
// tabs, terminal escapes) shown escaped so they cannot break the table or
// drive the terminal; other values as JSON.
std::string Cell(const Value& v) {
  if (!v.is_string()) {
    return ToJson(v);
  }
  std::string out;
  for (unsigned char c : v.get<std::string>()) {
    if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c < 0x20 || c == 0x7f) {
      out += absl::StrFormat("\\x%02x", c);
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

void PrintRow(const std::vector<std::string>& cells,
              const std::vector<size_t>& widths) {
  std::string line;
  for (size_t i = 0; i < cells.size(); ++i) {
    line += cells[i];
    if (i + 1 < cells.size()) {
      line.append(widths[i] - cells[i].size() + 2, ' ');
    }
  }
  while (!line.empty() && line.back() == ' ') {
    line.pop_back();
  }
  std::printf("%s\n", line.c_str());
}

// A map prints as KEY VALUE rows; an array of maps as a table with one
// column per key found in any row; anything else as JSON.
void PrintTable(const Value& value) {
  if (value.is_object() && !value.empty()) {
    size_t width = 0;
    for (auto it = value.begin(); it != value.end(); ++it) {
      width = std::max(width, Cell(it.key()).size());
    }
    for (auto it = value.begin(); it != value.end(); ++it) {
      PrintRow({Cell(it.key()), Cell(*it)}, {width, 0});
    }
    return;
  }
  bool rows_are_maps = value.is_array() && !value.empty();
  for (const Value& row : value) {
    rows_are_maps = rows_are_maps && row.is_object();
  }
  if (!rows_are_maps) {
    std::printf("%s\n", ToJson(value, 2).c_str());
    return;
  }
  std::vector<std::string> keys;
  for (const Value& row : value) {
    for (auto it = row.begin(); it != row.end(); ++it) {
      if (std::find(keys.begin(), keys.end(), it.key()) == keys.end()) {
        keys.push_back(it.key());
      }
    }
  }
  std::vector<size_t> widths;
  for (const std::string& key : keys) {
    size_t w = Cell(key).size();
    for (const Value& row : value) {
      w = std::max(w, row.contains(key) ? Cell(row[key]).size() : 0);
    }
    widths.push_back(w);
  }
  std::vector<std::string> header;
  for (const std::string& key : keys) {
    header.push_back(Cell(key));
  }
  PrintRow(header, widths);
  for (const Value& row : value) {
    std::vector<std::string> cells;
    for (const std::string& key : keys) {
      cells.push_back(row.contains(key) ? Cell(row[key]) : "");
    }
    PrintRow(cells, widths);
  }
}

// Prints `value`; false when stdout cannot take it (a closed pipe, a
// full disk), so that a stream stops instead of running on unseen.
bool PrintValue(const Value& value, const std::string& output, bool line) {
  if (output == "table") {
    PrintTable(value);
  } else {
    std::printf("%s\n", ToJson(value, line ? -1 : 2).c_str());
  }
  return std::fflush(stdout) == 0 && !std::ferror(stdout);
}

int OutputFailed() {
  std::cerr << "error: output_failed: cannot write to stdout\n";
  return kExitCallFailed;
}

int StreamCall(Call& call, const std::string& output) {
  while (true) {
    absl::StatusOr<std::optional<Value>> chunk = call.Next();
    if (!chunk.ok()) {
      PrintError(chunk.status());
      return kExitCallFailed;
    }
    if (!chunk->has_value()) {
      return kExitOk;
    }
    if (!PrintValue(**chunk, output, true)) {
      call.Cancel();
      return OutputFailed();
    }
  }
}

// The first paragraph of a docstring, on one line.
std::string FirstParagraph(const std::string& doc) {
  std::string out;
  size_t end = doc.find("\n\n");
  for (char c : doc.substr(0, end)) {
    out += c == '\n' ? ' ' : c;
  }
  return out;
}

int RemoteCall(const PoolFlags& target, const CallFlags& flags,
               const Value& args, const std::string& output) {
  absl::StatusOr<std::unique_ptr<Client>> client =
      ConnectClient(target, flags.timeout);
  if (!client.ok()) {
    PrintError(client.status());
    return kExitPoolFailed;
  }
  RemoteCallOptions options;
  options.timeout = flags.timeout;
  options.session = flags.session;
  options.affinity = flags.affinity;
  if (flags.stream) {
    bool printed = true;
    absl::Status s = (*client)->CallStream(
        flags.function, args,
        [&](const Value& chunk) {
          printed = PrintValue(chunk, output, true);
          return printed;
        },
        options);
    if (!printed) {
      return OutputFailed();
    }
    if (!s.ok()) {
      PrintError(s);
      return kExitCallFailed;
    }
    return kExitOk;
  }
  absl::StatusOr<Value> result =
      (*client)->Call(flags.function, args, options);
  if (!result.ok()) {
    PrintError(result.status());
    return kExitCallFailed;
  }
  return PrintValue(*result, output, false) ? kExitOk : OutputFailed();
}

}  // namespace

std::string ResolveOutput(const std::string& output) {
  if (output != "auto") {
    return output;
  }
  return ::isatty(STDOUT_FILENO) ? "table" : "json";
}

bool ParseTimeout(const std::string& text, absl::Duration* out) {
  double seconds = 0;
  if (absl::SimpleAtod(text, &seconds)) {
    if (!(seconds > 0) || !std::isfinite(seconds)) {
      return false;
    }
    *out = absl::Seconds(seconds);
    return true;
  }
  return absl::ParseDuration(text, out) && *out > absl::ZeroDuration();
}

int RunCall(const PoolFlags& pool_flags, const CallFlags& flags) {
  absl::StatusOr<Value> args = BuildArgs(flags);
  if (!args.ok()) {
    std::cerr << DescribeError(args.status()) << "\n";
    return kExitUsage;
  }
  std::string output = ResolveOutput(flags.output);
  if (!pool_flags.addr.empty()) {
    return RemoteCall(pool_flags, flags, *args, output);
  }
  // A local pool lives as long as this command, and so does its session:
  // a memory store holding just the one named.
  std::shared_ptr<SessionStore> store;
  if (!flags.session.empty()) {
    store = *OpenStore(StoreConfig{});
    CreateOptions create;
    create.id = flags.session;
    if (absl::StatusOr<CreateResult> s = store->Create(create); !s.ok()) {
      PrintError(s.status());
      return kExitUsage;
    }
  }
  // --timeout covers the whole call, the pool's start included.
  absl::Time deadline = flags.timeout == absl::InfiniteDuration()
                            ? absl::InfiniteFuture()
                            : absl::Now() + flags.timeout;
  PoolFlags local = pool_flags;
  local.startup_timeout = std::min(local.startup_timeout, flags.timeout);
  absl::StatusOr<std::unique_ptr<Pool>> pool =
      StartPool(local, store ? MakePoolBackend(store) : nullptr);
  if (!pool.ok()) {
    PrintError(pool.status());
    return kExitPoolFailed;
  }
  CallOptions options;
  options.timeout = deadline == absl::InfiniteFuture()
                        ? absl::InfiniteDuration()
                        : std::max(deadline - absl::Now(),
                                   absl::Milliseconds(1));
  options.session = flags.session;
  Call call = (*pool)->Submit(flags.function, *args, options);
  if (flags.stream) {
    return StreamCall(call, output);
  }
  absl::StatusOr<Value> result = call.Get();
  if (!result.ok()) {
    PrintError(result.status());
    return kExitCallFailed;
  }
  return PrintValue(*result, output, false) ? kExitOk : OutputFailed();
}

int RunFnList(const PoolFlags& pool_flags, const std::string& format) {
  std::string output = ResolveOutput(format);
  std::vector<RemoteFunction> functions;
  if (!pool_flags.addr.empty()) {
    absl::StatusOr<std::unique_ptr<Client>> client =
        ConnectClient(pool_flags);
    if (!client.ok()) {
      PrintError(client.status());
      return kExitPoolFailed;
    }
    absl::StatusOr<std::vector<RemoteFunction>> listed =
        (*client)->ListFunctions();
    if (!listed.ok()) {
      PrintError(listed.status());
      return kExitCallFailed;
    }
    functions = std::move(*listed);
  } else {
    absl::StatusOr<std::unique_ptr<Pool>> pool = StartPool(pool_flags);
    if (!pool.ok()) {
      PrintError(pool.status());
      return kExitPoolFailed;
    }
    for (const FunctionInfo& f : (*pool)->Functions()) {
      functions.push_back({f.name, "cli", f.kind, f.signature, f.doc});
    }
  }
  if (output == "json") {
    Value list = Value::array();
    for (const RemoteFunction& f : functions) {
      list.push_back({{"name", f.name}, {"pool", f.pool}, {"kind", f.kind},
                      {"signature", f.signature}, {"doc", f.doc}});
    }
    std::printf("%s\n", ToJson(list, 2).c_str());
    return kExitOk;
  }
  for (const RemoteFunction& f : functions) {
    std::printf("%s%s  [%s]\n", f.name.c_str(), f.signature.c_str(),
                f.kind.c_str());
    if (!f.doc.empty()) {
      std::printf("    %s\n", FirstParagraph(f.doc).c_str());
    }
  }
  return kExitOk;
}

}  // namespace snakepit::cli

namespace snakepit::cli {

// Why the node's pools cannot all take calls ("pool x degraded: ...",
// "pool y 1 of 2 workers ready"), or "" when they can.
std::string PoolsNotReady(Client& client) {
  absl::StatusOr<Value> info = client.NodeInfo();
  if (!info.ok()) {
    return std::string(info.status().message());
  }
  std::vector<std::string> reasons;
  for (const Value& pool : (*info)["pools"]) {
    std::string name = pool.value("name", "");
    std::string state = pool.value("state", "");
    int ready = pool.value("ready", 0);
    int size = pool.value("size", 0);
    if (state == "degraded") {
      std::string why = pool.value("start_failure", "");
      reasons.push_back(absl::StrCat("pool ", name, " degraded: ",
                                     why.substr(0, why.find('\n'))));
    } else if (ready < size) {
      reasons.push_back(absl::StrCat("pool ", name, " ", ready, " of ", size,
                                     " workers ready"));
    }
  }
  return absl::StrJoin(reasons, "; ");
}

int RunHealth(const PoolFlags& target, bool ready) {
  absl::StatusOr<std::unique_ptr<Client>> client = ConnectClient(target);
  if (!client.ok()) {
    PrintError(client.status());
    return kExitPoolFailed;
  }
  absl::StatusOr<bool> serving = (*client)->Serving();
  if (!serving.ok()) {
    PrintError(serving.status());
    return kExitUnhealthy;
  }
  // gRPC health says whether the node takes calls at all (it does until
  // it drains); ready also needs every pool's workers, as /readyz does.
  std::string why_not = *serving ? PoolsNotReady(**client) : "draining";
  if (ready && !why_not.empty()) {
    std::printf("not ready: %s\n", why_not.c_str());
    return kExitUnhealthy;
  }
  std::printf("%s\n", why_not.empty()
                          ? "ready"
                          : ("alive (not ready: " + why_not + ")").c_str());
  return kExitOk;
}

int RunNodeInfo(const PoolFlags& target, const std::string& format) {
  absl::StatusOr<std::unique_ptr<Client>> client = ConnectClient(target);
  if (!client.ok()) {
    PrintError(client.status());
    return kExitPoolFailed;
  }
  absl::StatusOr<Value> info = (*client)->NodeInfo();
  if (!info.ok()) {
    PrintError(info.status());
    return kExitCallFailed;
  }
  std::string output = ResolveOutput(format);
  if (output == "json") {
    std::printf("%s\n", ToJson(*info, 2).c_str());
    return kExitOk;
  }
  Value summary = *info;
  summary.erase("pools");
  PrintTable(summary);
  std::printf("\n");
  PrintTable((*info)["pools"]);
  return kExitOk;
}

}  // namespace snakepit::cli

namespace snakepit::cli {

int RunSession(const PoolFlags& target, const SessionFlags& flags) {
  absl::StatusOr<std::unique_ptr<Client>> client = ConnectClient(target);
  if (!client.ok()) {
    PrintError(client.status());
    return kExitPoolFailed;
  }
  std::string output = ResolveOutput(flags.output);
  absl::Status status;
  if (flags.action == "create" || flags.action == "show") {
    absl::StatusOr<Value> session =
        flags.action == "create"
            ? (*client)->CreateSession(flags.id, flags.ttl, flags.strict)
            : (*client)->GetSession(flags.id);
    status = session.status();
    if (session.ok()) {
      PrintValue(*session, output, false);
    }
  } else if (flags.action == "list") {
    absl::StatusOr<std::vector<std::string>> ids = (*client)->ListSessions();
    status = ids.status();
    if (ids.ok()) {
      if (output == "json") {
        std::printf("%s\n", ToJson(Value(*ids), 2).c_str());
      } else {
        for (const std::string& id : *ids) {
          std::printf("%s\n", id.c_str());
        }
      }
    }
  } else if (flags.action == "drop") {
    absl::StatusOr<bool> deleted = (*client)->DeleteSession(flags.id);
    status = deleted.status();
    if (deleted.ok()) {
      std::printf("%s\n", *deleted ? "deleted" : "no such session");
    }
  } else if (flags.action == "export") {
    absl::StatusOr<size_t> bytes = (*client)->ExportSessions(std::cout);
    status = bytes.status();
  } else if (flags.action == "import") {
    absl::StatusOr<Value> counts = (*client)->ImportSessions(std::cin);
    status = counts.status();
    if (counts.ok()) {
      std::fprintf(stderr, "%s\n", ToJson(*counts).c_str());
    }
  }
  if (!status.ok()) {
    PrintError(status);
    return kExitCallFailed;
  }
  return kExitOk;
}

}  // namespace snakepit::cli
