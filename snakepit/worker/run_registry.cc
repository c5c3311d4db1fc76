#include "snakepit/worker/run_registry.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"

#include "snakepit/base/log.h"
#include "snakepit/base/status.h"
#include "snakepit/os/file.h"
#include "snakepit/os/process.h"

namespace snakepit::worker {
namespace {

namespace fs = std::filesystem;

constexpr std::string_view kMagic = "snakepit-run 1";
constexpr std::string_view kRunSuffix = ".run";
constexpr std::string_view kTempSuffix = ".run.tmp";
constexpr size_t kMaxRunFileBytes = 1 << 20;
constexpr size_t kMaxRunFiles = 10000;

// A reap repeats its scan while it still finds something to kill: a
// process may fork between the scan and the signal. Bounded in passes
// and in the time spent waiting for exits.
constexpr int kMaxReapPasses = 4;
constexpr absl::Duration kReapWait = absl::Seconds(1);
// How long a scan that met processes in execve waits before the next.
constexpr absl::Duration kExecvePause = absl::Milliseconds(10);

bool IsRunId(std::string_view s) {
  if (s.size() != 32) {
    return false;
  }
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) {
      return false;
    }
  }
  return true;
}

bool IsBootId(std::string_view s) {
  if (s.empty() || s.size() > 64) {
    return false;
  }
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || c == '-')) {
      return false;
    }
  }
  return true;
}

std::string NewRunId() { return os::RandomHexId(); }

// What a run file says; see the format in run_registry.h.
struct RunRecord {
  std::string run_id;
  pid_t host_pid = 0;
  uint64_t host_start_time = 0;
  std::string boot_id;
  std::map<pid_t, uint64_t> workers;  // pid -> start time
};

// "<word> <number> <number> [<word>]" with positive numbers.
bool ParseEntry(std::string_view line, std::string_view word, pid_t* pid,
                uint64_t* start_time, std::string* boot_id = nullptr) {
  std::vector<absl::string_view> parts = absl::StrSplit(ToAbsl(line), ' ');
  size_t want = boot_id ? 4 : 3;
  if (parts.size() != want || parts[0] != ToAbsl(word) ||
      !absl::SimpleAtoi(parts[1], pid) || *pid <= 0 ||
      !absl::SimpleAtoi(parts[2], start_time)) {
    return false;
  }
  if (boot_id) {
    if (!IsBootId(std::string_view(parts[3].data(), parts[3].size()))) {
      return false;
    }
    *boot_id = std::string(parts[3]);
  }
  return true;
}

// Reads a run file. Its three header lines must be whole and name
// `run_id`, else the file tells nothing that can be trusted. Worker lines
// are read up to the first one that is malformed or lacks its newline.
absl::StatusOr<RunRecord> ParseRunRecord(std::string_view text,
                                         const std::string& run_id) {
  std::vector<std::string_view> lines;
  for (size_t at = 0, end; (end = text.find('\n', at)) != text.npos;
       at = end + 1) {
    lines.push_back(text.substr(at, end - at));
  }
  RunRecord record;
  record.run_id = run_id;
  if (lines.size() < 3 || lines[0] != kMagic ||
      lines[1] != absl::StrCat("run ", run_id) ||
      !ParseEntry(lines[2], "host", &record.host_pid, &record.host_start_time,
                  &record.boot_id)) {
    return absl::InvalidArgumentError("no valid header");
  }

  for (size_t i = 3; i < lines.size(); ++i) {
    pid_t pid = 0;
    uint64_t start_time = 0;
    if (!ParseEntry(lines[i], "worker", &pid, &start_time)) {
      break;
    }
    record.workers[pid] = start_time;
  }
  return record;
}

// Opens `path` and takes its lock if its host no longer holds it.
// nullopt when the run is live, or when the file was replaced or
// removed meanwhile (by its host's rewrite or by another reaper).
std::optional<os::UniqueFd> ClaimIfStale(const std::string& path) {
  absl::StatusOr<os::UniqueFd> fd = os::OpenReadOnly(path);
  if (!fd.ok()) {
    return std::nullopt;
  }
  absl::StatusOr<bool> locked = os::TryLockFile(fd->get());
  if (!locked.ok() || !*locked) {
    return std::nullopt;
  }
  // A live host drops the lock on a file only after renaming another
  // over it, so a free lock on a file that still has its name means the
  // host is gone.
  absl::StatusOr<bool> linked = os::IsLinked(fd->get());
  if (!linked.ok() || !*linked) {
    return std::nullopt;
  }
  return std::move(*fd);
}

