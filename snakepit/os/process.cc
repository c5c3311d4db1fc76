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
#include <filesystem>
#include <string_view>
#include <unordered_map>
#include <unordered_set>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "snakepit/base/status.h"
#include "snakepit/os/file.h"

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

namespace {

// Bounds on what one /proc read may return.
constexpr size_t kMaxProcFileBytes = 1 << 20;
constexpr size_t kMaxEnvironBytes = 8 << 20;

std::string ProcPath(pid_t pid, std::string_view file) {
  return absl::StrCat("/proc/", pid, "/", ToAbsl(file));
}

// The value of the "Name:   123 kB" line of a smaps file, in bytes.
std::optional<uint64_t> KilobyteField(std::string_view text,
                                      std::string_view name) {
  size_t at = 0;
  while (at < text.size()) {
    size_t end = text.find('\n', at);
    std::string_view line = text.substr(at, end - at);
    at = end == std::string_view::npos ? text.size() : end + 1;
    if (!absl::StartsWith(ToAbsl(line), ToAbsl(name)) ||
        line.size() <= name.size() || line[name.size()] != ':') {
      continue;
    }
    std::vector<absl::string_view> words = absl::StrSplit(
        ToAbsl(line.substr(name.size() + 1)), ' ', absl::SkipEmpty());
    uint64_t kb = 0;
    if (!words.empty() && absl::SimpleAtoi(words[0], &kb)) {
      return kb * 1024;
    }
    return std::nullopt;
  }
  return std::nullopt;
}

// PF_KTHREAD in the flags field (9) of /proc/<pid>/stat.
constexpr unsigned kPfKthread = 0x00200000;

// Integer fields after the command name; the name may hold spaces and
// parentheses, so the fields start after the last ')'.
std::optional<ProcStat> ParseProcStat(std::string_view text) {
  size_t paren = text.rfind(')');
  if (paren == std::string_view::npos) {
    return std::nullopt;
  }
  std::vector<absl::string_view> fields =
      absl::StrSplit(ToAbsl(text.substr(paren + 1)), ' ', absl::SkipEmpty());
  // fields[0] is field 3 of proc(5), so field N is fields[N - 3].
  ProcStat stat;
  int ppid = 0, pgrp = 0;
  unsigned flags = 0;
  if (fields.size() < 20 || fields[0].size() != 1 ||
      !absl::SimpleAtoi(fields[1], &ppid) ||
      !absl::SimpleAtoi(fields[2], &pgrp) ||
      !absl::SimpleAtoi(fields[6], &flags) ||
      !absl::SimpleAtoi(fields[19], &stat.start_time)) {
    return std::nullopt;
  }
  stat.state = fields[0][0];
  stat.ppid = ppid;
  stat.pgrp = pgrp;
  stat.kernel_thread = (flags & kPfKthread) != 0;
  return stat;
}

// Whether the kernel lists children in /proc/<pid>/task/<tid>/children
// (CONFIG_PROC_CHILDREN). Checked once, on this thread's own entry.
bool KernelListsChildren() {
  static const bool lists = [] {
    std::error_code ec;
    return std::filesystem::exists("/proc/thread-self/children", ec);
  }();
  return lists;
}

// The children of `pid` from its threads' children files; empty when it
// is gone.
std::vector<pid_t> ChildrenFromTaskFiles(pid_t pid) {
  std::vector<pid_t> children;
  std::error_code ec;
  std::filesystem::directory_iterator tasks(ProcPath(pid, "task"), ec);
  if (ec) {
    return children;
  }
  for (const auto& task : tasks) {
    absl::StatusOr<std::string> text =
        ReadFile((task.path() / "children").string(), kMaxProcFileBytes);
    if (!text.ok()) {
      continue;
    }
    for (absl::string_view word :
         absl::StrSplit(*text, ' ', absl::SkipEmpty())) {
      pid_t child = 0;
      if (absl::SimpleAtoi(word, &child)) {
        children.push_back(child);
      }
    }
  }
  return children;
}

// Finds the children of processes during one tree walk: from the
// children files when the kernel has them, else from one pass over every
// process's parent pid.
class ChildFinder {
 public:
  std::vector<pid_t> ChildrenOf(pid_t pid) {
    if (KernelListsChildren()) {
      return ChildrenFromTaskFiles(pid);
    }
    if (!by_parent_.has_value()) {
      by_parent_ = ParentMap();
    }
    auto it = by_parent_->find(pid);
    return it == by_parent_->end() ? std::vector<pid_t>() : it->second;
  }

 private:
  using Map = std::unordered_map<pid_t, std::vector<pid_t>>;

  static Map ParentMap() {
    Map by_parent;
    absl::StatusOr<std::vector<pid_t>> pids = ListProcesses();
    if (!pids.ok()) {
      return by_parent;
    }
    for (pid_t pid : *pids) {
      absl::StatusOr<ProcStat> stat = ReadProcStat(pid);
      if (stat.ok()) {
        by_parent[stat->ppid].push_back(pid);
      }
    }
    return by_parent;
  }

