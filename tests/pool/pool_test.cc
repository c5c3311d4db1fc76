// Multi-process tests of Pool against real Python workers running
// tests/pool/fixtures/faults.py.

#include <dirent.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>
#include <set>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "snakepit/base/status.h"
#include "snakepit/pool/pool.h"
#include "snakepit/testing/log_capture.h"

namespace snakepit {
namespace {

const char* kDebianPython = "/usr/bin/python3";

std::string FixturePath(const std::string& name) {
  return std::string(SNAKEPIT_TEST_DIR) + "/pool/fixtures/" + name;
}

std::unique_ptr<Pool> StartPool(int size = 2,
                                const std::string& python = kDebianPython,
                                PoolOptions options = {}) {
  options.modules = {FixturePath("faults.py")};
  options.python = python;
  options.size = size;
  absl::StatusOr<std::unique_ptr<Pool>> pool = Pool::Start(options);
  EXPECT_TRUE(pool.ok()) << pool.status();
  return pool.ok() ? std::move(*pool) : nullptr;
}

double SecondsSince(absl::Time start) {
  return absl::ToDoubleSeconds(absl::Now() - start);
}

// Child processes of this test process that are zombies.
int CountZombieChildren() {
  int zombies = 0;
  DIR* proc = opendir("/proc");
  while (struct dirent* entry = readdir(proc)) {
    std::ifstream stat(std::string("/proc/") + entry->d_name + "/stat");
    std::string line;
    if (!std::getline(stat, line)) {
      continue;
    }
    size_t close = line.rfind(')');
    char state = 0;
    int ppid = 0;
    if (close != std::string::npos &&
        sscanf(line.c_str() + close + 2, "%c %d", &state, &ppid) == 2 &&
        ppid == getpid() && state == 'Z') {
      ++zombies;
    }
  }
  closedir(proc);
  return zombies;
}

// Waits until the pool has `size` ready workers, or 5 s.
bool AwaitFullSize(Pool& pool, int size) {
  absl::Time limit = absl::Now() + absl::Seconds(5);
  while (absl::Now() < limit) {
    PoolStats stats = pool.Stats();
    if (stats.ready == size && stats.starting == 0) {
      return true;
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
  return false;
}

TEST(PoolTest, CallsAFunctionWithKeywordAndPositionalArguments) {
  auto pool = StartPool();
  ASSERT_TRUE(pool);
  EXPECT_EQ(*pool->Invoke("faults.add", {{"a", 2}, {"b", 40}}), 42);
  EXPECT_EQ(*pool->Invoke("faults.add", Value::array({1, 2})), 3);
  EXPECT_EQ(*pool->Invoke("faults.echo", nullptr), nullptr);
}

TEST(PoolTest, ListsTheCatalogueWithSignatures) {
  auto pool = StartPool(1);
  ASSERT_TRUE(pool);
  std::vector<FunctionInfo> functions = pool->Functions();
  auto add = std::find_if(functions.begin(), functions.end(),
                          [](auto& f) { return f.name == "faults.add"; });
  ASSERT_NE(add, functions.end());
  EXPECT_EQ(add->kind, "function");
  EXPECT_EQ(add->signature, "(a: int, b: int = 0) -> int");
  auto ticker = std::find_if(functions.begin(), functions.end(),
                             [](auto& f) { return f.name == "faults.ticker"; });
  ASSERT_NE(ticker, functions.end());
  EXPECT_EQ(ticker->kind, "generator");
}

TEST(PoolTest, UnknownFunctionFailsNotFound) {
  auto pool = StartPool(1);
  ASSERT_TRUE(pool);
  absl::StatusOr<Value> r = pool->Invoke("faults.nope", nullptr);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(ReasonOf(r.status()), "unknown_function");
}

TEST(PoolTest, WrongArgumentsFailInvalidArgument) {
  auto pool = StartPool(1);
  ASSERT_TRUE(pool);
  absl::StatusOr<Value> r = pool->Invoke("faults.add", {{"c", 1}});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ReasonOf(r.status()), "invalid_argument");
  EXPECT_EQ(*pool->Invoke("faults.add", {{"a", 1}}), 1);
}

TEST(PoolTest, SigkilledWorkerFailsItsCallOnlyAndIsReplaced) {
  auto pool = StartPool(2);
  ASSERT_TRUE(pool);
  Call victim = pool->Submit("faults.kill_self", {{"after", 0.2}});
  Call survivor = pool->Submit("faults.sleep", {{"seconds", 0.6}});
  absl::Time start = absl::Now();
  absl::StatusOr<Value> failed = victim.Get();
  EXPECT_LT(SecondsSince(start), 1.0);
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(ReasonOf(failed.status()), "worker_crashed");
  EXPECT_NE(failed.status().message().find("SIGKILL"), std::string::npos)
      << failed.status();
  EXPECT_EQ(*survivor.Get(), 0.6);
  EXPECT_TRUE(AwaitFullSize(*pool, 2));
  for (int i = 0; i < 10; ++i) {
    EXPECT_EQ(*pool->Invoke("faults.add", {{"a", i}}), i);
  }
  EXPECT_EQ(pool->Stats().restarts, 1u);
}

TEST(PoolTest, ExitZeroDuringACallIsACrashAndLeavesNoZombie) {
  auto pool = StartPool(1);
  ASSERT_TRUE(pool);
  absl::StatusOr<Value> r = pool->Invoke("faults.exit_with", {{"status", 0}});
  EXPECT_EQ(ReasonOf(r.status()), "worker_crashed");
  EXPECT_NE(r.status().message().find("exited with status 0"),
            std::string::npos)
      << r.status();
  absl::SleepFor(absl::Seconds(1));
  EXPECT_EQ(CountZombieChildren(), 0);
  EXPECT_EQ(*pool->Invoke("faults.add", {{"a", 5}}), 5);
}

TEST(PoolTest, HostSurvivesWritingToAWorkerThatJustDied) {
  auto pool = StartPool(1);
  ASSERT_TRUE(pool);
  int pid = pool->Invoke("faults.pid", nullptr)->get<int>();
  ASSERT_EQ(kill(pid, SIGKILL), 0);
  // The pool may still think the worker idle; writing to it must be an
  // error for this call, not a SIGPIPE for the host.
  for (int i = 0; i < 20; ++i) {
    absl::StatusOr<Value> r = pool->Invoke("faults.add", {{"a", i}});
    if (!r.ok()) {
      EXPECT_EQ(ReasonOf(r.status()), "worker_crashed") << r.status();
    }
  }
  EXPECT_TRUE(AwaitFullSize(*pool, 1));
  EXPECT_EQ(*pool->Invoke("faults.add", {{"a", 7}}), 7);
}

TEST(PoolTest, DeadlineFailsAtTimeAndTheLateReplyGoesNowhere) {
  PoolOptions options;
  options.cancel_grace = absl::Seconds(5);
  auto pool = StartPool(1, kDebianPython, options);
  ASSERT_TRUE(pool);
  absl::Time start = absl::Now();
  Call slow = pool->Submit("faults.busy_then_return", {{"seconds", 1.5}},
                           {absl::Seconds(1)});
  absl::StatusOr<Value> r = slow.Get();
  double took = SecondsSince(start);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_GT(took, 0.95);
  EXPECT_LT(took, 1.3);
  // The worker answers the abandoned call at 1.5 s; that answer must not
  // become this call's result.
  absl::StatusOr<Value> next = pool->Invoke("faults.echo", {{"value", "mine"}});
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_EQ(*next, "mine");
}

TEST(PoolTest, TimedOutCallThatIgnoresCancelGetsItsWorkerReplaced) {
  PoolOptions options;
  options.cancel_grace = absl::Milliseconds(300);
  auto pool = StartPool(1, kDebianPython, options);
  ASSERT_TRUE(pool);
  int before = pool->Invoke("faults.pid", nullptr)->get<int>();
  absl::StatusOr<Value> r = pool->Invoke("faults.sleep", {{"seconds", 10}},
                                         {absl::Milliseconds(500)});
  EXPECT_EQ(ReasonOf(r.status()), "deadline_exceeded");
  absl::Time start = absl::Now();
  absl::StatusOr<Value> after = pool->Invoke("faults.pid", nullptr,
                                             {absl::Seconds(10)});
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_NE(after->get<int>(), before);
  EXPECT_LT(SecondsSince(start), 3.0);
}

TEST(PoolTest, QueueFullFailsAtOnce) {
  PoolOptions options;
  options.max_queue = 2;
  auto pool = StartPool(1, kDebianPython, options);
  ASSERT_TRUE(pool);
  std::vector<Call> calls;
  for (int i = 0; i < 3; ++i) {  // one running, two queued
    calls.push_back(pool->Submit("faults.sleep", {{"seconds", 0.5}}));
  }
  absl::Time start = absl::Now();
  Call rejected = pool->Submit("faults.sleep", {{"seconds", 0.5}});
  EXPECT_TRUE(rejected.Done());
  EXPECT_LT(SecondsSince(start), 0.05);
  EXPECT_EQ(rejected.Get().status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(ReasonOf(rejected.Get().status()), "queue_full");
  for (Call& c : calls) {
    EXPECT_TRUE(c.Get().ok());
  }
}

TEST(PoolTest, CancelledQueuedCallNeverRuns) {
  auto pool = StartPool(1);
  ASSERT_TRUE(pool);
  std::string marker = ::testing::TempDir() + "/never_ran";
  std::remove(marker.c_str());
  Call blocker = pool->Submit("faults.sleep", {{"seconds", 0.3}});
  Call queued = pool->Submit("faults.guarded_ticker", {{"marker", marker}});
  queued.Cancel();
  EXPECT_EQ(queued.Get().status().code(), absl::StatusCode::kCancelled);
  EXPECT_TRUE(blocker.Get().ok());
  EXPECT_EQ(*pool->Invoke("faults.add", {{"a", 1}}), 1);
  EXPECT_FALSE(std::ifstream(marker).good());
}

TEST(PoolTest, CompletionCallbackRunsOnce) {
  auto pool = StartPool(1);
  ASSERT_TRUE(pool);
  std::atomic<int> runs{0};
  std::atomic<bool> ok{false};
  Call call = pool->Submit("faults.sleep", {{"seconds", 0.05}});
  call.OnComplete([&](const absl::Status& s) {
    ok = s.ok();
    ++runs;
  });
  ASSERT_TRUE(call.WaitFor(absl::Seconds(5)));
  absl::SleepFor(absl::Milliseconds(20));
  EXPECT_EQ(runs.load(), 1);
  EXPECT_TRUE(ok.load());
  call.OnComplete([&](const absl::Status&) { ++runs; });  // already done
  EXPECT_EQ(runs.load(), 2);
}

// The msgpack of {"a": a}.
std::string AddArgs(int a) { return *EncodeValue(Value{{"a", a}}); }

TEST(PoolTest, SubmitRawAndWaitReturnsAQuickCallDone) {
  auto pool = StartPool(1);
  ASSERT_TRUE(pool);
  for (int i = 0; i < 50; ++i) {
    Call call = pool->SubmitRawAndWait("faults.add", AddArgs(i), {},
                                       absl::Seconds(5));
    ASSERT_TRUE(call.Done());
    EXPECT_EQ(*call.Get(), i);
  }
}

TEST(PoolTest, SubmitRawAndWaitHandsALongCallBackToThePool) {
  // Past the wait, the reply is the pool's to read again: the completion
  // callback fires without any thread waiting on the call.
  auto pool = StartPool(1);
  ASSERT_TRUE(pool);
  std::string args = *EncodeValue(Value{{"seconds", 0.3}});
  Call call = pool->SubmitRawAndWait("faults.sleep", std::move(args), {},
                                     absl::Milliseconds(10));
  EXPECT_FALSE(call.Done());
  std::atomic<bool> fired{false};
  call.OnComplete([&](const absl::Status& s) { fired = s.ok(); });
  absl::Time limit = absl::Now() + absl::Seconds(5);
  while (!fired.load() && absl::Now() < limit) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  EXPECT_TRUE(fired.load());
  EXPECT_EQ(*pool->Invoke("faults.add", {{"a", 2}}), 2);
}

TEST(PoolTest, SubmitRawAndWaitNeverWaitsForAQueuedCall) {
  auto pool = StartPool(1);
  ASSERT_TRUE(pool);
  Call blocker = pool->Submit("faults.sleep", {{"seconds", 0.3}});
  absl::Time start = absl::Now();
  Call queued = pool->SubmitRawAndWait("faults.add", AddArgs(7), {},
                                       absl::Seconds(5));
  EXPECT_LT(SecondsSince(start), 0.2);
  EXPECT_FALSE(queued.Done());
  EXPECT_EQ(*queued.Get(), 7);
  EXPECT_TRUE(blocker.Get().ok());
}

TEST(PoolTest, SubmitRawAndWaitCancelFromOnSubmitted) {
  auto pool = StartPool(1);
  ASSERT_TRUE(pool);
  std::string args = *EncodeValue(Value{{"seconds", 5.0}});
  absl::Time start = absl::Now();
  Call call = pool->SubmitRawAndWait(
      "faults.sleep", std::move(args), {}, absl::Seconds(10),
      [](const Call& submitted) { submitted.Cancel(); });
  EXPECT_TRUE(call.Done());
  EXPECT_EQ(call.Get().status().code(), absl::StatusCode::kCancelled);
  EXPECT_LT(SecondsSince(start), 4.0);
  EXPECT_EQ(*pool->Invoke("faults.add", {{"a", 3}}), 3);
}

TEST(PoolTest, RawNilArgumentsMeanNoneLikeANullValue) {
  auto pool = StartPool(1);
  ASSERT_TRUE(pool);
  const std::string nil = "\xc0";
  EXPECT_EQ(*pool->SubmitRaw("faults.pid", nil).Get(),
            *pool->Submit("faults.pid", nullptr).Get());
  EXPECT_TRUE(pool->SubmitRaw("faults.pid", std::string(nil)).Get().ok());
  EXPECT_TRUE(pool->SubmitRawAndWait("faults.pid", nil, {}, absl::Seconds(5))
                  .Get()
                  .ok());
  EXPECT_EQ(ReasonOf(pool->SubmitRaw("faults.nope", nil).Get().status()),
            "unknown_function");
}

TEST(PoolTest, SubmitRawAndWaitReadsKeptArgumentsWithoutTakingThem) {
  auto pool = StartPool(1);
  ASSERT_TRUE(pool);
  const std::string args = AddArgs(9);
  Call call = pool->SubmitRawAndWait("faults.add", args, {}, absl::Seconds(5));
  EXPECT_EQ(*call.Get(), 9);
  EXPECT_EQ(args, AddArgs(9));
}

TEST(PoolTest, SubmitRawAndWaitSeesItsWorkerDie) {
  auto pool = StartPool(1);
  ASSERT_TRUE(pool);
  std::string args = *EncodeValue(Value{{"after", 0.05}});
  absl::Time start = absl::Now();
  Call call = pool->SubmitRawAndWait("faults.kill_self", std::move(args), {},
                                     absl::Seconds(10));
  EXPECT_TRUE(call.Done());
  EXPECT_LT(SecondsSince(start), 5.0);
  EXPECT_FALSE(call.Get().ok());
  EXPECT_TRUE(AwaitFullSize(*pool, 1));
  EXPECT_EQ(*pool->Invoke("faults.add", {{"a", 4}}), 4);
}

TEST(PoolTest, SubmitRawAndWaitRefusesArgumentsThatAreNotAMapOrArray) {
  auto pool = StartPool(1);
  ASSERT_TRUE(pool);
  Call call = pool->SubmitRawAndWait("faults.add", std::string("\x05"), {},
                                     absl::Seconds(1));
  EXPECT_EQ(ReasonOf(call.Get().status()), "invalid_argument");
}

TEST(PoolTest, SubmitRawAndWaitFromManyThreadsAtOnce) {
  auto pool = StartPool(2);
  ASSERT_TRUE(pool);
  std::atomic<int> wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 100; ++i) {
        int a = t * 1000 + i;
        Call call = pool->SubmitRawAndWait("faults.add", AddArgs(a), {},
                                           absl::Seconds(5));
        absl::StatusOr<Value> got = call.Get();
        if (!got.ok() || *got != a) {
          ++wrong;
        }
      }
    });
  }
  for (std::thread& thread : threads) {
    thread.join();
  }
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_EQ(*pool->Invoke("faults.add", {{"a", 1}}), 1);
}

