// Sessions: the stores' Get and Update beside the baselines of the issue
// (a std::unordered_map lookup, a bare SQLite INSERT), a Pool call with
// and without a session, and how both grow with the sessions held.
//
//   session_bench store   [--calls N] [--limit S] [--dir DIR]
//   session_bench pool    [--calls N] [--limit S] [--python EXE]
//   session_bench scaling [--sessions 1,10,...] [--store memory,sqlite]
//                         [--calls N] [--limit S] [--python EXE] [--dir DIR]
//
// Prints one JSON object per measurement (bench_util.h): section
// "sessions" for store and pool, "session_scaling" for scaling. The
// sqlite files live in a fresh folder under --dir (default $TMPDIR or
// /tmp), removed at exit.

#include <sqlite3.h>
#include <stdlib.h>

#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

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

// Times `call` within `budget` and prints `row` with the figures.
bool MeasureRow(const Row& row, const Budget& budget,
                const std::function<bool()>& call) {
  std::optional<Stats> stats =
      Measure(row["name"].get<std::string>(), budget, call);
  if (stats) {
    Print(WithStats(row, *stats));
  }
  return stats.has_value();
}

bool MeasureInto(const std::string& name, const Budget& budget,
                 const std::function<bool()>& call) {
  return MeasureRow(SessionRow(name), budget, call);
}