// A stale run, claimed: its lock is held until the reap is over.
struct StaleRun {
  std::string path;
  os::UniqueFd lock;
  RunRecord record;
  int reaped = 0;
};

// A process that carries the marker of a stale run and passed the
// checks; `pidfd` was opened before the last check.
struct Target {
  pid_t pid = 0;
  pid_t pgrp = 0;
  StaleRun* run = nullptr;
  os::UniqueFd pidfd;
};

// The value of SNAKEPIT_RUN_ID in a /proc environ block, or "".
std::string_view MarkerIn(std::string_view environ) {
  const std::string_view prefix = "SNAKEPIT_RUN_ID=";
  for (absl::string_view entry : absl::StrSplit(ToAbsl(environ), '\0')) {
    if (entry.substr(0, prefix.size()) == ToAbsl(prefix)) {
      entry.remove_prefix(prefix.size());
      return std::string_view(entry.data(), entry.size());
    }
  }
  return "";
}

// Checks one process, by the environment it started with, for a stale
// run's marker. A hit gets a pidfd, and its start time is read again
// after that, so the pidfd is known to name the process that was read.
std::optional<Target> Examine(
    pid_t pid, const os::ProcStat& stat, std::string_view environ,
    const std::unordered_map<std::string, StaleRun*>& runs) {
  auto run = runs.find(std::string(MarkerIn(environ)));
  if (run == runs.end()) {
    return std::nullopt;
  }
  const auto& workers = run->second->record.workers;
  if (auto it = workers.find(pid);
      it != workers.end() && it->second != stat.start_time) {
    return std::nullopt;
  }

  absl::StatusOr<os::UniqueFd> pidfd = os::OpenPidfd(pid);
  if (!pidfd.ok()) {
    return std::nullopt;
  }
  absl::StatusOr<os::ProcStat> again = os::ReadProcStat(pid);
  if (!again.ok() || again->start_time != stat.start_time) {
    return std::nullopt;
  }
  return Target{pid, stat.pgrp, run->second, std::move(*pidfd)};
}

// One scan of every process: the targets, how many live processes each
// process group holds, and how many processes could not be judged yet.
struct Scan {
  std::vector<Target> targets;
  std::unordered_map<pid_t, int> group_sizes;
  // User processes with an empty environment: most are in the middle of
  // execve, and show the new program's environment a moment later.
  int unsettled = 0;
};

Scan ScanProcesses(const std::unordered_map<std::string, StaleRun*>& runs) {
  Scan scan;
  absl::StatusOr<std::vector<pid_t>> pids = os::ListProcesses();
  if (!pids.ok()) {
    return scan;
  }
  const pid_t self = ::getpid();
  for (pid_t pid : *pids) {
    absl::StatusOr<os::ProcStat> stat = os::ReadProcStat(pid);
    if (!stat.ok()) {
      continue;
    }
    // A zombie is past harm, whatever group it is in.
    if (stat->state == 'Z' || stat->kernel_thread) {
      continue;
    }
    scan.group_sizes[stat->pgrp] += 1;
    // Never this process (a host can itself be a worker of a dead run)
    // nor init.
    if (pid == self || pid <= 1) {
      continue;
    }
    absl::StatusOr<std::string> environ = os::ReadEnviron(pid);
    if (!environ.ok()) {
      continue;
    }
    if (environ->empty()) {
      scan.unsettled += 1;
      continue;
    }
    if (std::optional<Target> target = Examine(pid, *stat, *environ, runs)) {
      scan.targets.push_back(std::move(*target));
    }
  }
  return scan;
}