TEST(PoolTest, SubmitRawAndWaitEndsWhenThePoolShutsDown) {
  auto pool = StartPool(1);
  ASSERT_TRUE(pool);
  absl::Time start = absl::Now();
  std::thread shutdown([&] {
    absl::SleepFor(absl::Milliseconds(200));
    pool->Shutdown(absl::ZeroDuration(), absl::Seconds(1));
  });
  std::string args = *EncodeValue(Value{{"seconds", 30.0}});
  Call call = pool->SubmitRawAndWait("faults.sleep", std::move(args), {},
                                     absl::Seconds(20));
  shutdown.join();
  EXPECT_TRUE(call.Done());
  EXPECT_FALSE(call.Get().ok());
  EXPECT_LT(SecondsSince(start), 10.0);
}

// Queued calls cannot run once the pool closes; their callers hear so
// at once, not after the drain waits for the running calls.
TEST(PoolTest, ShutdownFailsQueuedCallsBeforeTheDrain) {
  auto pool = StartPool(1);
  ASSERT_TRUE(pool);
  Call running = pool->Submit("faults.sleep", Value{{"seconds", 3.0}});
  absl::SleepFor(absl::Milliseconds(200));  // the one worker took it
  Call queued = pool->Submit("faults.add", Value{{"a", 1}});
  std::atomic<bool> heard{false};
  std::atomic<bool> running_done_then{true};
  queued.OnComplete([&](const absl::Status&) {
    running_done_then = running.Done();
    heard = true;
  });
  std::thread shutdown([&] { pool->Shutdown(absl::Seconds(30)); });
  absl::Time start = absl::Now();
  while (!heard.load() && absl::Now() - start < absl::Seconds(20)) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  shutdown.join();

  EXPECT_TRUE(heard.load());
  EXPECT_FALSE(running_done_then.load());
  EXPECT_EQ(ReasonOf(queued.Get().status()), "pool_closed");
  EXPECT_TRUE(running.Get().ok());  // the drain let it finish
}

