#include "snakepit/session/testing/store_test_util.h"

#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

#include "snakepit/session/memory_store.h"
#include "snakepit/session/sqlite_store.h"

namespace snakepit::testing {

StoreFactory MemoryStoreFactory() {
  return {"memory", [](StoreConfig config, const std::string&) {
            config.kind = StoreKind::kMemory;
            return absl::StatusOr<std::unique_ptr<SessionStore>>(
                std::make_unique<MemoryStore>(std::move(config)));
          }};
}

StoreFactory SqliteStoreFactory() {
  return {
      "sqlite", [](StoreConfig config, const std::string& dir) {
        config.kind = StoreKind::kSqlite;
        config.path = dir + "/sessions.db";
        absl::StatusOr<std::unique_ptr<SqliteStore>> store =
            SqliteStore::Open(std::move(config));
        if (!store.ok()) {
          return absl::StatusOr<std::unique_ptr<SessionStore>>(store.status());
        }
        return absl::StatusOr<std::unique_ptr<SessionStore>>(*std::move(store));
      }};
}

ScopedTempDir::ScopedTempDir() {
  std::string pattern = ::testing::TempDir() + "snakepit_session_XXXXXX";
  char* made = mkdtemp(pattern.data());
  EXPECT_NE(made, nullptr) << "mkdtemp " << pattern;
  path_ = pattern;
}

ScopedTempDir::~ScopedTempDir() {
  std::error_code ignored;
  std::filesystem::remove_all(path_, ignored);
}

std::string ScopedTempDir::NewSubdir() {
  std::string dir = absl::StrCat(path_, "/", subdirs_++);
  std::filesystem::create_directory(dir);
  return dir;
}

size_t DeleteLog::Count(DeleteCause cause) const {
  std::lock_guard<std::mutex> lock(mu_);
  size_t n = 0;
  for (const auto& [id, c] : events_) {
    n += c == cause;
  }
  return n;
}

bool WaitFor(const std::function<bool()>& condition, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!condition()) {
    if (absl::Now() > deadline) {
      return condition();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

int64_t ResidentBytes() {
  std::ifstream statm("/proc/self/statm");
  int64_t size_pages = 0;
  int64_t resident_pages = 0;
  statm >> size_pages >> resident_pages;
  return resident_pages * sysconf(_SC_PAGESIZE);
}

}  // namespace snakepit::testing