// Whether `leader` leads a group in which every process is a target of
// the same run. Such a group is signalled as a whole, which also catches
// a child forked after the scan.
bool OwnsWholeGroup(const Target& leader, const Scan& scan) {
  if (leader.pgrp != leader.pid) {
    return false;
  }
  int members = 0;
  for (const Target& t : scan.targets) {
    if (t.pgrp == leader.pgrp) {
      if (t.run != leader.run) {
        return false;
      }
      members += 1;
    }
  }
  auto size = scan.group_sizes.find(leader.pgrp);
  return size != scan.group_sizes.end() && size->second == members;
}

// Sends SIGKILL to the targets of one scan and returns the pidfds of
// those signalled.
std::vector<os::UniqueFd> KillTargets(Scan& scan) {
  std::unordered_set<pid_t> group_killed;
  for (Target& t : scan.targets) {
    // The leader is checked alive through its pidfd just before: while
    // it lives (even as a zombie) its pgid cannot name another group.
    if (OwnsWholeGroup(t, scan) && os::SignalPidfd(t.pidfd.get(), 0).ok()) {
      os::SignalGroup(t.pgrp, SIGKILL);
      group_killed.insert(t.pgrp);
    }
  }

  std::vector<os::UniqueFd> signalled;
  for (Target& t : scan.targets) {
    bool by_group = group_killed.count(t.pgrp) > 0;
    if (by_group || os::SignalPidfd(t.pidfd.get(), SIGKILL).ok()) {
      t.run->reaped += 1;
      signalled.push_back(std::move(t.pidfd));
    }
  }
  return signalled;
}

enum class FileKind { kOther, kRun, kTemp };

// "<run id>.run" or "<run id>.run.tmp"; anything else is not ours.
FileKind KindOf(std::string_view name) {
  if (name.size() < 32 || !IsRunId(name.substr(0, 32))) {
    return FileKind::kOther;
  }
  std::string_view suffix = name.substr(32);
  return suffix == kRunSuffix    ? FileKind::kRun
         : suffix == kTempSuffix ? FileKind::kTemp
                                 : FileKind::kOther;
}

// Reads the claimed run file `path`. nullptr, and the file removed, when
// it cannot be parsed: such a file is never acted on.
std::unique_ptr<StaleRun> ReadClaimed(const std::string& path,
                                      const std::string& run_id,
                                      os::UniqueFd lock) {
  absl::StatusOr<std::string> text = os::ReadAll(lock.get(), kMaxRunFileBytes);
  absl::StatusOr<RunRecord> record =
      text.ok() ? ParseRunRecord(*text, run_id)
                : absl::StatusOr<RunRecord>(text.status());
  if (!record.ok()) {
    Log().warn("run file {} is unreadable ({}); removed without reaping", path,
               std::string(record.status().message()));
    std::error_code ec;
    fs::remove(path, ec);
    return nullptr;
  }
  // A free lock is the proof that the host is gone; the record is a
  // second opinion. A copy of a live host's file (its lock not held
  // here) must not make its workers fair game.
  absl::StatusOr<os::ProcStat> host = os::ReadProcStat(record->host_pid);
  absl::StatusOr<std::string> boot = os::ReadBootId();
  if (host.ok() && host->state != 'Z' &&
      host->start_time == record->host_start_time && boot.ok() &&
      *boot == record->boot_id) {
    Log().warn("run file {} names host {}, which still runs; left alone",
               path, record->host_pid);
    return nullptr;
  }
  return std::make_unique<StaleRun>(
      StaleRun{path, std::move(lock), std::move(*record)});
}

// Claims the stale run files in `dir` and removes stale temporary ones
// (the leftovers of a rewrite cut short).
std::vector<std::unique_ptr<StaleRun>> ClaimStaleRuns(const std::string& dir) {
  std::vector<std::unique_ptr<StaleRun>> runs;
  std::error_code ec;
  fs::directory_iterator entries(dir, ec);
  for (size_t seen = 0;
       !ec && entries != fs::directory_iterator() && seen < kMaxRunFiles;
       entries.increment(ec), ++seen) {
    const std::string name = entries->path().filename().string();
    const std::string path = entries->path().string();
    FileKind kind = KindOf(name);
    std::optional<os::UniqueFd> lock =
        kind == FileKind::kOther ? std::nullopt : ClaimIfStale(path);
    if (!lock.has_value()) {
      continue;
    }

    if (kind == FileKind::kTemp) {
      std::error_code remove_ec;
      fs::remove(path, remove_ec);
    } else if (auto run =
                   ReadClaimed(path, name.substr(0, 32), std::move(*lock))) {
      runs.push_back(std::move(run));
    }
  }
  return runs;
}