TEST(PoolTest, SubmitRawAndWaitKeepsTheDeadline) {
  auto pool = StartPool(1);
  ASSERT_TRUE(pool);
  absl::Time start = absl::Now();
  CallOptions options;
  options.timeout = absl::Milliseconds(200);
  std::string args = *EncodeValue(Value{{"seconds", 10.0}});
  Call call = pool->SubmitRawAndWait("faults.sleep", std::move(args),
                                     options, absl::Seconds(20));
  EXPECT_EQ(ReasonOf(call.Get().status()), "deadline_exceeded");
  EXPECT_LT(SecondsSince(start), 8.0);
  EXPECT_TRUE(AwaitFullSize(*pool, 1));
  EXPECT_EQ(*pool->Invoke("faults.add", {{"a", 5}}), 5);
}

TEST(PoolTest, GeneratorStreamsFirstChunkPromptly) {
  auto pool = StartPool(1);
  ASSERT_TRUE(pool);
  absl::Time start = absl::Now();
  Call call = pool->Submit("faults.ticker", {{"n", 5}, {"interval", 0.1}});
  absl::StatusOr<std::optional<Value>> first = call.Next();
  EXPECT_LT(SecondsSince(start), 0.2);
  ASSERT_TRUE(first.ok() && first->has_value());
  EXPECT_EQ(**first, 0);
  std::vector<int> rest;
  while (true) {
    absl::StatusOr<std::optional<Value>> chunk = call.Next();
    ASSERT_TRUE(chunk.ok()) << chunk.status();
    if (!chunk->has_value()) {
      break;
    }
    rest.push_back((*chunk)->get<int>());
  }
  EXPECT_EQ(rest, (std::vector<int>{1, 2, 3, 4}));
}