// The folder for the sqlite files: --dir, else $TMPDIR, else /tmp.
std::string TempParent(const Flags& flags) {
  const char* tmp = std::getenv("TMPDIR");
  return flags.Get("dir", tmp && *tmp ? tmp : "/tmp");
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
  TempDir dir(TempParent(flags));
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

namespace {

// Sessions of the scaling run that its Get and Update cells visit, drawn
// at random from those held at each step.
constexpr size_t kScalingSample = 16384;

// Rows of the scaling section; the names are those of bench/summary.py.
constexpr char kScalingGet[] = ", Get of a random session";
constexpr char kScalingUpdate[] = ", Update of a counter in a random session";
constexpr char kScalingRss[] = ", host RSS";
constexpr char kScalingCall[] =
    "Pool call in a session, reading ctx.session (memory store)";

Row ScalingRow(const std::string& name, long sessions) {
  return Row{{"section", "session_scaling"},
             {"name", name},
             {"sessions", sessions}};
}

// An id as NewSessionId makes them, 32 lowercase hex characters, held
// inline so that a sample of ids needs no heap block per id.
using ScalingId = std::array<char, 32>;

// splitmix64's finaliser: a bijection, so distinct inputs stay distinct.
uint64_t Mix(uint64_t x) {
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9;
  x = (x ^ (x >> 27)) * 0x94d049bb133111eb;
  return x ^ (x >> 31);
}

// The id of session `i`: distinct for each i, and in random order, so
// that the stores' indexes fill as they do with random ids.
ScalingId IdOf(uint64_t i) {
  static constexpr char kHex[] = "0123456789abcdef";
  const uint64_t halves[2] = {Mix(i + 1), Mix(~i)};
  ScalingId id;
  for (size_t k = 0; k < id.size(); ++k) {
    id[k] = kHex[(halves[k / 16] >> (60 - 4 * (k % 16))) & 0xf];
  }
  return id;
}

std::string_view View(const ScalingId& id) {
  return std::string_view(id.data(), id.size());
}

// What each session holds, about what an application keeps between
// calls: a 32-byte user name (msgpack str), a 32-byte token (bin) and
// the counter that the Update cell raises.
std::map<std::string, std::string> ScalingVariables() {
  return {{"user", *EncodeValue(Value(std::string(31, 'u')))},
          {"token", *EncodeValue(Bytes(std::string(30, 't')))},
          {"n", *EncodeValue(Value(0))}};
}

// Adds sessions `from` to `to` - 1, the way a caller makes them: Create,
// then one write of `variables`.
bool AddSessions(SessionStore& store, long from, long to,
                 const std::map<std::string, std::string>& variables) {
  for (long i = from; i < to; ++i) {
    CreateOptions options;
    options.id = std::string(View(IdOf(i)));
    options.strict = true;
    absl::StatusOr<CreateResult> made = store.Create(options);
    absl::Status written = made.status();
    if (made.ok()) {
      SessionRecord record = *made->session;
      record.variables = variables;
      written =
          store.CompareAndSwap(options.id, record.version, std::move(record))
              .status();
    }
    if (!written.ok()) {
      std::fprintf(stderr, "bench: session %ld: %s\n", i,
                   DescribeError(written).c_str());
      return false;
    }
  }
  return true;
}

// This process's resident memory, from smaps_rollup: the figure of
// VmRSS, counted from the page tables, so exact at the moment it is read.
long HostRssKb() {
  return ReadMemory(::getpid()).value_or(Memory{}).rss_kb;
}

// One store grown through the counts of --sessions.
struct ScalingRun {
  std::shared_ptr<SessionStore> store;
  // The store's name in the rows: "session store memory", ...
  std::string label;
  // A pool whose session backend is the store; memory store only.
  std::unique_ptr<Pool> pool;
  Budget budget;
  // Host RSS with the store open and the pool warm, before any session.
  long base_rss_kb = 0;
  std::vector<ScalingId> sample;
  std::mt19937_64 random{7};
};

// Prints the host's RSS with `sessions` held, against the base.
void PrintRss(const ScalingRun& run, long sessions) {
  long rss_kb = HostRssKb();
  Row row = ScalingRow(run.label + kScalingRss, sessions);
  row["host_rss_kb"] = rss_kb;
  row["base_rss_kb"] = run.base_rss_kb;
  row["rss_delta_kb"] = rss_kb - run.base_rss_kb;
  row["bytes_per_session"] =
      static_cast<double>(rss_kb - run.base_rss_kb) * 1024 / sessions;
  Print(row);
}

// Get and Update, each call on the next session of a fresh random
// sample of the `sessions` held; then a Pool call in one of them.
bool ScalingCells(ScalingRun& run, long sessions) {
  std::uniform_int_distribution<long> pick(0, sessions - 1);
  for (ScalingId& id : run.sample) {
    id = IdOf(pick(run.random));
  }
  size_t next = 0;
  auto id = [&] { return View(run.sample[next++ % run.sample.size()]); };
  SessionStore& store = *run.store;
  if (!MeasureRow(ScalingRow(run.label + kScalingGet, sessions), run.budget,
                  [&] { return store.Get(id()).ok(); }) ||
      !MeasureRow(ScalingRow(run.label + kScalingUpdate, sessions),
                  run.budget,
                  [&] { return store.Update(id(), Increment).ok(); })) {
    return false;
  }
  if (!run.pool) {
    return true;
  }
  std::string args = *EncodeValue({{"name", "user"}});
  CallOptions options;
  options.session = std::string(View(run.sample[0]));
  return MeasureRow(ScalingRow(kScalingCall, sessions), run.budget, [&] {
    return run.pool->SubmitRaw("bench_session.get", args, options)
        .GetRaw()
        .ok();
  });
}

// Opens a store of `kind` for up to `most` sessions and, for the memory
// store, a pool over it, warmed by a call. The sqlite store syncs at
// checkpoints only (NORMAL): an fsync per commit would swamp how its own
// work grows, and make the 100,000 creates take minutes.
bool OpenScalingRun(StoreKind kind, long most, const std::string& dir,
                    const std::string& python, ScalingRun& run) {
  StoreConfig config;
  config.kind = kind;
  config.path = dir + "/scaling.db";
  config.sqlite_sync = SqliteSync::kNormal;
  config.max_sessions = static_cast<size_t>(most);
  absl::StatusOr<std::unique_ptr<SessionStore>> opened = OpenStore(config);
  if (!opened.ok()) {
    std::fprintf(stderr, "bench: store: %s\n",
                 DescribeError(opened.status()).c_str());
    return false;
  }
  run.store = *std::move(opened);
  run.label = "session store " + std::string(StoreKindName(kind));
  if (kind == StoreKind::kSqlite) {
    run.label += " (synchronous=NORMAL)";
    return true;
  }
  auto pool = StartSessionPool(python, run.store);
  if (!pool.ok()) {
    return false;
  }
  run.pool = *std::move(pool);
  std::string args = *EncodeValue({{"data", Bytes(std::string(100, 'x'))}});
  return run.pool->SubmitRaw("bench_session.echo", args, {}).GetRaw().ok();
}

// Grows one store through `sizes` (ascending), measuring at each.
bool ScaleStore(StoreKind kind, const std::vector<long>& sizes,
                const Flags& flags, const std::string& dir) {
  ScalingRun run;
  run.budget = flags.MakeBudget();
  if (!OpenScalingRun(kind, sizes.back(), dir,
                      flags.Get("python", "/usr/bin/python3"), run)) {
    return false;
  }
  // Allocated and written before the base is read, so that the sample
  // is not counted as the sessions' memory.
  run.sample.assign(kScalingSample, IdOf(0));
  run.base_rss_kb = HostRssKb();

  const std::map<std::string, std::string> variables = ScalingVariables();
  long held = 0;
  for (long sessions : sizes) {
    if (!AddSessions(*run.store, held, sessions, variables)) {
      return false;
    }
    held = sessions;
    PrintRss(run, sessions);
    if (!ScalingCells(run, sessions)) {
      return false;
    }
  }
  return true;
}

// The stores named by --store: "memory", "sqlite" or both, comma-separated.
absl::StatusOr<std::vector<StoreKind>> ScalingStores(const Flags& flags) {
  std::vector<StoreKind> kinds;
  std::istringstream in(flags.Get("store", "memory,sqlite"));
  std::string name;
  while (std::getline(in, name, ',')) {
    absl::StatusOr<StoreKind> kind = ParseStoreKind(name);
    if (!kind.ok()) {
      return kind.status();
    }
    kinds.push_back(*kind);
  }
  return kinds;
}

}  // namespace

// Each store grown from 1 to the most sessions of --sessions: at each
// count, the host's RSS against the empty store, then Get and Update of
// random sessions, then (memory store) a Pool call in a session. One
// store per run of ScaleStore, in the order of --store; the stores run
// one after the other, so the second's RSS base includes whatever heap
// the first left behind (bench/run runs each in its own process).
bool RunScaling(const Flags& flags) {
  std::vector<long> sizes =
      flags.List("sessions", {1, 10, 100, 1000, 10000, 100000});
  std::sort(sizes.begin(), sizes.end());
  sizes.erase(std::unique(sizes.begin(), sizes.end()), sizes.end());
  absl::StatusOr<std::vector<StoreKind>> kinds = ScalingStores(flags);
  if (sizes.empty() || sizes.front() < 1 || !kinds.ok()) {
    std::fprintf(stderr, "bench: scaling: give --sessions of counts >= 1 "
                 "and --store memory, sqlite or both\n");
    return false;
  }
  TempDir dir(TempParent(flags));
  if (dir.path().empty()) {
    std::perror("bench: mkdtemp");
    return false;
  }
  for (StoreKind kind : *kinds) {
    if (!ScaleStore(kind, sizes, flags, dir.path())) {
      return false;
    }
  }
  return true;
}

}  // namespace snakepit::bench

int main(int argc, char** argv) {
  using namespace snakepit::bench;
  const std::map<std::string, bool (*)(const Flags&)> commands = {
      {"store", RunStore}, {"pool", RunPool}, {"scaling", RunScaling}};
  auto command = argc > 1 ? commands.find(argv[1]) : commands.end();
  if (command == commands.end()) {
    std::fprintf(stderr,
                 "usage: session_bench store|pool|scaling [--flag value]\n");
    return 1;
  }
  snakepit::Log().set_level(spdlog::level::warn);
  snakepit::os::IgnoreSigpipe();
  return command->second(Flags(argc, argv, 2)) ? 0 : 1;
}
