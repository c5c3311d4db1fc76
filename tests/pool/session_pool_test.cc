// Calls in sessions, through a real pool of Python workers and a memory
// session store: variables, programs, ctx.session.local, affinity and
// on_session_end.

#include <signal.h>

#include <atomic>
#include <filesystem>
#include <set>
#include <thread>

#include "gtest/gtest.h"
#include "snakepit/base/status.h"
#include "snakepit/pool/pool.h"
#include "snakepit/session/open_store.h"
#include "snakepit/session/pool_backend.h"

namespace snakepit {
namespace {

class SessionPoolTest : public ::testing::Test {
 protected:
  void SetUp() override {
    StoreConfig config;
    config.max_program_bytes = 1024;
    config.sweep_interval = absl::Milliseconds(100);
    store_ = std::shared_ptr<SessionStore>(*OpenStore(config));
    PoolOptions options;
    options.modules = {std::string(SNAKEPIT_TEST_DIR) +
                       "/pool/fixtures/sessions.py"};
    options.python = "/usr/bin/python3";
    options.size = 2;
    options.sessions = MakePoolBackend(store_);
    auto pool = Pool::Start(options);
    ASSERT_TRUE(pool.ok()) << pool.status();
    pool_ = std::move(*pool);
    listener_ = store_->AddDeleteListener(
        [this](const std::string& id, DeleteCause) {
          pool_->EndSession(id);
        });
  }

  void TearDown() override {
    store_->RemoveDeleteListener(listener_);
    pool_.reset();
  }

  std::string NewSession() {
    auto created = store_->Create({});
    EXPECT_TRUE(created.ok());
    return (*created).session->id;
  }

  absl::StatusOr<Value> In(const std::string& session, const char* fn,
                           const Value& args,
                           Affinity affinity = Affinity::kHint) {
    CallOptions options;
    options.session = session;
    options.affinity = affinity;
    options.timeout = absl::Seconds(30);
    return pool_->Submit(fn, args, options).Get();
  }

  std::shared_ptr<SessionStore> store_;
  std::unique_ptr<Pool> pool_;
  int listener_ = 0;
};

TEST_F(SessionPoolTest, VariablesAndLocalObjectsFollowTheSession) {
  std::vector<std::string> sessions;
  for (int i = 0; i < 8; ++i) {
    sessions.push_back(NewSession());
    ASSERT_TRUE(In(sessions[i], "sessions.remember",
                   {{"key", "k"}, {"value", i}})
                    .ok());
  }
  // One call at a time: each session's worker is free, so `hint` always
  // finds its local objects.
  for (int round = 0; round < 100; ++round) {
    int i = round % 8;
    absl::StatusOr<Value> r =
        In(sessions[i], "sessions.recall", {{"key", "k"}});
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ((*r)["var"], i);
    EXPECT_EQ((*r)["local"], i) << "round " << round;
  }
}

TEST_F(SessionPoolTest, ConcurrentCallsUnderHintAllSucceed) {
  std::vector<std::string> sessions;
  for (int i = 0; i < 8; ++i) {
    sessions.push_back(NewSession());
    ASSERT_TRUE(In(sessions[i], "sessions.remember",
                   {{"key", "k"}, {"value", i}})
                    .ok());
  }
  std::vector<Call> calls;
  for (int i = 0; i < 100; ++i) {
    CallOptions options;
    options.session = sessions[i % 8];
    calls.push_back(
        pool_->Submit("sessions.recall", {{"key", "k"}}, options));
  }
  int with_local = 0;
  for (int i = 0; i < 100; ++i) {
    absl::StatusOr<Value> r = calls[i].Get();
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ((*r)["var"], i % 8);  // variables are always there
    with_local += (*r)["local"] == i % 8;
  }
  EXPECT_GT(with_local, 0);
}

TEST_F(SessionPoolTest, KilledPinnedWorkerStrictFailsAndHintMovesOn) {
  std::string s = NewSession();
  int pid = In(s, "sessions.remember", {{"key", "k"}, {"value", 7}})
                ->get<int>();
  ASSERT_EQ(kill(pid, SIGKILL), 0);
  absl::Time limit = absl::Now() + absl::Seconds(5);
  while (pool_->Stats().restarts == 0 && absl::Now() < limit) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  absl::StatusOr<Value> strict =
      In(s, "sessions.recall", {{"key", "k"}}, Affinity::kStrictFail);
  EXPECT_EQ(ReasonOf(strict.status()), "session_worker_lost")
      << strict.status();
  absl::StatusOr<Value> hint = In(s, "sessions.recall", {{"key", "k"}});
  ASSERT_TRUE(hint.ok()) << hint.status();
  EXPECT_NE((*hint)["pid"], pid);
  EXPECT_EQ((*hint)["var"], 7);        // the store kept it
  EXPECT_EQ((*hint)["local"], nullptr);  // the new worker has no objects
}

TEST_F(SessionPoolTest, StrictAffinityOnABusyPinnedWorker) {
  std::string s = NewSession();
  int pinned = In(s, "sessions.remember", {{"key", "k"}, {"value", 1}})
                   ->get<int>();
  CallOptions in_session;
  in_session.session = s;
  Call busy = pool_->Submit("sessions.hold", {{"seconds", 0.5}},
                            in_session);
  absl::SleepFor(absl::Milliseconds(100));

  absl::Time start = absl::Now();
  absl::StatusOr<Value> failed =
      In(s, "sessions.recall", {{"key", "k"}}, Affinity::kStrictFail);
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(100));
  EXPECT_EQ(ReasonOf(failed.status()), "session_worker_busy")
      << failed.status();

