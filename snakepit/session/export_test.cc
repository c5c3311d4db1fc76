#include "snakepit/session/export.h"

#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"

#include "snakepit/base/status.h"
#include "snakepit/session/errors.h"
#include "snakepit/session/memory_store.h"
#include "snakepit/session/sqlite_store.h"
#include "snakepit/session/testing/store_test_util.h"

namespace snakepit {
namespace {

using testing::FakeClock;
using testing::ScopedTempDir;

class ExportTest : public ::testing::Test {
 protected:
  ExportTest() {
    config_.clock = clock_.AsFunction();
    config_.sweep_interval = absl::InfiniteDuration();
  }

  std::unique_ptr<MemoryStore> NewMemoryStore() {
    return std::make_unique<MemoryStore>(config_);
  }

  // Exports `count` sessions s0, s1, ... and returns the file's lines.
  std::vector<std::string> ExportLines(int count) {
    auto store = NewMemoryStore();
    for (int i = 0; i < count; ++i) {
      CreateOptions options;
      options.id = absl::StrCat("s", i);
      EXPECT_TRUE(store->Create(options).ok());
    }
    std::stringstream out;
    EXPECT_TRUE(ExportSessions(*store, out).ok());
    std::vector<std::string> lines = absl::StrSplit(out.str(), '\n');
    lines.pop_back();
    return lines;
  }

  static std::string Join(const std::vector<std::string>& lines) {
    std::string text;
    for (const std::string& line : lines) {
      absl::StrAppend(&text, line, "\n");
    }
    return text;
  }

  absl::StatusOr<ImportResult> Import(const std::string& text,
                                      SessionStore& store,
                                      ImportOptions options = {}) {
    std::istringstream in(text);
    return ImportSessions(in, store, options);
  }