TEST(PoolTest, GetOnAGeneratorReturnsEveryChunk) {
  auto pool = StartPool(1);
  ASSERT_TRUE(pool);
  absl::StatusOr<Value> all =
      pool->Invoke("faults.ticker", {{"n", 3}, {"interval", 0.0}});
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_EQ(*all, Value::array({0, 1, 2}));
}

TEST(PoolTest, CancellingAStreamClosesTheGenerator) {
  auto pool = StartPool(1);
  ASSERT_TRUE(pool);
  std::string marker = ::testing::TempDir() + "/stream_closed";
  std::remove(marker.c_str());
  Call call = pool->Submit("faults.guarded_ticker",
                           {{"marker", marker}, {"interval", 0.05}});
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(call.Next().ok());
  }
  call.Cancel();
  absl::Time limit = absl::Now() + absl::Seconds(1);
  while (!std::ifstream(marker).good() && absl::Now() < limit) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_TRUE(std::ifstream(marker).good()) << "finally did not run";
  EXPECT_EQ(*pool->Invoke("faults.add", {{"a", 3}}), 3);
}

TEST(PoolTest, AsyncFunctionsRun) {
  auto pool = StartPool(1);
  ASSERT_TRUE(pool);
  EXPECT_EQ(*pool->Invoke("faults.async_add", {{"a", 1}, {"b", 2}}), 3);
}

TEST(PoolTest, ContextSeesTheDeadline) {
  auto pool = StartPool(1);
  ASSERT_TRUE(pool);
  Call call = pool->Submit("faults.remaining", nullptr, {absl::Seconds(30)});
  absl::StatusOr<Value> r = call.Get();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ((*r)["call_id"], call.id());
  EXPECT_GT((*r)["remaining"].get<double>(), 25.0);
  EXPECT_LE((*r)["remaining"].get<double>(), 30.0);
}

TEST(PoolTest, WorkerOutputGoesToTheLogNotTheChannel) {
  testing::ClearLog();
  auto pool = StartPool(1);
  ASSERT_TRUE(pool);
  for (int i = 0; i < 100; ++i) {
    absl::StatusOr<Value> r = pool->Invoke("faults.chatty", {{"i", i}});
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_EQ(*r, 2 * i);
  }
  pool->Shutdown();
  EXPECT_GE(testing::CountLogged("faults: printed at import"), 1);
  EXPECT_EQ(testing::CountLogged("stdout: print 99"), 1);
  EXPECT_EQ(testing::CountLogged("stdout: write 42"), 1);
  EXPECT_EQ(testing::CountLogged("stdout: oswrite 7"), 1);
  EXPECT_EQ(testing::CountLogged("stdout: puts 63"), 1);
  EXPECT_EQ(testing::CountLogged("stderr: stderr 5"), 1);
}

TEST(PoolTest, MegabyteOfStderrDoesNotBlockTheWorker) {
  auto pool = StartPool(1);
  ASSERT_TRUE(pool);
  absl::StatusOr<Value> r = pool->Invoke("faults.flood_stderr",
                                         {{"n_bytes", 1 << 20}},
                                         {absl::Seconds(20)});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_GE(r->get<int>(), 1 << 20);
}

