// Zygote against real Python: python/tests/fixtures/sp_fixture_mod.py and
// friends, imported once by a zygote that forks the workers.

#include "snakepit/worker/zygote.h"

#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <fstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "snakepit/base/status.h"
#include "snakepit/base/value.h"
#include "snakepit/os/process.h"
#include "snakepit/protocol/frame.h"

namespace snakepit::worker {
namespace {

using protocol::FrameType;

constexpr char kMod[] = "sp_fixture_mod";

WorkerSpec Spec(const std::vector<std::string>& modules) {
  WorkerSpec spec;
  spec.pool = "zygote_test";
  spec.python = "/usr/bin/python3";
  spec.modules = modules;
  spec.search_paths = {SNAKEPIT_PYTHON_FIXTURES};
  spec.max_payload = 1 << 20;
  spec.max_depth = 64;
  spec.runtime_dir = FindRuntimeDir("").value_or("");
  return spec;
}

absl::Time Soon() { return absl::Now() + absl::Seconds(15); }

std::unique_ptr<Zygote> StartZygote(
    const std::vector<std::string>& modules = {kMod}) {
  absl::StatusOr<std::unique_ptr<Zygote>> zygote =
      Zygote::Start(Spec(modules), Soon());
  EXPECT_TRUE(zygote.ok()) << zygote.status();
  return zygote.ok() ? std::move(*zygote) : nullptr;
}

// The next frame on the worker's channel, within 15 s.
absl::StatusOr<protocol::Frame> ReadFrame(WorkerProcess& worker,
                                          protocol::FrameReader& reader) {
  absl::Time limit = Soon();
  while (reader.frames().empty()) {
    if (absl::Now() > limit) {
      return absl::DeadlineExceededError("no frame from the worker");
    }
    struct pollfd pfd = {worker.channel_fd(), POLLIN, 0};
    ::poll(&pfd, 1, 100);
    bool eof = false;
    if (absl::Status s = reader.ReadFrom(worker.channel_fd(), &eof);
        !s.ok()) {
      return s;
    }
    if (eof && reader.frames().empty()) {
      return absl::UnavailableError("the worker closed its channel");
    }
  }
  protocol::Frame frame = std::move(reader.frames().front());
  reader.frames().pop_front();
  return frame;
}

// Reads HELLO and READY; returns READY's function names.
std::vector<std::string> Handshake(WorkerProcess& worker,
                                   protocol::FrameReader& reader) {
  absl::StatusOr<protocol::Frame> hello = ReadFrame(worker, reader);
  EXPECT_TRUE(hello.ok() && hello->type == FrameType::kHello);
  if (hello.ok()) {
    Value header = protocol::DecodeHeader(hello->header).value();
    EXPECT_EQ(header["pid"].get<int64_t>(), worker.pid());
  }
  absl::StatusOr<protocol::Frame> ready = ReadFrame(worker, reader);
  std::vector<std::string> names;
  EXPECT_TRUE(ready.ok() && ready->type == FrameType::kReady);
  if (ready.ok()) {
    Value header = protocol::DecodeHeader(ready->header).value();
    for (const Value& entry : header["functions"]) {
      names.push_back(entry["name"].get<std::string>());
    }
  }
  return names;
}

// Calls `function` with `args` the way the pool does (one CALL frame)
// and returns the decoded RESULT.
absl::StatusOr<Value> CallOnce(WorkerProcess& worker,
                               protocol::FrameReader& reader,
                               const std::string& function,
                               const Value& args) {
  protocol::HeaderWriter header;
  header.MapHeader(1);
  header.String("fn");
  header.String(function);
  absl::StatusOr<std::string> body = EncodeValue(args);
  if (!body.ok()) {
    return body.status();
  }
  if (absl::Status s =
          worker.Send(FrameType::kCall, 7, header.data(), *body, Soon());
      !s.ok()) {
    return s;
  }
  absl::StatusOr<protocol::Frame> reply = ReadFrame(worker, reader);
  if (!reply.ok()) {
    return reply.status();
  }
  if (reply->type != FrameType::kResult || reply->id != 7) {
    return absl::InternalError(absl::StrCat(
        "expected RESULT, got frame type ", static_cast<int>(reply->type)));
  }
  return DecodeValue(reply->body);
}

// Waits until `pid` is gone or a zombie, for up to `timeout`.
bool ProcessEnds(pid_t pid, absl::Duration timeout) {
  absl::Time limit = absl::Now() + timeout;
  while (absl::Now() < limit) {
    std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
    std::string line;
    if (!std::getline(stat, line)) {
      return true;
    }
    size_t close = line.rfind(')');
    if (close != std::string::npos && close + 2 < line.size() &&
        (line[close + 2] == 'Z' || line[close + 2] == 'X')) {
      return true;
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
  return false;
}

// The exit TryReap returns once the worker has ended, within 5 s.
absl::StatusOr<std::optional<os::ExitInfo>> ReapWithin5s(
    WorkerProcess& worker) {
  if (!os::AwaitExit(worker.pidfd(), absl::Seconds(5))) {
    return absl::DeadlineExceededError("the worker did not exit");
  }
  return worker.TryReap();
}

TEST(ZygoteTest, ForkedWorkersHandshakeAndServeACall) {
  std::unique_ptr<Zygote> zygote = StartZygote({kMod, "sp_fixture_zygote"});
  ASSERT_NE(zygote, nullptr);
  for (int i = 0; i < 3; ++i) {
    absl::StatusOr<std::unique_ptr<WorkerProcess>> worker =
        zygote->Fork(Soon());
    ASSERT_TRUE(worker.ok()) << worker.status();
    protocol::FrameReader reader(1 << 20);
    std::vector<std::string> names = Handshake(**worker, reader);
    EXPECT_NE(std::find(names.begin(), names.end(), "sp_fixture_mod.add"),
              names.end());

    absl::StatusOr<Value> sum =
        CallOnce(**worker, reader, "sp_fixture_mod.add", Value::array({i, 10}));
    ASSERT_TRUE(sum.ok()) << sum.status();
    EXPECT_EQ(sum->get<int64_t>(), i + 10);

    // The on_start hook ran in the worker, not in the zygote.
    absl::StatusOr<Value> starts = CallOnce(
        **worker, reader, "sp_fixture_zygote.starts", Value::array());
    ASSERT_TRUE(starts.ok()) << starts.status();
    EXPECT_EQ(*starts, Value::array({(*worker)->pid()}));
  }
}

TEST(ZygoteTest, TryReapIsEmptyWhileTheWorkerRuns) {
  std::unique_ptr<Zygote> zygote = StartZygote();
  ASSERT_NE(zygote, nullptr);
  auto worker = zygote->Fork(Soon());
  ASSERT_TRUE(worker.ok()) << worker.status();
  absl::StatusOr<std::optional<os::ExitInfo>> exit = (*worker)->TryReap();
  ASSERT_TRUE(exit.ok()) << exit.status();
  EXPECT_FALSE(exit->has_value());
}

TEST(ZygoteTest, WorkerKilledBySigkillIsReportedAsSignal9) {
  std::unique_ptr<Zygote> zygote = StartZygote();
  ASSERT_NE(zygote, nullptr);
  auto worker = zygote->Fork(Soon());
  ASSERT_TRUE(worker.ok()) << worker.status();
  protocol::FrameReader reader(1 << 20);
  Handshake(**worker, reader);

  ASSERT_EQ(::kill((*worker)->pid(), SIGKILL), 0);
  absl::StatusOr<std::optional<os::ExitInfo>> exit = ReapWithin5s(**worker);
  ASSERT_TRUE(exit.ok()) << exit.status();
  ASSERT_TRUE(exit->has_value());
  EXPECT_TRUE((*exit)->signalled);
  EXPECT_EQ((*exit)->code, 9);
  EXPECT_EQ((*exit)->Describe(), "killed by signal 9 (SIGKILL)");

  // Reaped once, as a spawned child would be.
  EXPECT_FALSE((*worker)->TryReap().ok());
  EXPECT_TRUE(ProcessEnds((*worker)->pid(), absl::Seconds(5)));
}

TEST(ZygoteTest, CleanExitIsReportedWithItsStatus) {
  std::unique_ptr<Zygote> zygote = StartZygote();
  ASSERT_NE(zygote, nullptr);
  auto worker = zygote->Fork(Soon());
  ASSERT_TRUE(worker.ok()) << worker.status();
  protocol::FrameReader reader(1 << 20);
  Handshake(**worker, reader);

  ASSERT_TRUE((*worker)->Send(FrameType::kGoodbye, 0, "", "", Soon()).ok());
  absl::StatusOr<std::optional<os::ExitInfo>> exit = ReapWithin5s(**worker);
  ASSERT_TRUE(exit.ok()) << exit.status();
  ASSERT_TRUE(exit->has_value());
  EXPECT_EQ((*exit)->Describe(), "exited with status 0");
}

TEST(ZygoteTest, ImportErrorFailsStartWithTheException) {
  absl::StatusOr<std::unique_ptr<Zygote>> zygote =
      Zygote::Start(Spec({"sp_fixture_broken"}), Soon());
  ASSERT_FALSE(zygote.ok());
  EXPECT_EQ(ReasonOf(zygote.status()), "import_error");
  EXPECT_EQ(zygote.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(zygote.status().message().find("broken on purpose"),
            std::string::npos)
      << zygote.status();
  PythonDetails details = PythonDetailsOf(zygote.status());
  EXPECT_EQ(details.type, "RuntimeError");
  EXPECT_NE(details.traceback.find("sp_fixture_broken.py"), std::string::npos)
      << details.traceback;
}

TEST(ZygoteTest, ThreadStartedAtImportFailsStart) {
  absl::StatusOr<std::unique_ptr<Zygote>> zygote =
      Zygote::Start(Spec({"sp_fixture_thread"}), Soon());
  ASSERT_FALSE(zygote.ok());
  EXPECT_EQ(ReasonOf(zygote.status()), "worker_start_failed");
  EXPECT_NE(zygote.status().message().find("thread"), std::string::npos)
      << zygote.status();
}

TEST(ZygoteTest, KilledZygoteEndsItsWorkersWithin2s) {
  std::unique_ptr<Zygote> zygote = StartZygote();
  ASSERT_NE(zygote, nullptr);
  std::vector<std::unique_ptr<WorkerProcess>> workers;
  for (int i = 0; i < 2; ++i) {
    auto worker = zygote->Fork(Soon());
    ASSERT_TRUE(worker.ok()) << worker.status();
    protocol::FrameReader reader(1 << 20);
    Handshake(**worker, reader);
    workers.push_back(std::move(*worker));
  }

  ASSERT_EQ(::kill(zygote->pid(), SIGKILL), 0);
  for (auto& worker : workers) {
    EXPECT_TRUE(os::AwaitExit(worker->pidfd(), absl::Seconds(2)))
        << "worker " << worker->pid();
  }
  EXPECT_TRUE(os::AwaitExit(zygote->pidfd(), absl::Seconds(2)));
  absl::Time limit = absl::Now() + absl::Seconds(5);
  while (zygote->alive() && absl::Now() < limit) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_FALSE(zygote->alive());
  EXPECT_FALSE(zygote->Fork(Soon()).ok());

  // The zygote died before it could report: status unknown.
  absl::StatusOr<std::optional<os::ExitInfo>> exit = workers[0]->TryReap();
  EXPECT_EQ(exit.status().code(), absl::StatusCode::kUnavailable)
      << exit.status();
}

TEST(ZygoteTest, DestroyingTheZygoteEndsItsWorkers) {
  std::unique_ptr<Zygote> zygote = StartZygote();
  ASSERT_NE(zygote, nullptr);
  auto worker = zygote->Fork(Soon());
  ASSERT_TRUE(worker.ok()) << worker.status();
  protocol::FrameReader reader(1 << 20);
  Handshake(**worker, reader);
  pid_t zygote_pid = zygote->pid();

  zygote.reset();
  EXPECT_TRUE(os::AwaitExit((*worker)->pidfd(), absl::Seconds(5)));
  EXPECT_TRUE(ProcessEnds(zygote_pid, absl::Seconds(5)));
}

TEST(ZygoteTest, WorkerLeadsItsGroupAndItsChildDiesWithIt) {
  std::unique_ptr<Zygote> zygote = StartZygote();
  ASSERT_NE(zygote, nullptr);
  auto worker = zygote->Fork(Soon());
  ASSERT_TRUE(worker.ok()) << worker.status();
  protocol::FrameReader reader(1 << 20);
  Handshake(**worker, reader);
  pid_t pid = (*worker)->pid();
  EXPECT_EQ(::getpgid(pid), pid);

  absl::StatusOr<Value> sleeper = CallOnce(
      **worker, reader, "sp_fixture_mod.spawn_sleeper", Value::array());
  ASSERT_TRUE(sleeper.ok()) << sleeper.status();
  pid_t sleep_pid = static_cast<pid_t>(sleeper->get<int64_t>());
  EXPECT_EQ(::getpgid(sleep_pid), pid);

  (*worker)->SignalGroup(SIGKILL);
  EXPECT_TRUE(ProcessEnds(sleep_pid, absl::Seconds(5)));
  absl::StatusOr<std::optional<os::ExitInfo>> exit = ReapWithin5s(**worker);
  ASSERT_TRUE(exit.ok()) << exit.status();
  ASSERT_TRUE(exit->has_value());
  EXPECT_EQ((*exit)->code, SIGKILL);
}

TEST(ZygoteTest, ForksFromSeveralThreadsAtOnce) {
  std::unique_ptr<Zygote> zygote = StartZygote();
  ASSERT_NE(zygote, nullptr);
  std::vector<std::unique_ptr<WorkerProcess>> workers(8);
  std::vector<std::thread> threads;
  for (auto& slot : workers) {
    threads.emplace_back([&] {
      auto worker = zygote->Fork(Soon());
      if (worker.ok()) {
        slot = std::move(*worker);
      }
    });
  }
  for (std::thread& thread : threads) {
    thread.join();
  }
  for (auto& worker : workers) {
    ASSERT_NE(worker, nullptr);
    protocol::FrameReader reader(1 << 20);
    Handshake(*worker, reader);
  }
}

}  // namespace
}  // namespace snakepit::worker
