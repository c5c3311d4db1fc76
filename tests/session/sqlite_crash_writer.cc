// A child for sqlite_store_test's crash test: writes to a sqlite session
// store in a loop and prints one line per write the store acknowledged,
// flushed before the next write starts. The test kills it with SIGKILL at
// an arbitrary point and then checks that every printed write survived.
//
//   sqlite_crash_writer DB ROUND ITERATIONS
//
// Lines: "create <id>", "update <version>", "program <id>".

#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

#include "snakepit/base/value.h"
#include "snakepit/session/sqlite_store.h"

namespace snakepit {
namespace {

// Bounds the loop even if nobody kills it.
constexpr absl::Duration kMaxRun = absl::Seconds(60);

// The program stored under session `id`; the test rebuilds it to compare.
std::string ProgramFor(const std::string& id) {
  std::string bytes;
  while (bytes.size() < 4096) {
    absl::StrAppend(&bytes, id, ";");
  }
  return bytes;
}

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "sqlite_crash_writer: %s\n", status.ToString().c_str());
  return 1;
}

int Run(const std::string& path, int round, int iterations) {
  StoreConfig config;
  config.kind = StoreKind::kSqlite;
  config.path = path;
  absl::StatusOr<std::unique_ptr<SqliteStore>> store =
      SqliteStore::Open(config);
  if (!store.ok()) {
    return Fail(store.status());
  }
  CreateOptions counter;
  counter.id = "counter";
  if (auto created = (*store)->Create(counter); !created.ok()) {
    return Fail(created.status());
  }
  const absl::Time deadline = absl::Now() + kMaxRun;
  for (int i = 0; i < iterations && absl::Now() < deadline; ++i) {
    CreateOptions options;
    options.id = absl::StrCat("r", round, "-", i);
    options.metadata["i"] = absl::StrCat(i);
    if (auto created = (*store)->Create(options); !created.ok()) {
      return Fail(created.status());
    }
    std::printf("create %s\n", options.id.c_str());
    std::fflush(stdout);

    absl::StatusOr<SessionRef> updated =
        (*store)->Update("counter", [&](SessionRecord& record) {
          record.metadata["last"] = options.id;
          return absl::OkStatus();
        });
    if (!updated.ok()) {
      return Fail(updated.status());
    }
    std::printf("update %llu\n",
                static_cast<unsigned long long>((*updated)->version));
    std::fflush(stdout);

    if (i % 10 == 0) {
      auto stored =
          (*store)->StoreProgram(options.id, "p", ProgramFor(options.id));
      if (!stored.ok()) {
        return Fail(stored.status());
      }
      std::printf("program %s\n", options.id.c_str());
      std::fflush(stdout);
    }
  }
  return 0;
}

}  // namespace
}  // namespace snakepit

int main(int argc, char** argv) {
  int round = 0;
  int iterations = 0;
  if (argc != 4 || !absl::SimpleAtoi(argv[2], &round) ||
      !absl::SimpleAtoi(argv[3], &iterations)) {
    std::fprintf(stderr, "usage: sqlite_crash_writer DB ROUND ITERATIONS\n");
    return 2;
  }
  return snakepit::Run(argv[1], round, iterations);
}