TEST(PoolTest, SixtyFourMegabytesEachWayArriveExactly) {
  const uint32_t kBig = 64u << 20;
  PoolOptions options;
  options.max_payload_bytes = kBig + 64;  // room for msgpack framing
  auto pool = StartPool(1, kDebianPython, options);
  ASSERT_TRUE(pool);

  std::string data(kBig, '\0');
  for (size_t i = 0; i < data.size(); ++i) {
    data[i] = static_cast<char>((i * 7919) >> 3);
  }
  absl::StatusOr<Value> seen = pool->Invoke("faults.byte_len",
                                            {{"data", Bytes(data)}},
                                            {absl::Seconds(60)});
  ASSERT_TRUE(seen.ok()) << seen.status();
  EXPECT_EQ((*seen)["len"], kBig);

  absl::StatusOr<Value> made = pool->Invoke("faults.make_bytes",
                                            {{"n", kBig}}, {absl::Seconds(60)});
  ASSERT_TRUE(made.ok()) << made.status();
  ASSERT_TRUE(made->is_binary());
  const auto& bin = made->get_binary();
  ASSERT_EQ(bin.size(), kBig);
  for (size_t i = 0; i < bin.size(); i += 4093) {
    ASSERT_EQ(bin[i], static_cast<uint8_t>(i % 256)) << i;
  }
}

TEST(PoolTest, OneByteOverThePayloadLimitFailsBothWays) {
  PoolOptions options;
  options.max_payload_bytes = 1 << 20;
  auto pool = StartPool(1, kDebianPython, options);
  ASSERT_TRUE(pool);
  // A bin of n bytes encodes to n + 5 bytes inside a 1-entry map of
  // 6 more ("data" key + fixmap header).
  std::string over(options.max_payload_bytes - 11 + 1, 'x');
  absl::StatusOr<Value> r =
      pool->Invoke("faults.byte_len", {{"data", Bytes(over)}});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(ReasonOf(r.status()), "payload_too_large");
  EXPECT_NE(r.status().message().find("1048576-byte"), std::string::npos);
  EXPECT_NE(r.status().message().find("host→worker"), std::string::npos);
  std::string fits(options.max_payload_bytes - 11, 'x');
  EXPECT_TRUE(pool->Invoke("faults.byte_len", {{"data", Bytes(fits)}}).ok());

  // A bin of n bytes encodes to n + 5: n + 5 = limit + 1 is one over.
  int pid = pool->Invoke("faults.pid", nullptr)->get<int>();
  absl::StatusOr<Value> back = pool->Invoke(
      "faults.make_bytes", {{"n", options.max_payload_bytes - 5 + 1}});
  EXPECT_EQ(ReasonOf(back.status()), "payload_too_large") << back.status();
  EXPECT_NE(back.status().message().find("worker→host"), std::string::npos);
  EXPECT_EQ(*pool->Invoke("faults.pid", nullptr), pid);
}

// Raw arguments passed as an lvalue are written in place to an idle
// worker, and copied for a call that must queue; either way the caller
// keeps its string, and the worker sees every byte (12 MiB: past the
// host's huge-page body and the worker's huge-bin decode thresholds).
TEST(PoolTest, LargeRawArgumentsTheCallerKeepsRoundTripIdleOrQueued) {
  auto pool = StartPool(1);
  ASSERT_TRUE(pool);
  std::string data(12u << 20, '\0');
  for (size_t i = 0; i < data.size(); ++i) {
    data[i] = static_cast<char>((i * 131) >> 7);
  }
  std::string raw = *EncodeValue({{"value", Bytes(data)}});
  const std::string kept = raw;
  const std::string expected = *EncodeValue(Bytes(data));

  absl::StatusOr<std::string> idle =
      pool->SubmitRaw("faults.echo", raw).GetRaw();
  ASSERT_TRUE(idle.ok()) << idle.status();
  EXPECT_TRUE(*idle == expected);
  EXPECT_TRUE(raw == kept);

  Call blocker = pool->Submit("faults.sleep", {{"seconds", 0.3}});
  Call queued = pool->SubmitRaw("faults.echo", raw);
  std::fill(raw.begin(), raw.end(), 'z');  // the queued call has its copy
  raw.clear();
  raw.shrink_to_fit();
  absl::StatusOr<std::string> later = queued.GetRaw();
  ASSERT_TRUE(later.ok()) << later.status();
  EXPECT_TRUE(*later == expected);
  EXPECT_TRUE(blocker.Get().ok());
}

TEST(PoolTest, DeepNestingFailsCleanlyBothWays) {
  auto pool = StartPool(1);
  ASSERT_TRUE(pool);
  Value deep = Value::array();
  for (int i = 0; i < 100000; ++i) {
    Value outer = Value::array();
    outer.push_back(std::move(deep));
    deep = std::move(outer);
  }
  // Moved, not copied: nlohmann's copy constructor recurses.
  Value args = Value::object();
  args["value"] = std::move(deep);
  absl::StatusOr<Value> r = pool->Invoke("faults.echo", args);
  EXPECT_EQ(ReasonOf(r.status()), "payload_too_deep") << r.status();

  // The same nesting as raw msgpack, straight past the Value layer.
  std::string raw = "\x81\xa5value";
  raw.append(100000, '\x91');
  raw += '\xc0';
  r = pool->SubmitRaw("faults.echo", raw).Get();
  EXPECT_EQ(ReasonOf(r.status()), "payload_too_deep") << r.status();

  r = pool->Invoke("faults.deep", {{"levels", 100000}});
  EXPECT_EQ(ReasonOf(r.status()), "payload_too_deep") << r.status();
  EXPECT_EQ(*pool->Invoke("faults.add", {{"a", 9}}), 9);
}