// Kills the processes of `runs`; adds each run's count to it.
void ReapProcesses(std::vector<std::unique_ptr<StaleRun>>& runs,
                   const std::string& boot_id) {
  // A run of another boot can have left no process behind.
  std::unordered_map<std::string, StaleRun*> by_id;
  for (auto& run : runs) {
    if (run->record.boot_id == boot_id) {
      by_id[run->record.run_id] = run.get();
    }
  }

  const absl::Time deadline = absl::Now() + kReapWait;
  for (int pass = 0; pass < kMaxReapPasses && !by_id.empty(); ++pass) {
    Scan scan = ScanProcesses(by_id);
    std::vector<os::UniqueFd> signalled = KillTargets(scan);
    if (signalled.empty() && scan.unsettled == 0) {
      break;
    }
    if (signalled.empty()) {
      absl::SleepFor(kExecvePause);
    }
    for (const os::UniqueFd& pidfd : signalled) {
      os::AwaitExit(pidfd.get(),
                    std::max(absl::ZeroDuration(), deadline - absl::Now()));
    }
  }
}

// The directory's parent too, for the default one: both are ours to
// create, and /tmp is shared with other users.
absl::Status PrepareDir(const std::string& dir) {
  if (dir == RunRegistry::DefaultDir()) {
    std::string parent = fs::path(dir).parent_path().string();
    if (absl::Status s = os::MakePrivateDir(parent); !s.ok()) {
      return s;
    }
  }
  return os::MakePrivateDir(dir);
}

}  // namespace

RunRegistry::RunRegistry(std::string dir, std::string run_id,
                         std::string boot_id, uint64_t host_start_time)
    : dir_(std::move(dir)),
      run_id_(std::move(run_id)),
      boot_id_(std::move(boot_id)),
      host_start_time_(host_start_time) {}

RunRegistry::~RunRegistry() {
  std::lock_guard<std::mutex> lock(mu_);
  // Removed while still locked, so no reaper can take this run for stale.
  std::error_code ec;
  fs::remove(path(), ec);
  file_.Reset();
}

std::string RunRegistry::DefaultDir() {
  if (const char* xdg = std::getenv("XDG_RUNTIME_DIR"); xdg && *xdg) {
    return absl::StrCat(xdg, "/snakepit/runs");
  }
  return absl::StrCat("/tmp/snakepit-", ::geteuid(), "/runs");
}

std::string RunRegistry::path() const {
  return absl::StrCat(dir_, "/", run_id_, ToAbsl(kRunSuffix));
}

absl::StatusOr<std::shared_ptr<RunRegistry>> RunRegistry::Open(
    std::string dir) {
  if (dir.empty()) {
    dir = DefaultDir();
  }
  if (absl::Status s = PrepareDir(dir); !s.ok()) {
    return s;
  }
  absl::StatusOr<std::string> boot_id = os::ReadBootId();
  absl::StatusOr<os::ProcStat> self = os::ReadProcStat(::getpid());
  if (!boot_id.ok() || !self.ok()) {
    return boot_id.ok() ? self.status() : boot_id.status();
  }

  std::shared_ptr<RunRegistry> registry(
      new RunRegistry(dir, NewRunId(), *boot_id, self->start_time));
  std::lock_guard<std::mutex> lock(registry->mu_);
  if (absl::Status s = registry->RewriteLocked(); !s.ok()) {
    return s;
  }
  return registry;
}

absl::StatusOr<std::shared_ptr<RunRegistry>> RunRegistry::Default() {
  static std::mutex mu;
  static std::shared_ptr<RunRegistry> instance;
  std::lock_guard<std::mutex> lock(mu);
  if (instance) {
    return instance;
  }

  const char* configured = std::getenv(kRunDirVariable);
  std::string dir = configured && *configured ? configured : DefaultDir();
  if (absl::Status s = PrepareDir(dir); !s.ok()) {
    return s;
  }
  // Reaping first is an optimisation, not a duty: a failure leaves the
  // stale runs to the next host.
  if (absl::StatusOr<int> reaped = ReapStale(dir); !reaped.ok()) {
    Log().warn("run registry {}: cannot reap stale runs: {}", dir,
               std::string(reaped.status().message()));
  }
  absl::StatusOr<std::shared_ptr<RunRegistry>> opened = Open(dir);
  if (opened.ok()) {
    instance = *opened;
  }
  return opened;
}

