// Child processes: spawning without fork in a threaded host, waiting on
// them through pidfds, and signalling their process groups.

#ifndef SNAKEPIT_OS_PROCESS_H_
#define SNAKEPIT_OS_PROCESS_H_

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
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

// Memory of one process, in bytes.
struct ProcessMemory {
  uint64_t rss_bytes = 0;
  // Proportional set size: each shared page divided among its sharers.
  uint64_t pss_bytes = 0;
  // False when smaps_rollup was unreadable and pss_bytes is the RSS, an
  // upper bound.
  bool pss_exact = true;
};

// Reads /proc/<pid>/smaps_rollup, or /proc/<pid>/statm when that is
// unreadable. A zombie reads as zero. NOT_FOUND when the process is gone.
absl::StatusOr<ProcessMemory> ReadProcessMemory(pid_t pid);

// Memory of a process and all its descendants, in bytes.
struct TreeMemory {
  uint64_t rss_bytes = 0;
  uint64_t pss_bytes = 0;
  int processes = 0;
  // Processes whose PSS counts as their RSS (see ProcessMemory).
  int pss_estimated = 0;
};

// Sums ReadProcessMemory over `pid` and its descendants, found through
// /proc/<pid>/task/*/children, or through every process's parent pid when
// the kernel lacks those files. Descendants that exit during the walk are
// skipped, and a process whose parent exited has left the tree. At most
// kMaxTreeProcesses are read. NOT_FOUND only when `pid` itself is gone.
absl::StatusOr<TreeMemory> ReadTreeMemory(pid_t pid);
inline constexpr int kMaxTreeProcesses = 4096;

// Facts about a process from /proc/<pid>/stat.
struct ProcStat {
  char state = '?';  // 'R', 'S', ... 'Z' once exited and not yet reaped
  pid_t ppid = 0;
  pid_t pgrp = 0;
  bool kernel_thread = false;
  // Clock ticks from boot to the start of the process (field 22). With
  // the boot id, it tells a process from a later one that reuses its pid.
  uint64_t start_time = 0;
};

// NOT_FOUND when the process is gone.
absl::StatusOr<ProcStat> ReadProcStat(pid_t pid);

// The id of this boot (/proc/sys/kernel/random/boot_id), no newline.
absl::StatusOr<std::string> ReadBootId();

// The ids of every process in /proc, in no particular order.
absl::StatusOr<std::vector<pid_t>> ListProcesses();

// The environment `pid` started with, as in /proc/<pid>/environ:
// "NAME=value" entries, each followed by a NUL. Empty for a zombie, a
// kernel thread, and for a moment while a process is in execve;
// PERMISSION_DENIED for another user's process.
absl::StatusOr<std::string> ReadEnviron(pid_t pid);

// A pidfd for `pid`, close-on-exec; `pid` need not be a child of this
// process. It names the process it was opened for even once that pid is
// reused, so a check made after opening it and a signal sent through it
// concern one process; the caller must know the pid was not reused
// before it was opened (its own child, or a zombie held by a cooperating
// parent, or a check after). NOT_FOUND when gone.
absl::StatusOr<UniqueFd> OpenPidfd(pid_t pid);

// Sends `signal` to the process behind `pidfd`. NOT_FOUND when it has
// exited.
absl::Status SignalPidfd(int pidfd, int signal);

// Makes the host immune to SIGPIPE, so that writing to a worker that has
// just died is an EPIPE error, never the end of the host. Idempotent.
void IgnoreSigpipe();

}  // namespace snakepit::os

#endif  // SNAKEPIT_OS_PROCESS_H_
