// Child processes: spawning without fork in a threaded host, waiting on
// them through pidfds, and signalling their process groups.

#ifndef SNAKEPIT_OS_PROCESS_H_
#define SNAKEPIT_OS_PROCESS_H_

#include <sys/types.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "snakepit/os/fd.h"

namespace snakepit::os {

struct SpawnRequest {
  // argv[0] is looked up in PATH when it has no slash.
  std::vector<std::string> argv;
  // The whole environment of the child, "NAME=value".
  std::vector<std::string> env;
  // (fd in this process, fd number in the child). Every other fd of this
  // process is close-on-exec and stays behind. stdin becomes /dev/null
  // unless mapped.
  std::vector<std::pair<int, int>> fds;
  // Make the child the leader of a new process group, so that signals to
  // the group reach its children and a terminal's Ctrl-C does not.
  bool new_process_group = true;
};

struct SpawnedProcess {
  pid_t pid = -1;
  UniqueFd pidfd;  // readable once the process has exited
};

// Starts a process with posix_spawn: the host is multi-threaded, and a
// forked child of a threaded process may only make async-signal-safe
// calls before exec, which posix_spawn guarantees.
absl::StatusOr<SpawnedProcess> Spawn(const SpawnRequest& request);

// How a process ended.
struct ExitInfo {
  bool signalled = false;
  int code = 0;  // exit status, or the signal number when signalled

  // "exited with status 1", "killed by signal 9 (SIGKILL)".
  std::string Describe() const;
};

// A pidfd for `pid`, which need not be a child of this process. The
// caller must know that `pid` cannot have been reused (the process, or
// its zombie, is held by a parent that cooperates).
absl::StatusOr<UniqueFd> OpenPidfd(pid_t pid);

// Reaps the process behind `pidfd` if it has exited; nullopt while it
// runs. An error when it was already reaped.
absl::StatusOr<std::optional<ExitInfo>> TryReap(int pidfd);

// Waits up to `timeout` for the process behind `pidfd` to exit.
bool AwaitExit(int pidfd, absl::Duration timeout);

// Sends `signal` to every process in the group led by `pgid`. Errors
// (the group is already empty) are ignored.
void SignalGroup(pid_t pgid, int signal);

// The resident set size of process `pid`, from /proc.
absl::StatusOr<uint64_t> ReadRssBytes(pid_t pid);

// Makes the host immune to SIGPIPE, so that writing to a worker that has
// just died is an EPIPE error, never the end of the host. Idempotent.
void IgnoreSigpipe();

}  // namespace snakepit::os

#endif  // SNAKEPIT_OS_PROCESS_H_