  // strict-queue waits for the pinned worker although the other is idle.
  absl::StatusOr<Value> waited =
      In(s, "sessions.recall", {{"key", "k"}}, Affinity::kStrictQueue);
  ASSERT_TRUE(waited.ok()) << waited.status();
  EXPECT_EQ((*waited)["pid"], pinned);
  EXPECT_EQ((*waited)["local"], 1);
  EXPECT_EQ(*busy.Get(), pinned);
}

TEST_F(SessionPoolTest, ConcurrentUpdatesLoseNothing) {
  std::string s = NewSession();
  std::vector<Call> calls;
  CallOptions options;
  options.session = s;
  for (int i = 0; i < 200; ++i) {
    calls.push_back(pool_->Submit("sessions.bump", nullptr, options));
  }
  for (Call& c : calls) {
    absl::StatusOr<Value> got = c.Get();
    ASSERT_TRUE(got.ok()) << got.status();
  }
  absl::StatusOr<Value> n = In(s, "sessions.bump", nullptr);
  EXPECT_EQ(*n, 201);
}

TEST_F(SessionPoolTest, ProgramsAndTheirLimit) {
  std::string s = NewSession();
  ASSERT_TRUE(In(s, "sessions.save_program", {{"name", "fit"}, {"size", 100}})
                  .ok());
  EXPECT_EQ(*In(s, "sessions.load_program", {{"name", "fit"}}), 100);
  absl::StatusOr<Value> big =
      In(s, "sessions.save_program", {{"name", "big"}, {"size", 5000}});
  EXPECT_EQ(ReasonOf(big.status()), "python_exception");
  EXPECT_NE(big.status().message().find("program_too_large"),
            std::string::npos)
      << big.status();
  absl::StatusOr<Value> missing =
      In(s, "sessions.load_program", {{"name", "nope"}});
  EXPECT_NE(missing.status().message().find("program_not_found"),
            std::string::npos);
  EXPECT_EQ(*In(s, "sessions.load_program", {{"name", "fit"}}), 100);
}

TEST_F(SessionPoolTest, DeletingASessionRunsOnSessionEndWhereItWas) {
  std::string folder = ::testing::TempDir() + "/session_end";
  std::filesystem::remove_all(folder);
  std::filesystem::create_directories(folder);
  std::string s = NewSession();
  std::set<int> pids;
  // Strict-queue keeps to one worker; a hint call after the worker is
  // busy may land on the other: both hold the session then.
  pids.insert(In(s, "sessions.mark_end", {{"folder", folder}})->get<int>());
  ASSERT_TRUE(store_->Delete(s).ok());
  absl::Time limit = absl::Now() + absl::Seconds(5);
  size_t files = 0;
  while (absl::Now() < limit) {
    files = std::distance(std::filesystem::directory_iterator(folder),
                          std::filesystem::directory_iterator());
    if (files == pids.size()) {
      break;
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_EQ(files, pids.size());
  for (int pid : pids) {
    EXPECT_TRUE(std::filesystem::exists(folder + "/" + s + "." +
                                        std::to_string(pid)));
  }
}

TEST_F(SessionPoolTest, ExpiryDropsTheWorkersLocalObjects) {
  std::string folder = ::testing::TempDir() + "/session_expiry";
  std::filesystem::remove_all(folder);
  std::filesystem::create_directories(folder);
  CreateOptions options;
  options.ttl = absl::Milliseconds(300);
  std::string s = (*store_->Create(options)).session->id;
  int pid = In(s, "sessions.mark_end", {{"folder", folder}})->get<int>();
  // Nobody uses it now: the reaper expires it, the pool tells the worker.
  std::string marker = folder + "/" + s + "." + std::to_string(pid);
  absl::Time limit = absl::Now() + absl::Seconds(10);
  while (!std::filesystem::exists(marker) && absl::Now() < limit) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_TRUE(std::filesystem::exists(marker));
  EXPECT_EQ(ReasonOf(In(s, "sessions.bump", nullptr).status()),
            "session_not_found");
}

TEST_F(SessionPoolTest, BadSessionsFailClearly) {
  absl::StatusOr<Value> r = In("no-such-session", "sessions.bump", nullptr);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(ReasonOf(r.status()), "session_not_found");
  r = In("bad id with spaces!", "sessions.bump", nullptr);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ReasonOf(r.status()), "invalid_session_id");
  // A function that uses ctx.session outside a session gets None.
  absl::StatusOr<Value> pid = pool_->Invoke("sessions.pid", nullptr);
  EXPECT_TRUE(pid.ok());
}

}  // namespace
}  // namespace snakepit
