// Sessions: the stores' Get and Update beside the baselines of the issue
// (a std::unordered_map lookup, a bare SQLite INSERT), and a Pool call
// with and without a session.
//
//   session_bench store [--calls N] [--limit S] [--dir DIR]
//   session_bench pool  [--calls N] [--limit S] [--python EXE]
//
// Prints one JSON object per measurement, section "sessions"
// (bench_util.h). The sqlite files live in a fresh folder under --dir
// (default $TMPDIR or /tmp), removed at exit.

#include <sqlite3.h>
#include <stdlib.h>

#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>

#include "bench/bench_util.h"
#include "snakepit/base/log.h"
#include "snakepit/session/open_store.h"
#include "snakepit/session/pool_backend.h"
#include "snakepit/snakepit.h"

namespace snakepit::bench {
namespace {

// Sessions or map entries held while one of them is read or written, so
// that lookups are not into a one-entry table.
constexpr int kEntries = 1000;

Row SessionRow(const std::string& name) {
  return Row{{"section", "sessions"}, {"name", name}};
}

bool MeasureInto(const std::string& name, const Budget& budget,
                 const std::function<bool()>& call) {
  std::optional<Stats> stats = Measure(name, budget, call);
  if (stats) {
    Print(WithStats(SessionRow(name), *stats));
  }
  return stats.has_value();
}

// A folder of our own for the sqlite files; removed by the destructor.
class TempDir {
 public:
  explicit TempDir(const std::string& parent) {
    std::string pattern = parent + "/snakepit-bench-XXXXXX";
    if (::mkdtemp(pattern.data()) != nullptr) {
      path_ = pattern;
    }
  }
  ~TempDir() {
    std::error_code ignored;
    if (!path_.empty()) {
      std::filesystem::remove_all(path_, ignored);
    }
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// The in-memory baseline: a lookup in a plain hash map.
bool MapBaseline(const Budget& budget) {
  std::unordered_map<std::string, std::string> map;
  for (int i = 0; i < kEntries; ++i) {
    map["session-" + std::to_string(i)] = std::string(100, 'x');
  }
  const std::string key = "session-500";
  // Volatile, so that the compiler keeps the lookups.
  volatile size_t sink = 0;
  return MeasureInto("std::unordered_map lookup (baseline)", budget, [&] {
    auto it = map.find(key);
    sink = sink + (it == map.end() ? 0 : it->second.size());
    return it != map.end();
  });
}

// Runs `sql` on `db`; false (with the error on stderr) when it fails.
bool Exec(sqlite3* db, const char* sql) {
  char* error = nullptr;
  if (sqlite3_exec(db, sql, nullptr, nullptr, &error) != SQLITE_OK) {
    std::fprintf(stderr, "bench: sqlite: %s: %s\n", sql,
                 error ? error : "?");
    sqlite3_free(error);
    return false;
  }
  return true;
}

// One row inserted in its own transaction, with the prepared statement
// reused: the least a durable sqlite write costs.
bool InsertOnce(sqlite3* db, sqlite3_stmt* insert, int64_t* next) {
  if (!Exec(db, "BEGIN")) {
    return false;
  }
  sqlite3_bind_int64(insert, 1, (*next)++);
  bool ok = sqlite3_step(insert) == SQLITE_DONE;
  sqlite3_reset(insert);
  return Exec(db, ok ? "COMMIT" : "ROLLBACK") && ok;
}

// The durable baseline: a bare INSERT, WAL, synchronous=FULL.
bool SqliteBaseline(const Budget& budget, const std::string& dir) {
  sqlite3* db = nullptr;
  std::string path = dir + "/baseline.db";
  bool ok = sqlite3_open(path.c_str(), &db) == SQLITE_OK &&
            Exec(db, "PRAGMA journal_mode=WAL") &&
            Exec(db, "PRAGMA synchronous=FULL") &&
            Exec(db, "CREATE TABLE kv (id INTEGER PRIMARY KEY, v BLOB)");
  sqlite3_stmt* insert = nullptr;
  ok = ok && sqlite3_prepare_v2(db, "INSERT INTO kv VALUES (?, zeroblob(100))",
                                -1, &insert, nullptr) == SQLITE_OK;
  int64_t next = 1;
  ok = ok && MeasureInto("bare SQLite INSERT in a transaction, WAL, "
                         "synchronous=FULL (baseline)",
                         budget, [&] { return InsertOnce(db, insert, &next); });
  sqlite3_finalize(insert);
  sqlite3_close(db);
  return ok;
}

// Adds one to the msgpack int variable "n" (0 when missing).
absl::Status Increment(SessionRecord& record) {
  int64_t n = 0;
  auto found = record.variables.find("n");
  if (found != record.variables.end()) {
    absl::StatusOr<Value> old = DecodeValue(found->second);
    if (!old.ok()) {
      return old.status();
    }
    n = old->get<int64_t>();
  }
  absl::StatusOr<std::string> next = EncodeValue(Value(n + 1));
  if (!next.ok()) {
    return next.status();
  }
  record.variables["n"] = *std::move(next);
  return absl::OkStatus();
}

// Get and Update of one session among kEntries in a store of `kind`.
bool StoreCells(const Budget& budget, StoreKind kind, const std::string& dir) {
  StoreConfig config;
  config.kind = kind;
  config.path = dir + "/sessions.db";
  absl::StatusOr<std::unique_ptr<SessionStore>> store = OpenStore(config);
  if (!store.ok()) {
    std::fprintf(stderr, "bench: store: %s\n",
                 store.status().ToString().c_str());
    return false;
  }
  std::string id;
  for (int i = 0; i < kEntries; ++i) {
    absl::StatusOr<CreateResult> made = (*store)->Create({});
    if (!made.ok()) {
      return false;
    }
    id = made->session->id;
  }
  std::string label = "session store " + std::string(StoreKindName(kind));
  if (kind == StoreKind::kSqlite) {
    label += " (synchronous=FULL)";
  }
  return MeasureInto(label + ", Get", budget,
                     [&] { return (*store)->Get(id).ok(); }) &&
         MeasureInto(label + ", Update of a counter", budget, [&] {
           return (*store)->Update(id, Increment).ok();
         });
}

}  // namespace

bool RunStore(const Flags& flags) {
  Budget budget = flags.MakeBudget();
  const char* tmp = std::getenv("TMPDIR");
  TempDir dir(flags.Get("dir", tmp && *tmp ? tmp : "/tmp"));
  if (dir.path().empty()) {
    std::perror("bench: mkdtemp");
    return false;
  }
  return MapBaseline(budget) &&
         StoreCells(budget, StoreKind::kMemory, dir.path()) &&
         StoreCells(budget, StoreKind::kSqlite, dir.path()) &&
         SqliteBaseline(budget, dir.path());
}

namespace {

absl::StatusOr<std::unique_ptr<Pool>> StartSessionPool(
    const std::string& python, std::shared_ptr<SessionStore> store) {
  PoolOptions options;
  options.name = "bench";
  options.python = python;
  options.modules = {std::string(SNAKEPIT_BENCH_DIR) + "/bench_session.py",
                     std::string(SNAKEPIT_BENCH_DIR) + "/bench_echo.py"};
  options.size = 1;
  options.sessions = MakePoolBackend(std::move(store));
  absl::StatusOr<std::unique_ptr<Pool>> pool = Pool::Start(options);
  if (!pool.ok()) {
    std::fprintf(stderr, "bench: pool: %s\n",
                 DescribeError(pool.status()).c_str());
  }
  return pool;
}

}  // namespace

// The same 100-byte echo, taking a snakepit.Context, called without and
// then in a session of a memory store; and the plain echo of
// bench_echo.py beside them.
bool RunPool(const Flags& flags) {
  std::shared_ptr<SessionStore> store;
  if (auto opened = OpenStore(StoreConfig{}); opened.ok()) {
    store = *std::move(opened);
  }
  absl::StatusOr<CreateResult> session =
      store ? store->Create({}) : absl::InternalError("no store");
  if (!session.ok()) {
    return false;
  }
  auto pool = StartSessionPool(flags.Get("python", "/usr/bin/python3"), store);
  if (!pool.ok()) {
    return false;
  }
  Budget budget = flags.MakeBudget();
  std::string args = *EncodeValue({{"data", Bytes(std::string(100, 'x'))}});
  CallOptions in_session;
  in_session.session = session->session->id;
  // Copies `options`: the callers pass temporaries.
  auto call = [&](const char* function, const CallOptions& options) {
    return [&, function, options] {
      return (*pool)->SubmitRaw(function, args, options).GetRaw().ok();
    };
  };
  return MeasureInto("Pool call, plain echo (bench_echo.echo)", budget,
                     call("bench_echo.echo", {})) &&
         MeasureInto("Pool call, echo taking a Context, no session", budget,
                     call("bench_session.echo", {})) &&
         MeasureInto("Pool call, echo taking a Context, in a session "
                     "(memory store)",
                     budget, call("bench_session.echo", in_session));
}

}  // namespace snakepit::bench

int main(int argc, char** argv) {
  using namespace snakepit::bench;
  const std::map<std::string, bool (*)(const Flags&)> commands = {
      {"store", RunStore}, {"pool", RunPool}};
  auto command = argc > 1 ? commands.find(argv[1]) : commands.end();
  if (command == commands.end()) {
    std::fprintf(stderr, "usage: session_bench store|pool [--flag value]\n");
    return 1;
  }
  snakepit::Log().set_level(spdlog::level::warn);
  snakepit::os::IgnoreSigpipe();
  return command->second(Flags(argc, argv, 2)) ? 0 : 1;
}