TEST(PoolLifecycleTest, RecyclingByCallsLosesNoCall) {
  PoolOptions options;
  options.max_calls_per_worker = 5;
  auto pool = StartPool(2, kDebianPython, options);
  ASSERT_TRUE(pool);
  std::vector<Call> calls;
  for (int i = 0; i < 100; ++i) {
    calls.push_back(pool->Submit("faults.sleep", {{"seconds", 0.01}}));
  }
  for (int i = 0; i < 100; ++i) {
    absl::StatusOr<Value> r = calls[i].Get();
    ASSERT_TRUE(r.ok()) << i << ": " << r.status();
  }
  EXPECT_TRUE(AwaitFullSize(*pool, 2));
  absl::SleepFor(absl::Milliseconds(200));  // the last retiree's exit
  PoolStats stats = pool->Stats();
  // One worker at a time is recycled, and it serves on until its
  // replacement is ready, so there are far fewer than 100 / 5 recycles.
  EXPECT_GE(stats.restarts_by_reason["recycle_calls"], 1u);
  EXPECT_EQ(stats.restarts_by_reason.count("crash"), 0u);
}

TEST(PoolLifecycleTest, RecyclingByMemoryReplacesALeakyWorker) {
  PoolOptions options;
  options.max_worker_rss_bytes = 200u << 20;
  auto pool = StartPool(1, kDebianPython, options);
  ASSERT_TRUE(pool);
  std::set<int> pids;
  for (int i = 0; i < 8; ++i) {
    absl::StatusOr<Value> r = pool->Invoke("faults.leak", {{"mb", 50}},
                                           {absl::Seconds(30)});
    ASSERT_TRUE(r.ok()) << r.status();
    pids.insert(r->get<int>());
  }
  EXPECT_GE(pids.size(), 2u);
  EXPECT_GE(pool->Stats().restarts_by_reason["recycle_memory"], 1u);
}

// The memory of a worker's children counts: a worker whose child holds
// 200 MB is over a 150 MB limit although it is small itself, and is
// recycled, its child with it.
TEST(PoolLifecycleTest, RecyclingByMemoryCountsTheWholeProcessTree) {
  for (bool by_pss : {false, true}) {
    PoolOptions options;
    (by_pss ? options.max_worker_pss_bytes : options.max_worker_rss_bytes) =
        150u << 20;
    auto pool = StartPool(1, kDebianPython, options);
    ASSERT_TRUE(pool);
    int pid = pool->Invoke("faults.pid", nullptr)->get<int>();
    absl::StatusOr<Value> child =
        pool->Invoke("faults.child_hog", {{"mb", 200}}, {absl::Seconds(30)});
    ASSERT_TRUE(child.ok()) << child.status();
    int child_pid = child->get<int>();

    absl::Time limit = absl::Now() + absl::Seconds(10);
    while (kill(child_pid, 0) == 0 && absl::Now() < limit) {
      absl::SleepFor(absl::Milliseconds(20));
    }
    EXPECT_NE(kill(child_pid, 0), 0) << "the child outlived its worker";
    EXPECT_EQ(pool->Stats().restarts_by_reason["recycle_memory"], 1u);
    absl::StatusOr<Value> after = pool->Invoke("faults.pid", nullptr,
                                               {absl::Seconds(30)});
    ASSERT_TRUE(after.ok()) << after.status();
    EXPECT_NE(after->get<int>(), pid);
  }
}

TEST(PoolLifecycleTest, AWorkerOverTheMemoryLimitFromBirthIsNotChurned) {
  PoolOptions options;
  options.max_worker_rss_bytes = 1u << 20;  // below any Python's size
  auto pool = StartPool(1, kDebianPython, options);
  ASSERT_TRUE(pool);
  int pid = pool->Invoke("faults.pid", nullptr)->get<int>();
  for (int i = 0; i < 10; ++i) {
    EXPECT_EQ(*pool->Invoke("faults.pid", nullptr), pid);
  }
  EXPECT_EQ(pool->Stats().restarts, 0u);
}

TEST(PoolLifecycleTest, AStoppedIdleWorkerIsReplaced) {
  PoolOptions options;
  options.liveness_interval = absl::Milliseconds(200);
  options.liveness_timeout = absl::Milliseconds(300);
  auto pool = StartPool(1, kDebianPython, options);
  ASSERT_TRUE(pool);
  int pid = pool->Invoke("faults.pid", nullptr)->get<int>();
  ASSERT_EQ(kill(pid, SIGSTOP), 0);
  absl::Time limit = absl::Now() + absl::Seconds(5);
  while (pool->Stats().restarts == 0 && absl::Now() < limit) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_EQ(pool->Stats().restarts_by_reason["unresponsive"], 1u);
  absl::StatusOr<Value> after = pool->Invoke("faults.pid", nullptr,
                                             {absl::Seconds(10)});
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_NE(after->get<int>(), pid);
  EXPECT_NE(kill(pid, 0), 0) << "the stopped worker was not reaped";
}

TEST(PoolLifecycleTest, ALongCallHoldingTheGilIsSlowNotDead) {
  PoolOptions options;
  options.liveness_interval = absl::Milliseconds(100);
  options.liveness_timeout = absl::Milliseconds(200);
  auto pool = StartPool(1, kDebianPython, options);
  ASSERT_TRUE(pool);
  absl::StatusOr<Value> r = pool->Invoke("faults.spin", {{"seconds", 3}},
                                         {absl::Seconds(30)});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(pool->Stats().restarts, 0u);
}

// The full-length case: 30 s of pure-Python loop under liveness checks
// every 2 s, beside an idle worker that keeps being pinged.
TEST(PoolLifecycleTest, ThirtySecondsHoldingTheGilIsSlowNotDead) {
  PoolOptions options;
  options.liveness_interval = absl::Seconds(2);
  options.liveness_timeout = absl::Seconds(2);
  auto pool = StartPool(2, kDebianPython, options);
  ASSERT_TRUE(pool);
  absl::StatusOr<Value> r = pool->Invoke("faults.spin", {{"seconds", 30}},
                                         {absl::Seconds(60)});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(pool->Stats().restarts, 0u);
}

