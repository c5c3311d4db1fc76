// What the sqlite store adds to the shared contract: it survives restarts
// and kill -9, keeps its file to itself, and refuses files it cannot read.

#include "snakepit/session/sqlite_store.h"

#include <poll.h>
#include <signal.h>
#include <sqlite3.h>

#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"

#include "snakepit/base/status.h"
#include "snakepit/os/fd.h"
#include "snakepit/os/process.h"
#include "snakepit/session/errors.h"
#include "snakepit/session/open_store.h"
#include "snakepit/session/testing/store_test_util.h"

namespace snakepit {
namespace {

using testing::FakeClock;
using testing::ScopedTempDir;

std::unique_ptr<SqliteStore> OpenAt(const std::string& path,
                                    StoreConfig config = {}) {
  config.kind = StoreKind::kSqlite;
  config.path = path;
  absl::StatusOr<std::unique_ptr<SqliteStore>> store =
      SqliteStore::Open(config);
  EXPECT_TRUE(store.ok()) << store.status();
  return store.ok() ? *std::move(store) : nullptr;
}

CreateOptions Named(const std::string& id) {
  CreateOptions options;
  options.id = id;
  return options;
}

std::vector<SessionRef> ScanAll(SessionStore& store) {
  PageRequest all;
  all.limit = kMaxPageLimit;
  absl::StatusOr<RecordPage> page = store.Scan(all);
  EXPECT_TRUE(page.ok()) << page.status();
  return page.ok() ? page->sessions : std::vector<SessionRef>();
}

TEST(SqliteStoreTest, ReopenedStoreHoldsEveryRecordExactly) {
  ScopedTempDir dir;
  const std::string path = dir.path() + "/s.db";
  FakeClock clock;
  StoreConfig config;
  config.clock = clock.AsFunction();
  std::vector<SessionRef> before;
  {
    auto store = OpenAt(path, config);
    CreateOptions options = Named("s1");
    options.metadata = {{"k", "v"}};
    options.owner = "me";
    ASSERT_TRUE(store->Create(options).ok());
    ASSERT_TRUE(store
                    ->Update("s1",
                             [](SessionRecord& s) {
                               s.variables["x"] =
                                   std::string("\x92\x01\x02", 3);
                               return absl::OkStatus();
                             })
                    .ok());
    ASSERT_TRUE(store->StoreProgram("s1", "p", std::string(5000, 'z')).ok());
    ASSERT_TRUE(store->Create(Named("s2")).ok());
    clock.Advance(absl::Seconds(30));
    ASSERT_TRUE(store->Get("s2").ok());  // a refresh, written at close
    before = ScanAll(*store);
  }
  auto reopened = OpenAt(path, config);
  EXPECT_EQ(*reopened->Count(), 2u);
  std::vector<SessionRef> after = ScanAll(*reopened);
  ASSERT_EQ(after.size(), 2u);
  EXPECT_EQ(*after[0], *before[0]);
  EXPECT_EQ(*after[1], *before[1]);
  EXPECT_EQ(after[1]->last_used, clock.Now());
  EXPECT_TRUE(reopened->CheckIntegrity().ok());
}

TEST(SqliteStoreTest, SecondOpenOfTheSameFileFails) {
  ScopedTempDir dir;
  const std::string path = dir.path() + "/s.db";
  auto first = OpenAt(path);
  StoreConfig config;
  config.path = path;
  absl::StatusOr<std::unique_ptr<SqliteStore>> second =
      SqliteStore::Open(config);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(ReasonOf(second.status()), reason::kSessionStoreError);
  EXPECT_NE(std::string(second.status().message()).find("in use"),
            std::string::npos)
      << second.status();
  first.reset();
  EXPECT_NE(OpenAt(path), nullptr);
}

TEST(SqliteStoreTest, NewerSchemaIsRefused) {
  ScopedTempDir dir;
  const std::string path = dir.path() + "/s.db";
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  ASSERT_EQ(
      sqlite3_exec(db, "PRAGMA user_version = 2", nullptr, nullptr, nullptr),
      SQLITE_OK);
  sqlite3_close(db);
  StoreConfig config;
  config.path = path;
  absl::StatusOr<std::unique_ptr<SqliteStore>> store =
      SqliteStore::Open(config);
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(std::string(store.status().message()).find("schema v2"),
            std::string::npos)
      << store.status();
}

TEST(SqliteStoreTest, FileThatIsNotADatabaseIsDataLoss) {
  ScopedTempDir dir;
  const std::string path = dir.path() + "/s.db";
  std::ofstream(path) << std::string(8192, 'x');
  StoreConfig config;
  config.path = path;
  absl::StatusOr<std::unique_ptr<SqliteStore>> store =
      SqliteStore::Open(config);
  EXPECT_EQ(store.status().code(), absl::StatusCode::kDataLoss)
      << store.status();
  EXPECT_EQ(ReasonOf(store.status()), reason::kSessionStoreError);
}

TEST(SqliteStoreTest, MissingFolderFailsToOpen) {
  StoreConfig config;
  config.path = "/nonexistent-snakepit-dir/s.db";
  absl::StatusOr<std::unique_ptr<SqliteStore>> store =
      SqliteStore::Open(config);
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition)
      << store.status();
  EXPECT_NE(std::string(store.status().message()).find(config.path),
            std::string::npos);
}

TEST(SqliteStoreTest, NormalSyncModeKeepsWrites) {
  ScopedTempDir dir;
  const std::string path = dir.path() + "/s.db";
  StoreConfig config;
  config.sqlite_sync = SqliteSync::kNormal;
  {
    auto store = OpenAt(path, config);
    ASSERT_TRUE(store->Create(Named("s1")).ok());
  }
  EXPECT_TRUE(*OpenAt(path, config)->Exists("s1"));
}

TEST(OpenStoreTest, ChoosesTheStoreByKind) {
  ScopedTempDir dir;
  StoreConfig memory;
  absl::StatusOr<std::unique_ptr<SessionStore>> m = OpenStore(memory);
  ASSERT_TRUE(m.ok());
  EXPECT_EQ((*m)->kind(), StoreKind::kMemory);
  StoreConfig sqlite;
  sqlite.kind = StoreKind::kSqlite;
  EXPECT_EQ(OpenStore(sqlite).status().code(),
            absl::StatusCode::kInvalidArgument);
  sqlite.path = dir.path() + "/s.db";
  absl::StatusOr<std::unique_ptr<SessionStore>> s = OpenStore(sqlite);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ((*s)->kind(), StoreKind::kSqlite);
  EXPECT_EQ(*ParseStoreKind("sqlite"), StoreKind::kSqlite);
  EXPECT_EQ(*ParseStoreKind("memory"), StoreKind::kMemory);
  EXPECT_EQ(ParseStoreKind("etcd").status().code(),
            absl::StatusCode::kInvalidArgument);
}

// --- kill -9 ---------------------------------------------------------------

// What a killed writer had acknowledged (complete lines only).
struct Acknowledged {
  std::vector<std::string> created;
  std::vector<std::string> programs;
  uint64_t counter_version = 0;
  int lines = 0;
};

void Parse(const std::string& output, Acknowledged& acked) {
  std::vector<std::string> lines = absl::StrSplit(output, '\n');
  lines.pop_back();  // after the last newline: empty or a partial line
  for (const std::string& line : lines) {
    std::vector<std::string> words = absl::StrSplit(line, ' ');
    ASSERT_EQ(words.size(), 2u) << line;
    if (words[0] == "create") {
      acked.created.push_back(words[1]);
    } else if (words[0] == "program") {
      acked.programs.push_back(words[1]);
    } else {
      ASSERT_EQ(words[0], "update") << line;
      uint64_t version = std::stoull(words[1]);
      EXPECT_GT(version, acked.counter_version) << "acks out of order";
      acked.counter_version = version;
    }
    ++acked.lines;
  }
}

// Reads what is in `fd` within `wait`; false at end of file.
bool ReadSomeOutput(int fd, std::string& out, absl::Duration wait) {
  struct pollfd pfd = {fd, POLLIN, 0};
  if (::poll(&pfd, 1, static_cast<int>(absl::ToInt64Milliseconds(wait))) <= 0) {
    return true;
  }
  char buf[4096];
  ssize_t n = os::ReadSome(fd, buf, sizeof(buf));
  if (n > 0) {
    out.append(buf, n);
  }
  return n != 0;
}

// Starts the writer, SIGKILLs it once it has acknowledged `kill_after`
// lines, and returns everything it printed.
std::string RunWriterAndKill(const std::string& path, int round,
                             int kill_after) {
  os::UniqueFd read_end;
  os::UniqueFd write_end;
  EXPECT_TRUE(os::MakePipe(&read_end, &write_end).ok());
  os::SpawnRequest request;
  request.argv = {SNAKEPIT_CRASH_WRITER, path, absl::StrCat(round), "1000000"};
  request.env = {"PATH=/usr/bin:/bin"};
  request.fds = {{write_end.get(), 1}};
  absl::StatusOr<os::SpawnedProcess> child = os::Spawn(request);
  EXPECT_TRUE(child.ok()) << child.status();
  if (!child.ok()) {
    return "";
  }
  write_end.Reset();  // the child's death then reads as end of file

  std::string output;
  const absl::Time give_up = absl::Now() + absl::Seconds(60);
  while (std::count(output.begin(), output.end(), '\n') < kill_after &&
         absl::Now() < give_up &&
         ReadSomeOutput(read_end.get(), output, absl::Milliseconds(100))) {
  }
  ::kill(child->pid, SIGKILL);
  const absl::Time drained = absl::Now() + absl::Seconds(10);
  while (absl::Now() < drained &&
         ReadSomeOutput(read_end.get(), output, absl::Milliseconds(100))) {
  }
  EXPECT_TRUE(os::AwaitExit(child->pidfd.get(), absl::Seconds(10)));
  absl::StatusOr<std::optional<os::ExitInfo>> exit =
      os::TryReap(child->pidfd.get());
  EXPECT_TRUE(exit.ok() && exit->has_value() && (*exit)->signalled &&
              (*exit)->code == SIGKILL)
      << "the writer ended before it was killed; see its stderr above";
  return output;
}

std::string ProgramFor(const std::string& id) {
  std::string bytes;
  while (bytes.size() < 4096) {
    absl::StrAppend(&bytes, id, ";");
  }
  return bytes;
}

TEST(SqliteStoreTest, EveryAcknowledgedWriteSurvivesKillNine) {
  ScopedTempDir dir;
  const std::string path = dir.path() + "/crash.db";
  Acknowledged acked;
  const int kill_points[] = {150, 400, 900};
  for (int round = 0; round < 3; ++round) {
    std::string output = RunWriterAndKill(path, round, kill_points[round]);
    Acknowledged this_round;
    Parse(output, this_round);
    ASSERT_GE(this_round.lines, kill_points[round]);
    acked.created.insert(acked.created.end(), this_round.created.begin(),
                         this_round.created.end());
    acked.programs.insert(acked.programs.end(), this_round.programs.begin(),
                          this_round.programs.end());
    acked.counter_version = this_round.counter_version;

    auto store = OpenAt(path);
    ASSERT_NE(store, nullptr);
    absl::Status integrity = store->CheckIntegrity();
    ASSERT_TRUE(integrity.ok()) << integrity;
    for (const std::string& id : acked.created) {
      absl::StatusOr<SessionRef> s = store->Get(id);
      ASSERT_TRUE(s.ok()) << "acknowledged create of " << id << " lost";
      EXPECT_EQ((*s)->metadata.at("i"), id.substr(id.find('-') + 1));
    }
    for (const std::string& id : acked.programs) {
      absl::StatusOr<std::string> p = store->GetProgram(id, "p");
      ASSERT_TRUE(p.ok()) << "acknowledged program of " << id << " lost";
      EXPECT_EQ(*p, ProgramFor(id));
    }
    absl::StatusOr<SessionRef> counter = store->Get("counter");
    ASSERT_TRUE(counter.ok());
    EXPECT_GE((*counter)->version, acked.counter_version);
    RecordProperty(absl::StrCat("round", round, "_acked_lines"),
                   this_round.lines);
  }
}

}  // namespace
}  // namespace snakepit
