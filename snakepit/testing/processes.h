// Test helpers for tests that start real processes.

#ifndef SNAKEPIT_TESTING_PROCESSES_H_
#define SNAKEPIT_TESTING_PROCESSES_H_

#include <sys/types.h>

#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace snakepit::testing {

// Reads one line (without its newline) from `fd`, blocking or not.
// DEADLINE_EXCEEDED at `deadline`, OUT_OF_RANGE at end of file. Reads a
// byte at a time, so nothing after the line is consumed.
absl::StatusOr<std::string> ReadLine(int fd, absl::Time deadline);

// Whether `pid` has exited: it is gone from /proc or is a zombie.
bool HasExited(pid_t pid);

// Waits up to `timeout` for HasExited(pid).
bool AwaitExited(pid_t pid, absl::Duration timeout);

// A fresh directory under /tmp, mode 0700, removed with its contents on
// destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace snakepit::testing

#endif  // SNAKEPIT_TESTING_PROCESSES_H_