  std::optional<Map> by_parent_;
};

void AddTo(TreeMemory& tree, const ProcessMemory& memory) {
  tree.rss_bytes += memory.rss_bytes;
  tree.pss_bytes += memory.pss_bytes;
  tree.processes += 1;
  tree.pss_estimated += memory.pss_exact ? 0 : 1;
}

}  // namespace

absl::StatusOr<ProcessMemory> ReadProcessMemory(pid_t pid) {
  absl::StatusOr<std::string> rollup =
      ReadFile(ProcPath(pid, "smaps_rollup"), kMaxProcFileBytes);
  if (rollup.ok()) {
    ProcessMemory memory;
    memory.rss_bytes = KilobyteField(*rollup, "Rss").value_or(0);
    memory.pss_bytes = KilobyteField(*rollup, "Pss").value_or(0);
    return memory;
  }

  // Another user's process, or one without memory (a zombie, a kernel
  // thread), whose statm reads as zero: that zero is exact.
  absl::StatusOr<uint64_t> rss = ReadRssBytes(pid);
  if (!rss.ok()) {
    return rss.status();
  }
  return ProcessMemory{*rss, *rss, *rss == 0};
}

absl::StatusOr<TreeMemory> ReadTreeMemory(pid_t pid) {
  absl::StatusOr<ProcessMemory> root = ReadProcessMemory(pid);
  if (!root.ok()) {
    return root.status();
  }
  TreeMemory tree;
  AddTo(tree, *root);

  // Breadth first. `seen` guards against a cycle that pid reuse during
  // the walk could make.
  ChildFinder finder;
  std::vector<std::pair<pid_t, pid_t>> queue;  // (child, its parent)
  for (pid_t child : finder.ChildrenOf(pid)) {
    queue.emplace_back(child, pid);
  }
  std::unordered_set<pid_t> seen = {pid};
  for (size_t next = 0;
       next < queue.size() && tree.processes < kMaxTreeProcesses; ++next) {
    auto [child, parent] = queue[next];
    if (!seen.insert(child).second) {
      continue;
    }
    // The parent check drops a pid that was reused after it was listed.
    absl::StatusOr<ProcStat> stat = ReadProcStat(child);
    absl::StatusOr<ProcessMemory> memory = ReadProcessMemory(child);
    if (!stat.ok() || stat->ppid != parent || !memory.ok()) {
      continue;
    }
    AddTo(tree, *memory);
    for (pid_t grandchild : finder.ChildrenOf(child)) {
      queue.emplace_back(grandchild, child);
    }
  }
  return tree;
}

absl::StatusOr<ProcStat> ReadProcStat(pid_t pid) {
  std::string path = ProcPath(pid, "stat");
  absl::StatusOr<std::string> text = ReadFile(path, kMaxProcFileBytes);
  if (!text.ok()) {
    return text.status();
  }
  std::optional<ProcStat> stat = ParseProcStat(*text);
  if (!stat.has_value()) {
    return absl::InternalError(absl::StrCat("cannot parse ", path));
  }
  return *stat;
}

absl::StatusOr<std::string> ReadBootId() {
  absl::StatusOr<std::string> text =
      ReadFile("/proc/sys/kernel/random/boot_id", 256);
  if (!text.ok()) {
    return text.status();
  }
  return std::string(absl::StripAsciiWhitespace(*text));
}

absl::StatusOr<std::vector<pid_t>> ListProcesses() {
  std::error_code ec;
  std::filesystem::directory_iterator entries("/proc", ec);
  if (ec) {
    return ErrnoToStatus(ec.value(), "list /proc");
  }
  std::vector<pid_t> pids;
  for (const auto& entry : entries) {
    pid_t pid = 0;
    if (absl::SimpleAtoi(entry.path().filename().string(), &pid) && pid > 0) {
      pids.push_back(pid);
    }
  }
  return pids;
}

absl::StatusOr<std::string> ReadEnviron(pid_t pid) {
  return ReadFile(ProcPath(pid, "environ"), kMaxEnvironBytes);
}

absl::StatusOr<UniqueFd> OpenPidfd(pid_t pid) {
  int fd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  if (fd < 0) {
    return ErrnoToStatus(errno == ESRCH ? ENOENT : errno,
                         absl::StrCat("pidfd_open ", pid));
  }
  ::fcntl(fd, F_SETFD, FD_CLOEXEC);
  return UniqueFd(fd);
}

absl::Status SignalPidfd(int pidfd, int signal) {
  if (::syscall(SYS_pidfd_send_signal, pidfd, signal, nullptr, 0) != 0) {
    return ErrnoToStatus(errno == ESRCH ? ENOENT : errno, "pidfd_send_signal");
  }
  return absl::OkStatus();
}

void IgnoreSigpipe() { ::signal(SIGPIPE, SIG_IGN); }

}  // namespace snakepit::os
