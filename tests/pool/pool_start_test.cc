// Start-up and capacity of a Pool against real Python workers: calls made
// before the workers are ready, pools whose workers cannot start
// (degraded), workers forked from a zygote, and workers that run several
// calls at once.

#include <signal.h>
#include <unistd.h>

#include <fstream>

#include <cstdio>
#include <set>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "snakepit/base/status.h"
#include "snakepit/pool/pool.h"

namespace snakepit {
namespace {

std::string FixturePath(const std::string& name) {
  return std::string(SNAKEPIT_TEST_DIR) + "/pool/fixtures/" + name;
}

// A pool over start_faults.py that returns at once (does not wait for
// its workers), with `env` for the workers.
std::unique_ptr<Pool> StartNow(std::map<std::string, std::string> env,
                               int size = 2) {
  PoolOptions options;
  options.modules = {FixturePath("start_faults.py")};
  options.python = "/usr/bin/python3";
  options.size = size;
  options.env = std::move(env);
  options.wait_until_ready = false;
  absl::StatusOr<std::unique_ptr<Pool>> pool = Pool::Start(options);
  EXPECT_TRUE(pool.ok()) << pool.status();
  return pool.ok() ? std::move(*pool) : nullptr;
}

double SecondsSince(absl::Time start) {
  return absl::ToDoubleSeconds(absl::Now() - start);
}

CallOptions Within(absl::Duration timeout) {
  CallOptions options;
  options.timeout = timeout;
  return options;
}

TEST(PoolStartTest, CallJustAfterStartWaitsForReadiness) {
  std::unique_ptr<Pool> pool = StartNow({{"SP_IMPORT_DELAY", "0.3"}});
  ASSERT_NE(pool, nullptr);
  absl::SleepFor(absl::Milliseconds(1));
  EXPECT_EQ(pool->Stats().state, PoolState::kStarting);

  absl::StatusOr<Value> r =
      pool->Invoke("start_faults.echo", {{"value", 7}},
                   Within(absl::Seconds(30)));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(*r, 7);
  EXPECT_EQ(pool->Stats().state, PoolState::kReady);
}

TEST(PoolStartTest, SlowImportPastDeadlineSaysPoolWasStarting) {
  std::unique_ptr<Pool> pool = StartNow({{"SP_IMPORT_DELAY", "3"}});
  ASSERT_NE(pool, nullptr);
  absl::Time start = absl::Now();
  absl::StatusOr<Value> r = pool->Invoke("start_faults.echo", {{"value", 1}},
                                         Within(absl::Seconds(2)));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(ReasonOf(r.status()), "deadline_exceeded");
  EXPECT_NE(r.status().message().find("the pool was starting"),
            absl::string_view::npos)
      << r.status();
  EXPECT_LT(SecondsSince(start), 2.9);

  // The workers still come up and serve.
  r = pool->Invoke("start_faults.echo", {{"value", 2}},
                   Within(absl::Seconds(30)));
  ASSERT_TRUE(r.ok()) << r.status();
}

TEST(PoolStartTest, ImportErrorDegradesAndFailsCallsFast) {
  PoolOptions options;
  options.modules = {FixturePath("broken_import.py")};
  options.python = "/usr/bin/python3";
  options.size = 2;
  options.wait_until_ready = false;
  absl::StatusOr<std::unique_ptr<Pool>> pool = Pool::Start(options);
  ASSERT_TRUE(pool.ok()) << pool.status();

  absl::Time start = absl::Now();
  absl::StatusOr<Value> r = (*pool)->Invoke("broken_import.anything", {},
                                            Within(absl::Seconds(30)));
  EXPECT_LT(SecondsSince(start), 1.0);
  EXPECT_EQ(ReasonOf(r.status()), "import_error") << r.status();
  EXPECT_NE(r.status().message().find("this module fails at import"),
            absl::string_view::npos)
      << r.status();
  EXPECT_NE(r.status().message().find("degraded"), absl::string_view::npos);

  PoolStats stats = (*pool)->Stats();
  EXPECT_EQ(stats.state, PoolState::kDegraded);
  EXPECT_STREQ(PoolStateName(stats.state), "degraded");
  EXPECT_EQ(ReasonOf(stats.start_failure), "import_error");

  // Later calls fail at once too, while the pool keeps retrying.
  start = absl::Now();
  r = (*pool)->Invoke("broken_import.anything", {},
                      Within(absl::Seconds(30)));
  EXPECT_EQ(ReasonOf(r.status()), "import_error");
  EXPECT_LT(SecondsSince(start), 0.5);
}

TEST(PoolStartTest, CrashAtEveryStartFailsCallsWithStderrTail) {
  std::unique_ptr<Pool> pool = StartNow({{"SP_CRASH_AT_IMPORT", "1"}});
  ASSERT_NE(pool, nullptr);
  absl::Time start = absl::Now();
  absl::StatusOr<Value> r = pool->Invoke("start_faults.echo", {{"value", 1}},
                                         Within(absl::Seconds(30)));
  EXPECT_LT(SecondsSince(start), 1.0);
  EXPECT_EQ(ReasonOf(r.status()), "worker_start_failed") << r.status();
  std::string message(r.status().message());
  EXPECT_NE(message.find("exited with status 3"), std::string::npos)
      << message;
  EXPECT_NE(message.find("native library missing"), std::string::npos)
      << message;
  EXPECT_EQ(pool->Stats().state, PoolState::kDegraded);
}

TEST(PoolStartTest, DegradedPoolRecoversWhenWorkersCanStart) {
  char flag[] = "/tmp/snakepit-start-flag-XXXXXX";
  int fd = mkstemp(flag);
  ASSERT_GE(fd, 0);
  close(fd);
  std::unique_ptr<Pool> pool = StartNow({{"SP_FAIL_WHILE", flag}}, 1);
  ASSERT_NE(pool, nullptr);

  absl::Time limit = absl::Now() + absl::Seconds(10);
  while (pool->Stats().state != PoolState::kDegraded && absl::Now() < limit) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  ASSERT_EQ(pool->Stats().state, PoolState::kDegraded);
  EXPECT_GE(pool->Stats().restarts_by_reason["start_failure"], 1u);

  // Backoff stays under a second for the first few retries.
  std::remove(flag);
  limit = absl::Now() + absl::Seconds(10);
  while (pool->Stats().state != PoolState::kReady && absl::Now() < limit) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  PoolStats stats = pool->Stats();
  EXPECT_EQ(stats.state, PoolState::kReady);
  EXPECT_TRUE(stats.start_failure.ok());
  absl::StatusOr<Value> r = pool->Invoke("start_faults.echo", {{"value", 3}},
                                         Within(absl::Seconds(10)));
  ASSERT_TRUE(r.ok()) << r.status();
}

TEST(PoolStartTest, WaitingStartStillFailsWithTheImportError) {
  PoolOptions options;
  options.modules = {FixturePath("broken_import.py")};
  options.python = "/usr/bin/python3";
  absl::StatusOr<std::unique_ptr<Pool>> pool = Pool::Start(options);
  EXPECT_EQ(ReasonOf(pool.status()), "import_error") << pool.status();
}

std::unique_ptr<Pool> StartConcurrent(int size, int slots) {
  PoolOptions options;
  options.modules = {FixturePath("concurrency.py")};
  options.python = "/usr/bin/python3";
  options.size = size;
  options.max_concurrency = slots;
  absl::StatusOr<std::unique_ptr<Pool>> pool = Pool::Start(options);
  EXPECT_TRUE(pool.ok()) << pool.status();
  return pool.ok() ? std::move(*pool) : nullptr;
}

// Submits `n` calls of `function` and returns how long until all ended
// and the worker pids they ran on.
double RunAll(Pool& pool, const std::string& function, int n,
              std::set<int64_t>* pids) {
  absl::Time start = absl::Now();
  std::vector<Call> calls;
  for (int i = 0; i < n; ++i) {
    calls.push_back(pool.Submit(function, {{"seconds", 1.0}},
                                Within(absl::Seconds(30))));
  }
  for (Call& call : calls) {
    absl::StatusOr<Value> r = call.Get();
    EXPECT_TRUE(r.ok()) << r.status();
    if (r.ok()) {
      pids->insert(r->get<int64_t>());
    }
  }
  return SecondsSince(start);
}

TEST(PoolConcurrencyTest, TwoWorkersOfEightSlotsRunSixteenSleepsAtOnce) {
  std::unique_ptr<Pool> pool = StartConcurrent(2, 8);
  ASSERT_NE(pool, nullptr);
  for (const char* function : {"concurrency.nap", "concurrency.anap"}) {
    std::set<int64_t> pids;
    double took = RunAll(*pool, function, 16, &pids);
    // 16 one-second sleeps, 16 slots: about 1 s; one at a time would
    // take 8 s per worker.
    EXPECT_LT(took, 3.0) << function;
    EXPECT_EQ(pids.size(), 2u) << function;
  }
  EXPECT_EQ(pool->Stats().restarts, 0u);
}

TEST(PoolConcurrencyTest, SlotsBoundTheCallsInFlight) {
  std::unique_ptr<Pool> pool = StartConcurrent(1, 4);
  ASSERT_NE(pool, nullptr);
  std::set<int64_t> pids;
  // 8 calls on 4 slots: two rounds of about 1 s each.
  double took = RunAll(*pool, "concurrency.nap", 8, &pids);
  EXPECT_GT(took, 1.9);
  EXPECT_LT(took, 5.0);
}

TEST(PoolConcurrencyTest, CancellingOneCallLeavesTheOthersRunning) {
  std::unique_ptr<Pool> pool = StartConcurrent(1, 4);
  ASSERT_NE(pool, nullptr);
  std::vector<Call> calls;
  for (int i = 0; i < 3; ++i) {
    calls.push_back(pool->Submit("concurrency.stuck", {{"seconds", 1.0}}));
  }
  absl::SleepFor(absl::Milliseconds(200));
  calls[1].Cancel();
  EXPECT_EQ(ReasonOf(calls[1].Get().status()), "cancelled");
  for (int i : {0, 2}) {
    absl::StatusOr<Value> r = calls[i].Get();
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(*r, "done");
  }
  // The worker stopped the cancelled call in time and was kept.
  EXPECT_EQ(pool->Stats().restarts, 0u);
  absl::StatusOr<Value> r = pool->Invoke("concurrency.thread_name", {});
  ASSERT_TRUE(r.ok()) << r.status();
}

TEST(PoolConcurrencyTest, RecyclingWaitsForEveryCallOfTheWorker) {
  PoolOptions options;
  options.modules = {FixturePath("concurrency.py")};
  options.python = "/usr/bin/python3";
  options.size = 2;
  options.max_concurrency = 4;
  options.max_calls_per_worker = 5;
  absl::StatusOr<std::unique_ptr<Pool>> pool = Pool::Start(options);
  ASSERT_TRUE(pool.ok()) << pool.status();
  std::vector<Call> calls;
  for (int i = 0; i < 60; ++i) {
    calls.push_back((*pool)->Submit("concurrency.nap", {{"seconds", 0.05}},
                                    Within(absl::Seconds(60))));
  }
  for (Call& call : calls) {
    absl::StatusOr<Value> r = call.Get();
    EXPECT_TRUE(r.ok()) << r.status();
  }
  PoolStats stats = (*pool)->Stats();
  EXPECT_GE(stats.restarts_by_reason["recycle_calls"], 1u);
  EXPECT_EQ(stats.restarts_by_reason["crash"], 0u);
}

TEST(PoolConcurrencyTest, RejectsAnOutOfRangeConcurrency) {
  PoolOptions options;
  options.modules = {FixturePath("concurrency.py")};
  options.max_concurrency = 0;
  EXPECT_EQ(ReasonOf(Pool::Start(options).status()), "invalid_argument");
}

// The parent pid of `pid`, from /proc; 0 when gone.
int ParentOf(int pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) {
    return 0;
  }
  size_t close = line.rfind(')');
  char state = 0;
  int ppid = 0;
  if (close == std::string::npos ||
      sscanf(line.c_str() + close + 2, "%c %d", &state, &ppid) != 2) {
    return 0;
  }
  return ppid;
}

bool Alive(int pid) { return kill(pid, 0) == 0 && ParentOf(pid) != 0; }

std::unique_ptr<Pool> StartForked(int size, PoolOptions options = {}) {
  options.modules = {FixturePath("faults.py")};
  options.python = "/usr/bin/python3";
  options.size = size;
  options.zygote = true;
  absl::StatusOr<std::unique_ptr<Pool>> pool = Pool::Start(options);
  EXPECT_TRUE(pool.ok()) << pool.status();
  return pool.ok() ? std::move(*pool) : nullptr;
}

TEST(PoolZygoteTest, WorkersAreForkedFromOneZygoteAndServe) {
  std::unique_ptr<Pool> pool = StartForked(3);
  ASSERT_NE(pool, nullptr);
  std::set<int> parents;
  std::vector<Call> calls;
  for (int i = 0; i < 3; ++i) {
    calls.push_back(pool->Submit("faults.pid_after", {{"seconds", 0.3}}));
  }
  for (Call& call : calls) {
    absl::StatusOr<Value> pid = call.Get();
    ASSERT_TRUE(pid.ok()) << pid.status();
    parents.insert(ParentOf(pid->get<int>()));
  }
  ASSERT_EQ(parents.size(), 1u);
  int zygote = *parents.begin();
  EXPECT_NE(zygote, getpid());
  EXPECT_EQ(ParentOf(zygote), getpid());
  absl::StatusOr<Value> sum = pool->Invoke("faults.add", {{"a", 2}, {"b", 3}});
  ASSERT_TRUE(sum.ok()) << sum.status();
  EXPECT_EQ(*sum, 5);

  pool->Shutdown();
  EXPECT_FALSE(Alive(zygote)) << "the zygote outlived its pool";
}

TEST(PoolZygoteTest, ACrashedWorkerIsReportedAndReforked) {
  std::unique_ptr<Pool> pool = StartForked(1);
  ASSERT_NE(pool, nullptr);
  absl::StatusOr<Value> r = pool->Invoke("faults.exit_with", {{"status", 7}});
  EXPECT_EQ(ReasonOf(r.status()), "worker_crashed") << r.status();
  EXPECT_NE(r.status().message().find("exited with status 7"),
            absl::string_view::npos)
      << r.status();
  r = pool->Invoke("faults.kill_self", {}, Within(absl::Seconds(30)));
  EXPECT_NE(r.status().message().find("signal 9"), absl::string_view::npos)
      << r.status();
  r = pool->Invoke("faults.pid", {}, Within(absl::Seconds(30)));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(pool->Stats().restarts_by_reason["crash"], 2u);
}

TEST(PoolZygoteTest, RecyclingForksReplacements) {
  PoolOptions options;
  options.max_calls_per_worker = 3;
  std::unique_ptr<Pool> pool = StartForked(2, options);
  ASSERT_NE(pool, nullptr);
  std::set<int64_t> pids;
  for (int i = 0; i < 30; ++i) {
    // Calls of 20 ms: the replacement of a worker is forked and ready
    // within a few of them.
    absl::StatusOr<Value> r = pool->Invoke(
        "faults.pid_after", {{"seconds", 0.02}}, Within(absl::Seconds(30)));
    ASSERT_TRUE(r.ok()) << r.status();
    pids.insert(r->get<int64_t>());
  }
  EXPECT_GE(pids.size(), 3u);
  EXPECT_GE(pool->Stats().restarts_by_reason["recycle_calls"], 1u);
  EXPECT_EQ(pool->Stats().restarts_by_reason["crash"], 0u);
}

TEST(PoolZygoteTest, ALostZygoteIsReplacedAndTheWorkersWithIt) {
  std::unique_ptr<Pool> pool = StartForked(2);
  ASSERT_NE(pool, nullptr);
  absl::StatusOr<Value> pid = pool->Invoke("faults.pid", {});
  ASSERT_TRUE(pid.ok()) << pid.status();
  int zygote = ParentOf(pid->get<int>());
  ASSERT_GT(zygote, 1);
  ASSERT_EQ(kill(zygote, SIGKILL), 0);

  absl::Time limit = absl::Now() + absl::Seconds(5);
  while (Alive(pid->get<int>()) && absl::Now() < limit) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_FALSE(Alive(pid->get<int>())) << "a worker outlived its zygote";
  absl::StatusOr<Value> after =
      pool->Invoke("faults.pid", {}, Within(absl::Seconds(30)));
  ASSERT_TRUE(after.ok()) << after.status();
  int new_zygote = ParentOf(after->get<int>());
  EXPECT_NE(new_zygote, zygote);
  EXPECT_NE(new_zygote, getpid());
}

TEST(PoolZygoteTest, AnImportErrorFailsStart) {
  PoolOptions options;
  options.modules = {FixturePath("broken_import.py")};
  options.python = "/usr/bin/python3";
  options.zygote = true;
  absl::StatusOr<std::unique_ptr<Pool>> pool = Pool::Start(options);
  EXPECT_EQ(ReasonOf(pool.status()), "import_error") << pool.status();
  EXPECT_NE(pool.status().message().find("this module fails at import"),
            absl::string_view::npos);
}

}  // namespace
}  // namespace snakepit