// A cancel with no deadline still ends a call that ignores it within
// the grace: the pool's timer must learn of the kill time at once.
TEST(PoolLifecycleTest, ACancelledDeafCallIsKilledAfterTheGrace) {
  PoolOptions options;
  options.cancel_grace = absl::Seconds(1);
  auto pool = StartPool(1, kDebianPython, options);
  ASSERT_TRUE(pool);
  Call call = pool->Submit("faults.spin", {{"seconds", 60}});
  absl::SleepFor(absl::Milliseconds(300));
  absl::Time cancelled = absl::Now();
  call.Cancel();
  while (pool->Stats().restarts == 0 &&
         absl::Now() - cancelled < absl::Seconds(10)) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_EQ(pool->Stats().restarts_by_reason["hung_call"], 1u);
  EXPECT_LT(SecondsSince(cancelled), 3.0);
}

int CountOpenFds() {
  int n = 0;
  DIR* dir = opendir("/proc/self/fd");
  while (readdir(dir) != nullptr) {
    ++n;
  }
  closedir(dir);
  return n;
}

// Workers recycled while the pool is idle take their fds with them.
TEST(PoolLifecycleTest, IdleRecyclingLeaksNoFds) {
  PoolOptions options;
  options.max_worker_age = absl::Milliseconds(100);
  auto pool = StartPool(2, kDebianPython, options);
  ASSERT_TRUE(pool);
  int before = CountOpenFds();
  absl::SleepFor(absl::Seconds(2));
  EXPECT_GE(pool->Stats().restarts_by_reason["recycle_age"], 4u);
  EXPECT_LT(CountOpenFds(), before + 20);
}

TEST(PoolHostileTest, MalformedLogHeaderDoesNotHurtTheHost) {
  auto pool = StartPool(1);
  ASSERT_TRUE(pool);
  absl::StatusOr<Value> r = pool->Invoke("faults.log_weird_level", nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(*r, "logged");
  EXPECT_EQ(*pool->Invoke("faults.add", {{"a", 1}}), 1);
}

TEST(PoolHostileTest, AFloodingWorkerDoesNotStallTheOthers) {
  auto pool = StartPool(2);
  ASSERT_TRUE(pool);
  Call flood = pool->Submit("faults.flood_stdout", {{"seconds", 3}});
  absl::SleepFor(absl::Milliseconds(200));
  absl::Time start = absl::Now();
  absl::StatusOr<Value> r = pool->Invoke("faults.add", {{"a", 2}});
  EXPECT_LT(SecondsSince(start), 1.0);
  EXPECT_EQ(*r, 2);
  flood.Cancel();
}

TEST(PoolHostileTest, UntakenChunksAreBoundedByThePayloadLimit) {
  PoolOptions options;
  options.max_payload_bytes = 1 << 20;
  auto pool = StartPool(1, kDebianPython, options);
  ASSERT_TRUE(pool);
  // 100 chunks of 64 KiB: Get() would have to hold them all.
  absl::StatusOr<Value> r = pool->Invoke(
      "faults.blobs", {{"n", 100}, {"size", 65536}}, {absl::Seconds(30)});
  EXPECT_EQ(ReasonOf(r.status()), "payload_too_large") << r.status();
  // Taken one by one, the same stream is fine.
  Call call = pool->Submit("faults.blobs", {{"n", 100}, {"size", 65536}},
                           {absl::Seconds(30)});
  int chunks = 0;
  while (true) {
    absl::StatusOr<std::optional<Value>> chunk = call.Next();
    ASSERT_TRUE(chunk.ok()) << chunk.status();
    if (!chunk->has_value()) {
      break;
    }
    ++chunks;
  }
  EXPECT_EQ(chunks, 100);
}

TEST(PoolHostileTest, DestroyingThePoolInACallbackIsSafe) {
  auto pool = StartPool(1);
  ASSERT_TRUE(pool);
  std::atomic<bool> ran{false};
  Pool* raw = pool.release();
  Call call = raw->Submit("faults.add", {{"a", 1}});
  call.OnComplete([&](const absl::Status&) {
    delete raw;  // on the pool's own thread
    ran = true;
  });
  absl::Time limit = absl::Now() + absl::Seconds(10);
  while (!ran && absl::Now() < limit) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_TRUE(ran);
  absl::SleepFor(absl::Milliseconds(500));  // the deferred shutdown
}

// Behaviour that must not depend on the interpreter or on whether the
// msgpack package is installed: runs on Debian's python3 (with msgpack)
// and on the first python3 in PATH (without it, on this project's
// machines).
class CodecPoolTest : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    pool_ = StartPool(1, GetParam());
    ASSERT_TRUE(pool_);
  }
  std::unique_ptr<Pool> pool_;
};

TEST_P(CodecPoolTest, ExceptionsKeepTypeMessageAndTraceback) {
  int pid = pool_->Invoke("faults.pid", nullptr)->get<int>();
  absl::StatusOr<Value> r = pool_->Invoke("faults.raise_two_arg", nullptr);
  EXPECT_EQ(ReasonOf(r.status()), "python_exception");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnknown);
  PythonDetails details = PythonDetailsOf(r.status());
  EXPECT_EQ(details.type, "faults.TwoArgError");
  EXPECT_NE(r.status().message().find("needs two arguments"),
            std::string::npos);
  EXPECT_NE(details.traceback.find("raise TwoArgError"), std::string::npos);

  r = pool_->Invoke("faults.raise_bad_str", nullptr);
  EXPECT_EQ(ReasonOf(r.status()), "python_exception");
  details = PythonDetailsOf(r.status());
  EXPECT_EQ(details.type, "faults.BadStrError");
  EXPECT_NE(r.status().message().find("unprintable"), std::string::npos);
  EXPECT_NE(details.traceback.find("raise BadStrError"), std::string::npos);
  EXPECT_EQ(*pool_->Invoke("faults.pid", nullptr), pid);
}