absl::StatusOr<int> RunRegistry::ReapStale(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return absl::NotFoundError(
        absl::StrCat("run registry ", dir, " is not a directory"));
  }
  absl::StatusOr<std::string> boot_id = os::ReadBootId();
  if (!boot_id.ok()) {
    return boot_id.status();
  }

  std::vector<std::unique_ptr<StaleRun>> runs = ClaimStaleRuns(dir);
  ReapProcesses(runs, *boot_id);

  int total = 0;
  for (const auto& run : runs) {
    fs::remove(run->path, ec);
    total += run->reaped;
    const RunRecord& r = run->record;
    if (run->reaped > 0) {
      Log().warn("run {} of host {} is stale: killed {} process(es) it left",
                 r.run_id, r.host_pid, run->reaped);
    } else {
      // A host that ended without removing its file (killed, or a CLI
      // stopped by Ctrl-C) left nothing to reap: not worth a line.
      Log().debug("run {} of host {} is stale; no process left", r.run_id,
                  r.host_pid);
    }
  }
  return total;
}

absl::Status RunRegistry::AddWorker(pid_t pid) {
  absl::StatusOr<os::ProcStat> stat = os::ReadProcStat(pid);
  if (!stat.ok()) {
    return stat.status();
  }
  std::lock_guard<std::mutex> lock(mu_);
  workers_[pid] = stat->start_time;
  return RewriteLocked();
}

void RunRegistry::RemoveWorker(pid_t pid) {
  std::lock_guard<std::mutex> lock(mu_);
  if (workers_.erase(pid) == 0) {
    return;
  }
  if (absl::Status s = RewriteLocked(); !s.ok()) {
    Log().warn("run {}: cannot drop worker {} from {}: {}", run_id_, pid,
               path(), std::string(s.message()));
  }
}

std::string RunRegistry::RenderLocked() const {
  std::string text =
      absl::StrCat(ToAbsl(kMagic), "\nrun ", run_id_, "\nhost ", ::getpid(),
                   " ", host_start_time_, " ", boot_id_, "\n");
  for (const auto& [pid, start_time] : workers_) {
    absl::StrAppend(&text, "worker ", pid, " ", start_time, "\n");
  }
  return text;
}

absl::Status RunRegistry::RewriteLocked() {
  const std::string target = path();
  const std::string temp =
      absl::StrCat(dir_, "/", run_id_, ToAbsl(kTempSuffix));
  // A reaper may find the new file stale in the moment between its
  // creation and its lock, and remove it; then try again.
  for (int attempt = 0; attempt < 3; ++attempt) {
    std::error_code ec;
    fs::remove(temp, ec);  // left by a failed rewrite
    absl::StatusOr<os::UniqueFd> fd = os::CreateNewFile(temp);
    if (!fd.ok()) {
      return fd.status();
    }
    if (absl::Status s = os::LockFile(fd->get()); !s.ok()) {
      return s;
    }
    absl::StatusOr<bool> linked = os::IsLinked(fd->get());
    if (linked.ok() && !*linked) {
      continue;
    }

    absl::Status written =
        linked.ok() ? os::WriteAll(fd->get(), RenderLocked()) : linked.status();
    if (written.ok()) {
      fs::rename(temp, target, ec);
      written = ec ? ErrnoToStatus(ec.value(), absl::StrCat("rename ", temp))
                   : absl::OkStatus();
    }
    if (!written.ok()) {
      fs::remove(temp, ec);
      return written;
    }
    // The old file loses its lock only now that the new one, locked,
    // has its name.
    file_ = std::move(*fd);
    return absl::OkStatus();
  }
  return absl::UnavailableError(
      absl::StrCat("run file ", temp, " was removed three times"));
}

}  // namespace snakepit::worker
