#include "snakepit/worker/run_registry.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"

#include "snakepit/os/file.h"
#include "snakepit/os/process.h"
#include "snakepit/testing/processes.h"
#include "snakepit/worker/worker.h"

namespace snakepit::worker {
namespace {

namespace fs = std::filesystem;
using ::snakepit::testing::AwaitExited;
using ::snakepit::testing::HasExited;
using ::snakepit::testing::ReadLine;
using ::snakepit::testing::TempDir;

constexpr absl::Duration kExitBound = absl::Seconds(2);

std::string ReadText(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

void WriteText(const std::string& path, const std::string& text) {
  std::ofstream(path) << text;
}

std::string RunFile(const std::string& dir, const std::string& id) {
  return absl::StrCat(dir, "/", id, ".run");
}

uint64_t StartTime(pid_t pid) {
  absl::StatusOr<os::ProcStat> stat = os::ReadProcStat(pid);
  return stat.ok() ? stat->start_time : 0;
}

std::string BootId() {
  return os::ReadBootId().value_or("?");
}

// A `sleep 1000` this test started, with `marker` as its SNAKEPIT_RUN_ID
// when not empty. Killed by pid and reaped on destruction.
class Sleeper {
 public:
  explicit Sleeper(const std::string& marker = "") {
    os::SpawnRequest request;
    request.argv = {"/bin/sleep", "1000"};
    request.env = {"PATH=/usr/bin:/bin"};
    if (!marker.empty()) {
      request.env.push_back(absl::StrCat(kRunIdVariable, "=", marker));
    }
    absl::StatusOr<os::SpawnedProcess> spawned = os::Spawn(request);
    if (spawned.ok()) {
      process_ = std::move(*spawned);
    }
    // posix_spawn returns while the kernel may still be setting up the
    // new program, with its environment empty for a moment.
    for (int i = 0; i < 500 && process_.pid > 0; ++i) {
      absl::StatusOr<std::string> env = os::ReadEnviron(process_.pid);
      if (env.ok() && !env->empty()) {
        break;
      }
      ::usleep(1000);
    }
  }

  ~Sleeper() {
    if (process_.pid > 0) {
      os::SignalPidfd(process_.pidfd.get(), SIGKILL).IgnoreError();
      os::AwaitExit(process_.pidfd.get(), absl::Seconds(5));
      (void)os::TryReap(process_.pidfd.get());
    }
  }

  pid_t pid() const { return process_.pid; }

  // Alive: not signalled by anyone.
  bool Running() const {
    return process_.pid > 0 &&
           !os::AwaitExit(process_.pidfd.get(), absl::ZeroDuration());
  }

 private:
  os::SpawnedProcess process_;
};

// Makes this process the reaper of orphans below it for the test's
// length, so that the leftovers of a killed host can be reaped by pid
// here rather than stay zombies under an init that may not reap.
class SubreaperScope {
 public:
  SubreaperScope() { ::prctl(PR_SET_CHILD_SUBREAPER, 1); }
  ~SubreaperScope() { ::prctl(PR_SET_CHILD_SUBREAPER, 0); }
};

// run_registry_host in `dir`, with its two workers and their children.
class Host {
 public:
  void Start(const std::string& dir) {
    os::UniqueFd out_write;
    ASSERT_TRUE(os::MakePipe(&stdout_, &out_write).ok());
    os::SpawnRequest request;
    request.argv = {SNAKEPIT_REGISTRY_HOST, dir};
    request.env = {"PATH=/usr/bin:/bin"};
    request.fds = {{out_write.get(), 1}};
    absl::StatusOr<os::SpawnedProcess> spawned = os::Spawn(request);
    ASSERT_TRUE(spawned.ok()) << spawned.status();
    host_ = std::move(*spawned);
    out_write.Reset();

    const absl::Time deadline = absl::Now() + absl::Seconds(30);
    while (run_id_.empty() || workers_.size() < 2 || children_.size() < 2) {
      absl::StatusOr<std::string> line = ReadLine(stdout_.get(), deadline);
      ASSERT_TRUE(line.ok()) << line.status();
      std::vector<std::string> words = absl::StrSplit(*line, ' ');
      ASSERT_EQ(words.size(), 2u) << *line;
      pid_t pid = 0;
      if (words[0] == "run") {
        run_id_ = words[1];
      } else if (absl::SimpleAtoi(words[1], &pid)) {
        (words[0] == "worker" ? workers_ : children_).push_back(pid);
      }
    }
  }

  // Kills the host alone, as a crash would, and reaps it.
  void Crash() {
    ASSERT_TRUE(os::SignalPidfd(host_.pidfd.get(), SIGKILL).ok());
    ASSERT_TRUE(os::AwaitExit(host_.pidfd.get(), absl::Seconds(10)));
    ASSERT_TRUE(os::TryReap(host_.pidfd.get()).ok());
    crashed_ = true;
  }

  // The workers and their children: four processes.
  std::vector<pid_t> Leftovers() const {
    std::vector<pid_t> all = workers_;
    all.insert(all.end(), children_.begin(), children_.end());
    return all;
  }

  ~Host() {
    if (host_.pid > 0 && !crashed_) {
      os::SignalPidfd(host_.pidfd.get(), SIGKILL).IgnoreError();
      os::AwaitExit(host_.pidfd.get(), absl::Seconds(5));
      (void)os::TryReap(host_.pidfd.get());
    }
    // Whatever a failed test left: these are processes this test
    // started, and under SubreaperScope they are its children by now.
    for (pid_t pid : Leftovers()) {
      if (!HasExited(pid)) {
        ::kill(pid, SIGKILL);
      }
      AwaitExited(pid, absl::Seconds(5));
      ::waitpid(pid, nullptr, WNOHANG);
    }
  }

  const std::string& run_id() const { return run_id_; }
  const std::vector<pid_t>& workers() const { return workers_; }

 private:
  os::SpawnedProcess host_;
  os::UniqueFd stdout_;
  bool crashed_ = false;
  std::string run_id_;
  std::vector<pid_t> workers_;
  std::vector<pid_t> children_;
};

std::string Header(const std::string& id) {
  return absl::StrCat("snakepit-run 1\nrun ", id, "\nhost 999999 1 ", BootId(),
                      "\n");
}

// A fresh run id: tests that run at the same time must not share one,
// or one's reap would kill the other's processes.
std::string NewId() {
  unsigned char raw[16];
  os::ReadRandom(raw, sizeof(raw));
  std::string id;
  for (unsigned char byte : raw) {
    absl::StrAppend(&id, absl::Hex(byte, absl::kZeroPad2));
  }
  return id;
}

TEST(RunRegistryTest, OpenRecordsTheRunAndItsWorkers) {
  TempDir dir;
  absl::StatusOr<std::shared_ptr<RunRegistry>> registry =
      RunRegistry::Open(dir.path());
  ASSERT_TRUE(registry.ok()) << registry.status();
  const std::string path = (*registry)->path();
  EXPECT_EQ(path, RunFile(dir.path(), (*registry)->run_id()));
  EXPECT_EQ((*registry)->run_id().size(), 32u);

  Sleeper worker;
  ASSERT_TRUE((*registry)->AddWorker(worker.pid()).ok());
  std::string text = ReadText(path);
  EXPECT_TRUE(absl::StartsWith(
      text, absl::StrCat("snakepit-run 1\nrun ", (*registry)->run_id(),
                         "\nhost ", ::getpid(), " ")))
      << text;
  EXPECT_TRUE(absl::StrContains(text, " " + BootId() + "\n")) << text;
  EXPECT_TRUE(
      absl::StrContains(text, absl::StrCat("\nworker ", worker.pid(), " ",
                                           StartTime(worker.pid()), "\n")))
      << text;

  (*registry)->RemoveWorker(worker.pid());
  EXPECT_FALSE(absl::StrContains(ReadText(path), "worker")) << text;
  registry->reset();
  EXPECT_FALSE(fs::exists(path));
  EXPECT_TRUE(fs::is_empty(dir.path()));
}

TEST(RunRegistryTest, AddWorkerOfAGoneProcessIsNotFound) {
  TempDir dir;
  auto registry = RunRegistry::Open(dir.path());
  ASSERT_TRUE(registry.ok()) << registry.status();
  pid_t gone = 0;
  {
    Sleeper worker;
    gone = worker.pid();
  }
  EXPECT_EQ((*registry)->AddWorker(gone).code(), absl::StatusCode::kNotFound);
}

TEST(RunRegistryTest, OpenRefusesADirectoryOthersCanEnter) {
  TempDir dir;
  ASSERT_EQ(::chmod(dir.path().c_str(), 0755), 0);
  auto registry = RunRegistry::Open(dir.path());
  EXPECT_EQ(registry.status().code(), absl::StatusCode::kFailedPrecondition)
      << registry.status();
}

TEST(RunRegistryTest, OpenCreatesAMissingDirectoryPrivate) {
  TempDir dir;
  const std::string runs = dir.path() + "/runs";
  auto registry = RunRegistry::Open(runs);
  ASSERT_TRUE(registry.ok()) << registry.status();
  struct stat st;
  ASSERT_EQ(::stat(runs.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
}

TEST(RunRegistryTest, DefaultDirFollowsXdgRuntimeDir) {
  const char* saved = std::getenv("XDG_RUNTIME_DIR");
  std::string restore = saved ? saved : "";

  ::setenv("XDG_RUNTIME_DIR", "/run/user/4242", 1);
  EXPECT_EQ(RunRegistry::DefaultDir(), "/run/user/4242/snakepit/runs");
  ::unsetenv("XDG_RUNTIME_DIR");
  EXPECT_EQ(RunRegistry::DefaultDir(),
            absl::StrCat("/tmp/snakepit-", ::geteuid(), "/runs"));

  if (saved) {
    ::setenv("XDG_RUNTIME_DIR", restore.c_str(), 1);
  }
}

TEST(RunRegistryTest, WorkerEnvCarriesTheRunId) {
  const std::string id = NewId();
  WorkerSpec spec;
  spec.run_id = id;
  std::vector<std::string> env = WorkerEnv(spec);
  EXPECT_NE(
      std::find(env.begin(), env.end(), absl::StrCat("SNAKEPIT_RUN_ID=", id)),
      env.end());
}

// (a) A host dies by SIGKILL; a later reap kills its two workers and
// their children, and removes its file.
TEST(RunRegistryTest, ReapKillsWhatACrashedHostLeft) {
  TempDir dir;
  SubreaperScope subreaper;
  Host host;
  ASSERT_NO_FATAL_FAILURE(host.Start(dir.path()));
  const std::string path = RunFile(dir.path(), host.run_id());
  ASSERT_TRUE(fs::exists(path));
  for (pid_t pid : host.workers()) {
    EXPECT_TRUE(
        absl::StrContains(ReadText(path), absl::StrCat("\nworker ", pid, " ")));
  }
  ASSERT_NO_FATAL_FAILURE(host.Crash());
  for (pid_t pid : host.Leftovers()) {
    ASSERT_FALSE(HasExited(pid)) << pid;
  }

  absl::StatusOr<int> reaped = RunRegistry::ReapStale(dir.path());
  ASSERT_TRUE(reaped.ok()) << reaped.status();
  EXPECT_EQ(*reaped, 4);
  for (pid_t pid : host.Leftovers()) {
    EXPECT_TRUE(AwaitExited(pid, kExitBound)) << pid;
  }
  EXPECT_FALSE(fs::exists(path));

  // Nothing is left to do the second time.
  EXPECT_EQ(RunRegistry::ReapStale(dir.path()).value_or(-1), 0);
}

// (b) A stale record whose pids now belong to processes that are not the
// run's: a wrong start time, or no marker, and the process is spared.
TEST(RunRegistryTest, ReapSparesProcessesThatOnlyReuseARecordedPid) {
  TempDir dir;
  const std::string stale_id = NewId();
  Sleeper wrong_start;                  // unmarked, recorded start differs
  Sleeper right_start;                  // unmarked, recorded start matches
  Sleeper marked_wrong(stale_id);       // marked, recorded start differs
  Sleeper marked_unrecorded(stale_id);  // the run's own, killed
  WriteText(RunFile(dir.path(), stale_id),
            absl::StrCat(Header(stale_id), "worker ", wrong_start.pid(), " ",
                         StartTime(wrong_start.pid()) + 1, "\n", "worker ",
                         right_start.pid(), " ", StartTime(right_start.pid()),
                         "\n", "worker ", marked_wrong.pid(), " ",
                         StartTime(marked_wrong.pid()) + 1, "\n"));

  absl::StatusOr<int> reaped = RunRegistry::ReapStale(dir.path());
  ASSERT_TRUE(reaped.ok()) << reaped.status();
  EXPECT_EQ(*reaped, 1);
  EXPECT_TRUE(AwaitExited(marked_unrecorded.pid(), kExitBound));
  EXPECT_TRUE(wrong_start.Running());
  EXPECT_TRUE(right_start.Running());
  EXPECT_TRUE(marked_wrong.Running());
  EXPECT_FALSE(fs::exists(RunFile(dir.path(), stale_id)));
}

// A run recorded in another boot can have left nothing alive: its file
// is removed without a scan.
TEST(RunRegistryTest, ReapIgnoresProcessesOfARunFromAnotherBoot) {
  TempDir dir;
  const std::string stale_id = NewId();
  Sleeper marked(stale_id);
  WriteText(RunFile(dir.path(), stale_id),
            absl::StrCat("snakepit-run 1\nrun ", stale_id,
                         "\nhost 999999 1 00000000-0000-0000-0000-0000000"
                         "00000\n"));

  EXPECT_EQ(RunRegistry::ReapStale(dir.path()).value_or(-1), 0);
  EXPECT_TRUE(marked.Running());
  EXPECT_FALSE(fs::exists(RunFile(dir.path(), stale_id)));
}

// (c) Live runs in one directory, in this process and in another, never
// reap each other's workers; once one host dies, only its own go.
TEST(RunRegistryTest, LiveRunsInOneDirectoryLeaveEachOtherAlone) {
  TempDir dir;
  SubreaperScope subreaper;
  auto mine = RunRegistry::Open(dir.path());
  ASSERT_TRUE(mine.ok()) << mine.status();
  Sleeper my_worker((*mine)->run_id());
  ASSERT_TRUE((*mine)->AddWorker(my_worker.pid()).ok());
  Host other;
  ASSERT_NO_FATAL_FAILURE(other.Start(dir.path()));
  auto third = RunRegistry::Open(dir.path());
  ASSERT_TRUE(third.ok()) << third.status();

  EXPECT_EQ(RunRegistry::ReapStale(dir.path()).value_or(-1), 0);
  EXPECT_TRUE(my_worker.Running());
  for (pid_t pid : other.Leftovers()) {
    EXPECT_FALSE(HasExited(pid)) << pid;
  }
  EXPECT_TRUE(fs::exists((*mine)->path()));
  EXPECT_TRUE(fs::exists(RunFile(dir.path(), other.run_id())));
  EXPECT_TRUE(fs::exists((*third)->path()));

  ASSERT_NO_FATAL_FAILURE(other.Crash());
  EXPECT_EQ(RunRegistry::ReapStale(dir.path()).value_or(-1), 4);
  for (pid_t pid : other.Leftovers()) {
    EXPECT_TRUE(AwaitExited(pid, kExitBound)) << pid;
  }
  EXPECT_TRUE(my_worker.Running());
  EXPECT_TRUE(fs::exists((*mine)->path()));
}

// (d) Files that cannot be trusted are removed and never acted on; a
// torn worker line does not stop the run's marked processes from going.
TEST(RunRegistryTest, ReapIgnoresGarbageAndReadsTornFiles) {
  TempDir dir;
  const std::string garbage_id = NewId();
  const std::string torn_id = NewId();
  const std::string empty_id = NewId();
  const std::string temp_id = NewId();
  Sleeper of_garbage(garbage_id);
  Sleeper of_torn(torn_id);
  Sleeper recorded_in_torn;  // unmarked; its line is cut short

  constexpr char kGarbage[] = "snakepit-run 1\nrun \0\xff junk\nhost x\n";
  WriteText(RunFile(dir.path(), garbage_id),
            std::string(kGarbage, sizeof(kGarbage) - 1));
  WriteText(RunFile(dir.path(), torn_id),
            absl::StrCat(Header(torn_id), "worker ", recorded_in_torn.pid()));
  WriteText(RunFile(dir.path(), empty_id), "");
  WriteText(RunFile(dir.path(), temp_id) + ".tmp", "half a rewrite");
  WriteText(dir.path() + "/notes.txt", "not ours to judge");
  WriteText(dir.path() + "/" + garbage_id, "no suffix");

  absl::StatusOr<int> reaped = RunRegistry::ReapStale(dir.path());
  ASSERT_TRUE(reaped.ok()) << reaped.status();
  EXPECT_EQ(*reaped, 1);
  EXPECT_TRUE(AwaitExited(of_torn.pid(), kExitBound));
  EXPECT_TRUE(of_garbage.Running());
  EXPECT_TRUE(recorded_in_torn.Running());

  std::set<std::string> left;
  for (const auto& entry : fs::directory_iterator(dir.path())) {
    left.insert(entry.path().filename().string());
  }
  EXPECT_EQ(left, (std::set<std::string>{"notes.txt", garbage_id}));
}

TEST(RunRegistryTest, ReapOfAMissingDirectoryIsNotFound) {
  TempDir dir;
  EXPECT_EQ(RunRegistry::ReapStale(dir.path() + "/none").status().code(),
            absl::StatusCode::kNotFound);
}

// The process-wide run reaps its directory before it opens, once.
TEST(RunRegistryTest, DefaultReapsFirstAndIsShared) {
  TempDir dir;
  const std::string stale_id = NewId();
  Sleeper leftover(stale_id);
  WriteText(RunFile(dir.path(), stale_id), Header(stale_id));
  ::setenv(kRunDirVariable, dir.path().c_str(), 1);

  auto first = RunRegistry::Default();
  auto second = RunRegistry::Default();
  ::unsetenv(kRunDirVariable);
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(first->get(), second->get());
  EXPECT_EQ((*first)->dir(), dir.path());
  EXPECT_TRUE(AwaitExited(leftover.pid(), kExitBound));
  EXPECT_TRUE(fs::exists((*first)->path()));
}

}  // namespace
}  // namespace snakepit::worker
