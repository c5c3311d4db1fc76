// Helpers shared by the session store tests: stores on fresh directories,
// a fake clock, a recorder for delete listeners, and bounded waits.

#ifndef SNAKEPIT_SESSION_TESTING_STORE_TEST_UTIL_H_
#define SNAKEPIT_SESSION_TESTING_STORE_TEST_UTIL_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

#include "snakepit/session/store.h"

namespace snakepit::testing {

// How a conformance test opens a store of one kind. `dir` is a fresh,
// empty directory the store may keep files in.
struct StoreFactory {
  std::string name;
  std::function<absl::StatusOr<std::unique_ptr<SessionStore>>(
      StoreConfig config, const std::string& dir)>
      open;
};

// gtest prints a factory by its name.
inline void PrintTo(const StoreFactory& factory, std::ostream* os) {
  *os << factory.name;
}

StoreFactory MemoryStoreFactory();
StoreFactory SqliteStoreFactory();

// A directory under the test temp folder, removed with everything in it
// when this object goes.
class ScopedTempDir {
 public:
  ScopedTempDir();
  ~ScopedTempDir();
  ScopedTempDir(const ScopedTempDir&) = delete;
  ScopedTempDir& operator=(const ScopedTempDir&) = delete;

  const std::string& path() const { return path_; }
  // A new empty subdirectory.
  std::string NewSubdir();

 private:
  std::string path_;
  int subdirs_ = 0;
};

// A wall clock that moves only when told. Thread-safe.
class FakeClock {
 public:
  FakeClock() : now_us_(absl::ToUnixMicros(absl::Now())) {}
  absl::Time Now() const { return absl::FromUnixMicros(now_us_.load()); }
  void Advance(absl::Duration d) { now_us_ += absl::ToInt64Microseconds(d); }
  std::function<absl::Time()> AsFunction() {
    return [this] { return Now(); };
  }

 private:
  std::atomic<int64_t> now_us_;
};

// Records delete-listener calls. Thread-safe.
class DeleteLog {
 public:
  DeleteListener Listener() {
    return [this](const std::string& id, DeleteCause cause) {
      std::lock_guard<std::mutex> lock(mu_);
      events_.emplace_back(id, cause);
    };
  }
  std::vector<std::pair<std::string, DeleteCause>> Events() const {
    std::lock_guard<std::mutex> lock(mu_);
    return events_;
  }
  size_t Count(DeleteCause cause) const;

 private:
  mutable std::mutex mu_;
  std::vector<std::pair<std::string, DeleteCause>> events_;
};

// Polls `condition` every few milliseconds until it holds or `timeout`
// passes; returns its last value.
bool WaitFor(const std::function<bool()>& condition, absl::Duration timeout);

// Resident set size of this process, in bytes.
int64_t ResidentBytes();

}  // namespace snakepit::testing

#endif  // SNAKEPIT_SESSION_TESTING_STORE_TEST_UTIL_H_
