#include "snakepit/os/process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <string>

#include "absl/strings/numbers.h"
#include "gtest/gtest.h"

#include "snakepit/testing/processes.h"

namespace snakepit::os {
namespace {

constexpr uint64_t kMiB = 1 << 20;

// A python that holds 50 MiB and has a child python holding 30 MiB;
// prints the child's pid once both hold their memory, then waits for
// end of file on stdin and for its child to exit. The bytes are
// written, so they are resident.
constexpr char kTreeScript[] = R"py(
import subprocess, sys
held = b"\x01" * (50 << 20)
child = subprocess.Popen(
    [sys.executable, "-c",
     "import sys\n"
     "held = b'\\x02' * (30 << 20)\n"
     "print('ready', flush=True)\n"
     "sys.stdin.read()\n"],
    stdin=subprocess.PIPE, stdout=subprocess.PIPE)
child.stdout.readline()
print(child.pid, flush=True)
sys.stdin.read()
child.stdin.close()
child.wait()
)py";

// The tree above, stopped and reaped on destruction.
class PythonTree {
 public:
  void Start() {
    UniqueFd stdin_read, out_write;
    ASSERT_TRUE(MakePipe(&stdin_read, &stdin_).ok());
    // Python reads its stdin blocking.
    ASSERT_EQ(::fcntl(stdin_read.get(), F_SETFL, 0), 0);
    ASSERT_TRUE(MakePipe(&stdout_, &out_write).ok());
    SpawnRequest request;
    request.argv = {"/usr/bin/python3", "-c", kTreeScript};
    request.env = {"PATH=/usr/bin:/bin"};
    request.fds = {{stdin_read.get(), 0}, {out_write.get(), 1}};
    absl::StatusOr<SpawnedProcess> spawned = Spawn(request);
    ASSERT_TRUE(spawned.ok()) << spawned.status();
    root_ = std::move(*spawned);

    absl::StatusOr<std::string> line = snakepit::testing::ReadLine(
        stdout_.get(), absl::Now() + absl::Seconds(30));
    ASSERT_TRUE(line.ok()) << line.status();
    ASSERT_TRUE(absl::SimpleAtoi(*line, &child_)) << *line;
  }

  ~PythonTree() {
    // End of file on stdin ends the child, then the root.
    stdin_.Reset();
    if (root_.pid > 0 && !AwaitExit(root_.pidfd.get(), absl::Seconds(10))) {
      SignalGroup(root_.pid, SIGKILL);
    }
    if (root_.pid > 0) {
      AwaitExit(root_.pidfd.get(), absl::Seconds(10));
      (void)TryReap(root_.pidfd.get());
    }
  }

  pid_t root() const { return root_.pid; }
  pid_t child() const { return child_; }

  // Ends the child, then the root, and reaps the root.
  void Stop() {
    stdin_.Reset();
    ASSERT_TRUE(AwaitExit(root_.pidfd.get(), absl::Seconds(10)));
    ASSERT_TRUE(TryReap(root_.pidfd.get()).ok());
  }

 private:
  SpawnedProcess root_;
  UniqueFd stdin_;
  UniqueFd stdout_;
  pid_t child_ = 0;
};

TEST(ReadTreeMemoryTest, CountsTheDescendantsMemory) {
  PythonTree tree;
  ASSERT_NO_FATAL_FAILURE(tree.Start());

  absl::StatusOr<ProcessMemory> root = ReadProcessMemory(tree.root());
  absl::StatusOr<TreeMemory> all = ReadTreeMemory(tree.root());
  ASSERT_TRUE(root.ok()) << root.status();
  ASSERT_TRUE(all.ok()) << all.status();

  EXPECT_TRUE(root->pss_exact);
  EXPECT_GE(root->rss_bytes, 50 * kMiB);
  EXPECT_GE(root->pss_bytes, 50 * kMiB);
  EXPECT_EQ(all->processes, 2);
  EXPECT_EQ(all->pss_estimated, 0);
  // The child holds 30 MiB on top of its own interpreter; the root may
  // move a little between the two readings.
  EXPECT_GE(all->rss_bytes, root->rss_bytes + 28 * kMiB);
  EXPECT_GE(all->pss_bytes, root->pss_bytes + 28 * kMiB);
  EXPECT_LE(all->rss_bytes, root->rss_bytes + 200 * kMiB);
}

TEST(ReadTreeMemoryTest, ALeafIsItsOwnTree) {
  PythonTree tree;
  ASSERT_NO_FATAL_FAILURE(tree.Start());

  absl::StatusOr<TreeMemory> leaf = ReadTreeMemory(tree.child());
  ASSERT_TRUE(leaf.ok()) << leaf.status();
  EXPECT_EQ(leaf->processes, 1);
  EXPECT_GE(leaf->rss_bytes, 30 * kMiB);
}

TEST(ReadTreeMemoryTest, AGoneRootIsNotFound) {
  PythonTree tree;
  ASSERT_NO_FATAL_FAILURE(tree.Start());
  pid_t root = tree.root();
  ASSERT_NO_FATAL_FAILURE(tree.Stop());

  absl::StatusOr<TreeMemory> gone = ReadTreeMemory(root);
  EXPECT_EQ(gone.status().code(), absl::StatusCode::kNotFound) << gone.status();
}

TEST(ReadProcStatTest, ReadsFieldsPastAnOddCommandName) {
  char saved[17] = {};
  ASSERT_EQ(::prctl(PR_GET_NAME, saved), 0);
  ASSERT_EQ(::prctl(PR_SET_NAME, "a) b ) (c"), 0);
  absl::StatusOr<ProcStat> stat = ReadProcStat(::getpid());
  ::prctl(PR_SET_NAME, saved);

  ASSERT_TRUE(stat.ok()) << stat.status();
  EXPECT_EQ(stat->ppid, ::getppid());
  EXPECT_EQ(stat->pgrp, ::getpgrp());
  EXPECT_GT(stat->start_time, 0u);
  EXPECT_EQ(stat->state, 'R');
}

TEST(ReadBootIdTest, IsAUuid) {
  absl::StatusOr<std::string> id = ReadBootId();
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(id->size(), 36u) << *id;
}

}  // namespace
}  // namespace snakepit::os
