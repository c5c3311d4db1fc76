#include "snakepit/os/process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <string.h>
#include <sys/pidfd.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "snakepit/base/status.h"

namespace snakepit::os {
namespace {

std::vector<char*> CStrings(const std::vector<std::string>& strings) {
  std::vector<char*> out;
  out.reserve(strings.size() + 1);
  for (const std::string& s : strings) {
    out.push_back(const_cast<char*>(s.c_str()));
  }
  out.push_back(nullptr);
  return out;
}

absl::Status ConfigureAttributes(posix_spawnattr_t& attr,
                                 const SpawnRequest& request) {
  short flags = POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF;
  if (request.new_process_group) {
    flags |= POSIX_SPAWN_SETPGROUP;
    posix_spawnattr_setpgroup(&attr, 0);
  }
  // The child starts with no blocked signals and default dispositions,
  // whatever the host did to its own (it ignores SIGPIPE, for one).
  sigset_t none;
  sigemptyset(&none);
  posix_spawnattr_setsigmask(&attr, &none);
  sigset_t all;
  sigfillset(&all);
  posix_spawnattr_setsigdefault(&attr, &all);
  int err = posix_spawnattr_setflags(&attr, flags);
  return err == 0 ? absl::OkStatus() : ErrnoToStatus(err, "spawn flags");
}

}  // namespace

absl::StatusOr<SpawnedProcess> Spawn(const SpawnRequest& request) {
  if (request.argv.empty()) {
    return absl::InvalidArgumentError("spawn needs a program");
  }
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  absl::Cleanup destroy_actions = [&] {
    posix_spawn_file_actions_destroy(&actions);
  };
  bool stdin_mapped = false;
  for (const auto& [from, to] : request.fds) {
    // dup2 onto a different number clears close-on-exec on the copy; the
    // callers guarantee from != to (see DupAtLeast).
    posix_spawn_file_actions_adddup2(&actions, from, to);
    stdin_mapped = stdin_mapped || to == 0;
  }
  if (!stdin_mapped) {
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  }

  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  absl::Cleanup destroy_attr = [&] { posix_spawnattr_destroy(&attr); };
  if (absl::Status s = ConfigureAttributes(attr, request); !s.ok()) {
    return s;
  }

  std::vector<char*> argv = CStrings(request.argv);
  std::vector<char*> envp = CStrings(request.env);
  pid_t pid = -1;
  int err = posix_spawnp(&pid, argv[0], &actions, &attr, argv.data(),
                         envp.data());
  if (err != 0) {
    return ErrnoToStatus(err, absl::StrCat("start ", request.argv[0]));
  }

  absl::StatusOr<UniqueFd> pidfd = OpenPidfd(pid);
  if (!pidfd.ok()) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
    return pidfd.status();
  }
  return SpawnedProcess{pid, std::move(*pidfd)};
}

absl::StatusOr<UniqueFd> OpenPidfd(pid_t pid) {
  int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  if (pidfd < 0) {
    return ErrnoToStatus(errno, absl::StrCat("pidfd_open ", pid));
  }
  ::fcntl(pidfd, F_SETFD, FD_CLOEXEC);
  return UniqueFd(pidfd);
}

std::string ExitInfo::Describe() const {
  if (!signalled) {
    return absl::StrCat("exited with status ", code);
  }
  const char* abbrev = sigabbrev_np(code);
  return absl::StrCat("killed by signal ", code, " (SIG",
                      abbrev ? abbrev : "?", ")");
}

absl::StatusOr<std::optional<ExitInfo>> TryReap(int pidfd) {
  siginfo_t info = {};
  while (true) {
    int rc = ::waitid(static_cast<idtype_t>(P_PIDFD), pidfd, &info,
                      WEXITED | WNOHANG);
    if (rc == 0) {
      break;
    }
    if (errno != EINTR) {
      return ErrnoToStatus(errno, "waitid");
    }
  }
  if (info.si_pid == 0) {
    return std::nullopt;
  }
  ExitInfo exit;
  exit.signalled = info.si_code == CLD_KILLED || info.si_code == CLD_DUMPED;
  exit.code = info.si_status;
  return exit;
}

bool AwaitExit(int pidfd, absl::Duration timeout) {
  absl::Time deadline = absl::Now() + timeout;
  while (true) {
    absl::Duration left = deadline - absl::Now();
    int ms = std::max<int64_t>(0, absl::ToInt64Milliseconds(left));
    struct pollfd pfd = {pidfd, POLLIN, 0};
    int n = ::poll(&pfd, 1, ms);
    if (n > 0) {
      return true;
    }
    if (n == 0 || errno != EINTR) {
      return false;
    }
  }
}

void SignalGroup(pid_t pgid, int signal) {
  if (pgid > 0) {
    ::kill(-pgid, signal);
  }
}

absl::StatusOr<uint64_t> ReadRssBytes(pid_t pid) {
  std::string path = absl::StrCat("/proc/", pid, "/statm");
  FILE* f = std::fopen(path.c_str(), "re");
  if (f == nullptr) {
    return ErrnoToStatus(errno, path);
  }
  unsigned long long size = 0, resident = 0;
  int n = std::fscanf(f, "%llu %llu", &size, &resident);
  std::fclose(f);
  if (n != 2) {
    return absl::InternalError(absl::StrCat("cannot parse ", path));
  }
  return resident * static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
}

void IgnoreSigpipe() { ::signal(SIGPIPE, SIG_IGN); }

}  // namespace snakepit::os