TEST_P(CodecPoolTest, UnencodableResultsNameTypeAndPath) {
  int pid = pool_->Invoke("faults.pid", nullptr)->get<int>();
  for (const char* kind : {"set", "object", "lock", "generator"}) {
    absl::StatusOr<Value> r =
        pool_->Invoke("faults.return_unencodable", {{"kind", kind}});
    EXPECT_EQ(ReasonOf(r.status()), "serialization_error") << kind;
    EXPECT_EQ(PythonDetailsOf(r.status()).path, "$.a[2]") << kind;
    std::string message(r.status().message());
    std::string type = std::string(kind) == "lock" ? "lock" : kind;
    EXPECT_NE(message.find(type), std::string::npos) << message;
  }
  EXPECT_EQ(*pool_->Invoke("faults.pid", nullptr), pid);
}

TEST_P(CodecPoolTest, SpecialFloatsRoundTripBitForBit) {
  absl::StatusOr<Value> r = pool_->Invoke("faults.floats", nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(std::isnan((*r)[0].get<double>()));
  EXPECT_EQ((*r)[1].get<double>(), INFINITY);
  EXPECT_EQ((*r)[2].get<double>(), -INFINITY);
  EXPECT_TRUE(std::signbit((*r)[3].get<double>()));
  EXPECT_EQ((*r)[4].get<double>(), 1e-310);

  Value sent = Value::array({std::nan(""), INFINITY, -INFINITY, -0.0, 0.1});
  absl::StatusOr<Value> bits = pool_->Invoke("faults.float_bits",
                                             {{"values", sent}});
  ASSERT_TRUE(bits.ok()) << bits.status();
  EXPECT_EQ(*bits, Value::array({"7ff8000000000000", "7ff0000000000000",
                                 "fff0000000000000", "8000000000000000",
                                 "3fb999999999999a"}));
  absl::StatusOr<Value> echoed = pool_->Invoke("faults.echo",
                                               {{"value", sent}});
  ASSERT_TRUE(echoed.ok());
  EXPECT_TRUE(std::signbit((*echoed)[3].get<double>()));
  EXPECT_EQ((*echoed)[4].get<double>(), 0.1);
}

TEST_P(CodecPoolTest, HugeIntegerIsAClearError) {
  absl::StatusOr<Value> r = pool_->Invoke("faults.bigint", nullptr);
  EXPECT_EQ(ReasonOf(r.status()), "serialization_error") << r.status();
  EXPECT_EQ(PythonDetailsOf(r.status()).path, "$.n");
  Value extremes = Value::array({INT64_MIN, UINT64_MAX});
  EXPECT_EQ(*pool_->Invoke("faults.echo", {{"value", extremes}}), extremes);
}

TEST_P(CodecPoolTest, StringsRoundTripExactly) {
  std::string tricky = "emoji \xF0\x9F\x90\x8D nul ";
  tricky += '\0';
  tricky += " sep \xE2\x80\xA8 end";
  absl::StatusOr<Value> r = pool_->Invoke("faults.echo", {{"value", tricky}});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->get<std::string>(), tricky);

  r = pool_->Invoke("faults.lone_surrogate", nullptr);
  EXPECT_EQ(ReasonOf(r.status()), "serialization_error") << r.status();
}

TEST_P(CodecPoolTest, BytesStayBytes) {
  std::string raw("\x00\xff\x80 binary", 10);
  absl::StatusOr<Value> r = pool_->Invoke("faults.echo",
                                          {{"value", Bytes(raw)}});
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_TRUE(r->is_binary());
  EXPECT_EQ(std::string(r->get_binary().begin(), r->get_binary().end()), raw);
}

INSTANTIATE_TEST_SUITE_P(Interpreters, CodecPoolTest,
                         ::testing::Values("/usr/bin/python3", "python3"));

TEST(PoolStartTest, ImportErrorFailsStartWithTheTraceback) {
  PoolOptions options;
  options.modules = {FixturePath("broken_import.py")};
  options.python = kDebianPython;
  absl::Time start = absl::Now();
  absl::StatusOr<std::unique_ptr<Pool>> pool = Pool::Start(options);
  EXPECT_LT(SecondsSince(start), 5.0);
  ASSERT_FALSE(pool.ok());
  EXPECT_EQ(ReasonOf(pool.status()), "import_error");
  EXPECT_NE(pool.status().message().find("fails at import"),
            std::string::npos)
      << pool.status();
  EXPECT_NE(PythonDetailsOf(pool.status()).traceback.find("broken_import"),
            std::string::npos);
}

TEST(PoolStartTest, MissingInterpreterFailsStart) {
  PoolOptions options;
  options.modules = {FixturePath("faults.py")};
  options.python = "/nonexistent/python3";
  absl::StatusOr<std::unique_ptr<Pool>> pool = Pool::Start(options);
  ASSERT_FALSE(pool.ok());
  EXPECT_EQ(ReasonOf(pool.status()), "worker_start_failed") << pool.status();
}

TEST(PoolStartTest, ShutdownLeavesNoWorkerBehind) {
  auto pool = StartPool(3);
  ASSERT_TRUE(pool);
  std::vector<int> pids;
  for (int i = 0; i < 6; ++i) {
    pids.push_back(pool->Invoke("faults.pid", nullptr)->get<int>());
  }
  pool->Shutdown();
  for (int pid : pids) {
    EXPECT_NE(kill(pid, 0), 0) << "worker " << pid << " still exists";
  }
  absl::StatusOr<Value> r = pool->Invoke("faults.pid", nullptr);
  EXPECT_EQ(ReasonOf(r.status()), "pool_closed");
}

}  // namespace
}  // namespace snakepit

int main(int argc, char** argv) {
  snakepit::testing::InstallLogCapture();
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