  FakeClock clock_;
  StoreConfig config_;
};

// The format docs/sessions.md shows, byte for byte.
TEST_F(ExportTest, WritesTheDocumentedFormat) {
  auto store = NewMemoryStore();
  CreateOptions options;
  options.id = "s1";
  options.metadata = {{"user", "ada"}};
  options.ttl = absl::Seconds(90);
  ASSERT_TRUE(store->Create(options).ok());
  ASSERT_TRUE(store->StoreProgram("s1", "p", "hi").ok());
  ASSERT_TRUE(store
                  ->Update("s1",
                           [](SessionRecord& s) {
                             s.variables["x"] = std::string("\x2a", 1);
                             return absl::OkStatus();
                           })
                  .ok());
  std::stringstream out;
  ASSERT_EQ(*ExportSessions(*store, out), 1u);
  const int64_t t = absl::ToUnixMicros(clock_.Now());
  EXPECT_EQ(
      out.str(),
      absl::StrCat(R"({"format":"snakepit-sessions","version":1})", "\n",
                   R"({"created_us":)", t, R"(,"id":"s1","last_used_us":)", t,
                   R"(,"metadata":{"user":"ada"},"owner":"",)",
                   R"("programs":{"p":{"$bytes":"aGk="}},"ttl_us":90000000,)",
                   R"("variables":{"x":{"$bytes":"Kg=="}},"version":3})", "\n",
                   R"({"count":1,"end":true})", "\n"));
}

TEST_F(ExportTest, MemoryToSqliteAndBackKeepsEveryField) {
  auto memory = NewMemoryStore();
  for (int i = 0; i < 10; ++i) {
    CreateOptions options;
    options.id = absl::StrCat("s", i);
    options.metadata = {{"i", absl::StrCat(i)}};
    options.owner = "n1";
    ASSERT_TRUE(memory->Create(options).ok());
    ASSERT_TRUE(memory->StoreProgram(options.id, "p", "\xff\x00").ok());
  }
  std::stringstream first;
  ASSERT_TRUE(ExportSessions(*memory, first).ok());

  ScopedTempDir dir;
  StoreConfig sqlite_config = config_;
  sqlite_config.path = dir.path() + "/s.db";
  auto sqlite = SqliteStore::Open(sqlite_config);
  ASSERT_TRUE(sqlite.ok()) << sqlite.status();
  absl::StatusOr<ImportResult> in_sqlite = ImportSessions(first, **sqlite);
  ASSERT_TRUE(in_sqlite.ok()) << in_sqlite.status();
  EXPECT_EQ(in_sqlite->imported, 10u);

  std::stringstream second;
  ASSERT_TRUE(ExportSessions(**sqlite, second).ok());
  EXPECT_EQ(second.str(), first.str());
}

TEST_F(ExportTest, MissingEndLineIsDataLoss) {
  std::vector<std::string> lines = ExportLines(3);
  lines.pop_back();
  auto store = NewMemoryStore();
  absl::StatusOr<ImportResult> r = Import(Join(lines), *store);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(ReasonOf(r.status()), reason::kImportMismatch);
  EXPECT_NE(std::string(r.status().message()).find("truncated"),
            std::string::npos);
}

TEST_F(ExportTest, EndLineCountingOtherwiseIsDataLoss) {
  std::vector<std::string> lines = ExportLines(3);
  lines.erase(lines.begin() + 2);  // drop one record, keep "count":3
  auto store = NewMemoryStore();
  absl::StatusOr<ImportResult> r = Import(Join(lines), *store);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(std::string(r.status().message())
                .find("end line says 3 sessions, the input holds 2"),
            std::string::npos)
      << r.status();
}

TEST_F(ExportTest, MalformedLineIsNamedByNumber) {
  std::vector<std::string> lines = ExportLines(3);
  lines[2] = R"({"id":"s1","version":"one"})";
  auto store = NewMemoryStore();
  absl::StatusOr<ImportResult> r = Import(Join(lines), *store);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ReasonOf(r.status()), reason::kSerializationError);
  EXPECT_NE(std::string(r.status().message()).find("line 3"), std::string::npos)
      << r.status();
}

TEST_F(ExportTest, InputThatIsNoExportIsRejected) {
  auto store = NewMemoryStore();
  EXPECT_EQ(Import("", *store).status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(Import("{\"hello\":1}\n", *store).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Import("not json\n", *store).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(*store->Count(), 0u);
}

TEST_F(ExportTest, ExistingIdsFailTheImportAfterTheRestIsIn) {
  std::string file = Join(ExportLines(4));
  auto store = NewMemoryStore();
  CreateOptions options;
  options.id = "s2";
  ASSERT_TRUE(store->Create(options).ok());
  absl::StatusOr<ImportResult> r = Import(file, *store);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(ReasonOf(r.status()), reason::kImportMismatch);
  EXPECT_NE(std::string(r.status().message())
                .find("imported 3 of 4 sessions; 1 already existed: s2"),
            std::string::npos)
      << r.status();
  EXPECT_EQ(*store->Count(), 4u);

  auto again = NewMemoryStore();
  ASSERT_TRUE(again->Create(options).ok());
  ImportOptions skip;
  skip.on_existing = OnExisting::kSkip;
  absl::StatusOr<ImportResult> skipped = Import(file, *again, skip);
  ASSERT_TRUE(skipped.ok()) << skipped.status();
  EXPECT_EQ(skipped->imported, 3u);
  EXPECT_EQ(skipped->skipped_existing, 1u);
}

TEST_F(ExportTest, SessionsExpiredSinceTheExportAreSkipped) {
  std::string file = Join(ExportLines(2));
  clock_.Advance(absl::Hours(2));  // past the default TTL of 1 h
  auto store = NewMemoryStore();
  absl::StatusOr<ImportResult> r = Import(file, *store);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->read, 2u);
  EXPECT_EQ(r->imported, 0u);
  EXPECT_EQ(r->skipped_expired, 2u);
}

TEST_F(ExportTest, ImportStopsAtTheSessionLimit) {
  std::string file = Join(ExportLines(5));
  config_.max_sessions = 2;
  auto store = NewMemoryStore();
  absl::StatusOr<ImportResult> r = Import(file, *store);
  EXPECT_EQ(ReasonOf(r.status()), reason::kSessionLimit);
  EXPECT_NE(std::string(r.status().message()).find("after 2 sessions"),
            std::string::npos)
      << r.status();
}

}  // namespace
}  // namespace snakepit
