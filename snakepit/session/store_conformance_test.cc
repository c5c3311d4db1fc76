// The session store contract (docs/sessions.md) as tests, run against
// every store. A new store passes when it passes this file: add its
// factory to INSTANTIATE_TEST_SUITE_P at the bottom.

#include <atomic>
#include <latch>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

#include "snakepit/base/status.h"
#include "snakepit/base/value.h"
#include "snakepit/session/errors.h"
#include "snakepit/session/export.h"
#include "snakepit/session/store.h"
#include "snakepit/session/testing/store_test_util.h"

namespace snakepit {
namespace {

using testing::DeleteLog;
using testing::FakeClock;
using testing::ScopedTempDir;
using testing::StoreFactory;
using testing::WaitFor;

// Long enough for a loaded CI machine, short enough to fail a hang.
constexpr absl::Duration kPatience = absl::Seconds(20);

class StoreConformanceTest : public ::testing::TestWithParam<StoreFactory> {
 protected:
  // A fresh store; sweeps run often so that expiry tests finish quickly.
  std::unique_ptr<SessionStore> Open(StoreConfig config = {}) {
    if (config.sweep_interval == StoreConfig().sweep_interval) {
      config.sweep_interval = absl::Milliseconds(10);
    }
    absl::StatusOr<std::unique_ptr<SessionStore>> store =
        GetParam().open(std::move(config), dir_.NewSubdir());
    EXPECT_TRUE(store.ok()) << store.status();
    return store.ok() ? *std::move(store) : nullptr;
  }

  // A store whose clock only moves when the test says.
  std::unique_ptr<SessionStore> OpenWithFakeClock(StoreConfig config = {}) {
    config.clock = clock_.AsFunction();
    return Open(std::move(config));
  }

  static CreateOptions Named(const std::string& id) {
    CreateOptions options;
    options.id = id;
    return options;
  }

  ScopedTempDir dir_;
  FakeClock clock_;
};

std::string Msgpack(const Value& value) {
  return *EncodeValue(value);
}

int64_t CounterOf(const SessionRecord& record) {
  auto it = record.variables.find("n");
  return it == record.variables.end() ? 0
                                      : DecodeValue(it->second)->get<int64_t>();
}

absl::Status Increment(SessionRecord& record) {
  record.variables["n"] = Msgpack(CounterOf(record) + 1);
  return absl::OkStatus();
}

// --- Create ---------------------------------------------------------------

TEST_P(StoreConformanceTest, CreateMakesVersionOneWithOptions) {
  auto store = OpenWithFakeClock();
  CreateOptions options = Named("s1");
  options.metadata = {{"user", "ada"}};
  options.ttl = absl::Minutes(5);
  options.owner = "node-a";
  absl::StatusOr<CreateResult> created = store->Create(options);
  ASSERT_TRUE(created.ok()) << created.status();
  EXPECT_TRUE(created->created);
  const SessionRecord& s = *created->session;
  EXPECT_EQ(s.id, "s1");
  EXPECT_EQ(s.version, 1u);
  EXPECT_EQ(s.metadata.at("user"), "ada");
  EXPECT_EQ(s.ttl, absl::Minutes(5));
  EXPECT_EQ(s.owner, "node-a");
  EXPECT_EQ(s.created, clock_.Now());
  EXPECT_EQ(s.last_used, clock_.Now());
  EXPECT_EQ(*store->Count(), 1u);
}

TEST_P(StoreConformanceTest, CreateWithoutTtlUsesTheDefault) {
  StoreConfig config;
  config.default_ttl = absl::Minutes(7);
  auto store = Open(config);
  absl::StatusOr<CreateResult> created = store->Create(Named("s1"));
  ASSERT_TRUE(created.ok()) << created.status();
  EXPECT_EQ(created->session->ttl, absl::Minutes(7));
  EXPECT_EQ(StoreConfig().default_ttl, absl::Hours(1));
}

TEST_P(StoreConformanceTest, CreateWithoutIdMakesARandomOne) {
  auto store = Open();
  absl::StatusOr<CreateResult> a = store->Create({});
  absl::StatusOr<CreateResult> b = store->Create({});
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->session->id.size(), 32u);
  EXPECT_NE(a->session->id, b->session->id);
  EXPECT_TRUE(*store->Exists(a->session->id));
}

TEST_P(StoreConformanceTest, CreateIsIdempotent) {
  auto store = Open();
  CreateOptions first = Named("s1");
  first.metadata = {{"k", "first"}};
  ASSERT_TRUE(store->Create(first).ok());
  CreateOptions second = Named("s1");
  second.metadata = {{"k", "second"}};
  absl::StatusOr<CreateResult> again = store->Create(second);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_FALSE(again->created);
  EXPECT_EQ(again->session->version, 1u);
  EXPECT_EQ(again->session->metadata.at("k"), "first");
  EXPECT_EQ(*store->Count(), 1u);
}

TEST_P(StoreConformanceTest, StrictCreateOfExistingIdFails) {
  auto store = Open();
  ASSERT_TRUE(store->Create(Named("s1")).ok());
  CreateOptions strict = Named("s1");
  strict.strict = true;
  absl::StatusOr<CreateResult> again = store->Create(strict);
  EXPECT_EQ(again.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(ReasonOf(again.status()), reason::kSessionExists);
}

TEST_P(StoreConformanceTest, FiftyConcurrentCreatesOfOneIdCreateItOnce) {
  auto store = Open();
  constexpr int kThreads = 50;
  std::latch start(kThreads);
  std::atomic<int> created{0};
  std::atomic<int> failed{0};
  std::vector<SessionRef> seen(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      start.arrive_and_wait();
      absl::StatusOr<CreateResult> r = store->Create(Named("shared"));
      if (!r.ok()) {
        ++failed;
        return;
      }
      created += r->created;
      seen[t] = r->session;
    });
  }
  for (std::thread& thread : threads) {
    thread.join();
  }
  EXPECT_EQ(failed.load(), 0);
  EXPECT_EQ(created.load(), 1);
  for (const SessionRef& s : seen) {
    ASSERT_NE(s, nullptr);
    EXPECT_EQ(s->version, 1u);
    EXPECT_EQ(s->created, seen[0]->created);
  }
  EXPECT_EQ(*store->Count(), 1u);
  EXPECT_TRUE(store->Get("shared").ok());
}

TEST_P(StoreConformanceTest, CreateBeyondTheCapFailsNamingIt) {
  StoreConfig config;
  config.max_sessions = 3;
  auto store = Open(config);
  for (const char* id : {"a", "b", "c"}) {
    ASSERT_TRUE(store->Create(Named(id)).ok());
  }
  absl::StatusOr<CreateResult> over = store->Create(Named("d"));
  EXPECT_EQ(over.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(ReasonOf(over.status()), reason::kSessionLimit);
  EXPECT_NE(std::string(over.status().message()).find("limit of 3"),
            std::string::npos)
      << over.status();
  // An existing id is still served at the cap, and a delete frees a slot.
  EXPECT_TRUE(store->Create(Named("a")).ok());
  ASSERT_TRUE(store->Delete("b").ok());
  EXPECT_TRUE(store->Create(Named("d")).ok());
  EXPECT_EQ(*store->Count(), 3u);
}

TEST_P(StoreConformanceTest, ExpiredSessionsDoNotHoldSlotsAtTheCap) {
  StoreConfig config;
  config.max_sessions = 2;
  config.sweep_interval = absl::InfiniteDuration();  // no reaper
  auto store = OpenWithFakeClock(config);
  CreateOptions brief = Named("a");
  brief.ttl = absl::Minutes(1);
  ASSERT_TRUE(store->Create(brief).ok());
  brief.id = "b";
  ASSERT_TRUE(store->Create(brief).ok());
  clock_.Advance(absl::Minutes(2));
  absl::StatusOr<CreateResult> c = store->Create(Named("c"));
  EXPECT_TRUE(c.ok()) << c.status();
}

TEST_P(StoreConformanceTest, CreateOverAnExpiredIdStartsAFreshSession) {
  auto store = OpenWithFakeClock();
  DeleteLog deletes;
  store->AddDeleteListener(deletes.Listener());
  CreateOptions brief = Named("s1");
  brief.ttl = absl::Minutes(1);
  ASSERT_TRUE(store->Create(brief).ok());
  ASSERT_TRUE(store->Update("s1", Increment).ok());
  clock_.Advance(absl::Minutes(2));
  absl::StatusOr<CreateResult> again = store->Create(Named("s1"));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(again->created);
  EXPECT_EQ(again->session->version, 1u);
  EXPECT_TRUE(again->session->variables.empty());
  EXPECT_TRUE(WaitFor([&] { return deletes.Count(DeleteCause::kExpired) == 1; },
                      kPatience));
}

// --- Get, Exists, refresh and expiry ---------------------------------------

TEST_P(StoreConformanceTest, UnknownSessionIsNotFound) {
  auto store = Open();
  absl::StatusOr<SessionRef> missing = store->Get("nope");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(ReasonOf(missing.status()), reason::kSessionNotFound);
  EXPECT_FALSE(*store->Exists("nope"));
  EXPECT_EQ(ReasonOf(store->Update("nope", Increment).status()),
            reason::kSessionNotFound);
  EXPECT_EQ(ReasonOf(store->CompareAndSwap("nope", 1, {}).status()),
            reason::kSessionNotFound);
  EXPECT_EQ(ReasonOf(store->StoreProgram("nope", "p", "x").status()),
            reason::kSessionNotFound);
  EXPECT_EQ(ReasonOf(store->GetProgram("nope", "p").status()),
            reason::kSessionNotFound);
}

TEST_P(StoreConformanceTest, MalformedIdsAreRejectedByEveryCall) {
  auto store = Open();
  for (const std::string& id :
       {std::string(""), std::string(129, 'x'), std::string("a b"),
        std::string("../etc"), std::string("\xff")}) {
    std::vector<absl::Status> results = {
        store->Get(id).status(),
        store->Exists(id).status(),
        store->CompareAndSwap(id, 1, {}).status(),
        store->Update(id, Increment).status(),
        store->Delete(id).status(),
        store->StoreProgram(id, "p", "x").status(),
        store->GetProgram(id, "p").status(),
    };
    if (!id.empty()) {  // an empty id in Create means "make one"
      results.push_back(store->Create(Named(id)).status());
    }
    for (const absl::Status& s : results) {
      EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
      EXPECT_EQ(ReasonOf(s), reason::kInvalidSessionId) << s;
    }
  }
  EXPECT_EQ(*store->Count(), 0u);
}

TEST_P(StoreConformanceTest, GetRefreshesLastUsedWithinTheLag) {
  auto store = OpenWithFakeClock();
  ASSERT_TRUE(store->Create(Named("s1")).ok());
  clock_.Advance(absl::Minutes(10));
  absl::StatusOr<SessionRef> s = store->Get("s1");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_GE((*s)->last_used, clock_.Now() - store->RefreshLag());
  EXPECT_EQ((*s)->version, 1u);  // a refresh is not a write
}

TEST_P(StoreConformanceTest, ExistsListAndScanDoNotRefresh) {
  auto store = OpenWithFakeClock();
  CreateOptions brief = Named("s1");
  brief.ttl = absl::Minutes(1);
  ASSERT_TRUE(store->Create(brief).ok());
  const absl::Time created = clock_.Now();
  for (int i = 0; i < 5; ++i) {
    clock_.Advance(absl::Seconds(10));
    EXPECT_TRUE(*store->Exists("s1"));
    EXPECT_EQ(store->List({})->ids.size(), 1u);
    absl::StatusOr<RecordPage> page = store->Scan({});
    ASSERT_EQ(page->sessions.size(), 1u);
    EXPECT_EQ(page->sessions[0]->last_used, created);
  }
  clock_.Advance(absl::Seconds(11));
  EXPECT_FALSE(*store->Exists("s1"));
}

TEST_P(StoreConformanceTest, IdleSessionExpiresOnTheStoreClock) {
  auto store = OpenWithFakeClock();
  DeleteLog deletes;
  store->AddDeleteListener(deletes.Listener());
  ASSERT_TRUE(store->Create(Named("s1")).ok());  // default TTL, 1 h
  clock_.Advance(absl::Minutes(59));
  ASSERT_TRUE(store->Get("s1").ok());
  clock_.Advance(absl::Minutes(59));
  ASSERT_TRUE(store->Get("s1").ok());
  EXPECT_EQ(deletes.Events().size(), 0u);
  clock_.Advance(absl::Minutes(61));
  EXPECT_EQ(ReasonOf(store->Get("s1").status()), reason::kSessionNotFound);
  EXPECT_FALSE(*store->Exists("s1"));
  // Listeners run just after the session leaves the store.
  ASSERT_TRUE(WaitFor([&] { return deletes.Events().size() == 1; }, kPatience));
  EXPECT_EQ(*store->Count(), 0u);
  EXPECT_EQ(deletes.Events()[0].first, "s1");
  EXPECT_EQ(deletes.Events()[0].second, DeleteCause::kExpired);
}

TEST_P(StoreConformanceTest, SessionExpiresAfterItsTtlInRealTime) {
  auto store = Open();
  DeleteLog deletes;
  store->AddDeleteListener(deletes.Listener());
  CreateOptions brief = Named("s1");
  brief.ttl = absl::Milliseconds(200);
  ASSERT_TRUE(store->Create(brief).ok());
  EXPECT_TRUE(WaitFor([&] { return deletes.Count(DeleteCause::kExpired) == 1; },
                      kPatience));
  EXPECT_EQ(*store->Count(), 0u);
  EXPECT_FALSE(store->Get("s1").ok());
}

TEST_P(StoreConformanceTest, SessionInUseDoesNotExpire) {
  auto store = Open();
  DeleteLog deletes;
  store->AddDeleteListener(deletes.Listener());
  CreateOptions brief = Named("busy");
  brief.ttl = absl::Milliseconds(1500);
  ASSERT_TRUE(store->Create(brief).ok());
  brief.id = "idle";
  ASSERT_TRUE(store->Create(brief).ok());
  // Alternate reads and writes, each well within the TTL of the last.
  const absl::Time end = absl::Now() + absl::Seconds(3);
  for (int i = 0; absl::Now() < end && i < 1000; ++i) {
    absl::Status s = i % 2 ? store->Get("busy").status()
                           : store->Update("busy", Increment).status();
    ASSERT_TRUE(s.ok()) << s;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_TRUE(*store->Exists("busy"));
  EXPECT_TRUE(WaitFor([&] { return !*store->Exists("idle"); }, kPatience));
  for (const auto& [id, cause] : deletes.Events()) {
    EXPECT_EQ(id, "idle");
  }
}

// --- Writes ----------------------------------------------------------------

TEST_P(StoreConformanceTest, CompareAndSwapWritesTheWholeRecord) {
  auto store = OpenWithFakeClock();
  ASSERT_TRUE(store->Create(Named("s1")).ok());
  clock_.Advance(absl::Seconds(3));
  SessionRecord next;
  next.metadata = {{"stage", "two"}};
  next.variables = {{"x", Msgpack(42)}};
  next.programs = {{"p", std::string("\0\1\2", 3)}};
  next.ttl = absl::Minutes(2);
  next.owner = "node-b";
  absl::StatusOr<SessionRef> written = store->CompareAndSwap("s1", 1, next);
  ASSERT_TRUE(written.ok()) << written.status();
  EXPECT_EQ((*written)->version, 2u);
  EXPECT_EQ((*written)->last_used, clock_.Now());
  absl::StatusOr<SessionRef> read = store->Get("s1");
  ASSERT_TRUE(read.ok());
  EXPECT_EQ(**read, **written);
  EXPECT_EQ((*read)->programs.at("p"), std::string("\0\1\2", 3));
  EXPECT_EQ((*read)->ttl, absl::Minutes(2));
  EXPECT_EQ((*read)->owner, "node-b");
}

TEST_P(StoreConformanceTest, CompareAndSwapOnAStaleVersionIsAborted) {
  auto store = Open();
  ASSERT_TRUE(store->Create(Named("s1")).ok());
  ASSERT_TRUE(store->Update("s1", Increment).ok());
  absl::StatusOr<SessionRef> stale = store->CompareAndSwap("s1", 1, {});
  EXPECT_EQ(stale.status().code(), absl::StatusCode::kAborted);
  EXPECT_EQ(ReasonOf(stale.status()), reason::kSessionConflict);
  EXPECT_NE(
      std::string(stale.status().message()).find("is at v2, caller had v1"),
      std::string::npos)
      << stale.status();
  EXPECT_EQ(CounterOf(**store->Get("s1")), 1);
}

TEST_P(StoreConformanceTest, UpdateErrorFromTheFunctionAbandonsTheWrite) {
  auto store = Open();
  ASSERT_TRUE(store->Create(Named("s1")).ok());
  absl::StatusOr<SessionRef> r = store->Update("s1", [](SessionRecord& s) {
    s.metadata["half"] = "done";
    return absl::FailedPreconditionError("not now");
  });
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ((*store->Get("s1"))->version, 1u);
  EXPECT_TRUE((*store->Get("s1"))->metadata.empty());
}

TEST_P(StoreConformanceTest, UpdateGivesUpAfterFourConflictedAttempts) {
  auto store = Open();
  ASSERT_TRUE(store->Create(Named("s1")).ok());
  int attempts = 0;
  // Each attempt's read goes stale before its write: another writer
  // (here the function itself, breaking the rules on purpose) gets in.
  absl::StatusOr<SessionRef> r = store->Update("s1", [&](SessionRecord& s) {
    ++attempts;
    EXPECT_TRUE(store->Update("s1", Increment).ok());
    return Increment(s);
  });
  EXPECT_EQ(attempts, SessionStore::kUpdateRetries + 1);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kAborted);
  EXPECT_EQ(ReasonOf(r.status()), reason::kSessionConflict);
  EXPECT_NE(std::string(r.status().message()).find("is at v"),
            std::string::npos)
      << r.status();
  EXPECT_EQ(CounterOf(**store->Get("s1")), 4);
}

TEST_P(StoreConformanceTest, TwoWritersLoseNoUpdate) {
  auto store = Open();
  ASSERT_TRUE(store->Create(Named("counter")).ok());
  constexpr int kPerWriter = 1000;
  std::atomic<int> function_runs{0};
  std::atomic<int> aborted{0};
  std::atomic<int> failed{0};
  auto writer = [&] {
    for (int done = 0; done < kPerWriter;) {
      absl::StatusOr<SessionRef> r =
          store->Update("counter", [&](SessionRecord& s) {
            ++function_runs;
            return Increment(s);
          });
      if (r.ok()) {
        ++done;
      } else if (r.status().code() == absl::StatusCode::kAborted) {
        ++aborted;  // the caller's move: redo the read-modify-write
      } else {
        ++failed;
        return;
      }
    }
  };
  std::thread a(writer);
  std::thread b(writer);
  a.join();
  b.join();
  ASSERT_EQ(failed.load(), 0);
  SessionRef final_state = *store->Get("counter");
  EXPECT_EQ(CounterOf(*final_state), 2 * kPerWriter);
  EXPECT_EQ(final_state->version, 1u + 2 * kPerWriter);
  // Every run of the function is a success, an internal retry, or part of
  // an ABORTED the caller saw: none vanished.
  const int retried = function_runs.load() - 2 * kPerWriter;
  EXPECT_GE(retried, aborted.load() * (SessionStore::kUpdateRetries + 1));
  RecordProperty("function_runs", function_runs.load());
  RecordProperty("aborted_calls", aborted.load());
}

TEST_P(StoreConformanceTest, MetadataMustBeText) {
  auto store = Open();
  CreateOptions bad = Named("s1");
  bad.metadata = {{"k", "\xc3\x28"}};
  EXPECT_EQ(store->Create(bad).status().code(),
            absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(store->Create(Named("s1")).ok());
  absl::StatusOr<SessionRef> r = store->Update("s1", [](SessionRecord& s) {
    s.variables["\xed\xa0\x80"] = Msgpack(1);  // a UTF-16 surrogate
    return absl::OkStatus();
  });
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
}

// --- Delete ----------------------------------------------------------------

TEST_P(StoreConformanceTest, DeleteIsIdempotentAndNotifiesOnce) {
  auto store = Open();
  DeleteLog deletes;
  store->AddDeleteListener(deletes.Listener());
  ASSERT_TRUE(store->Create(Named("s1")).ok());
  ASSERT_TRUE(store->StoreProgram("s1", "p", "code").ok());
  EXPECT_TRUE(*store->Delete("s1"));
  EXPECT_FALSE(*store->Delete("s1"));
  EXPECT_FALSE(*store->Delete("never"));
  ASSERT_EQ(deletes.Events().size(), 1u);
  EXPECT_EQ(deletes.Events()[0].first, "s1");
  EXPECT_EQ(deletes.Events()[0].second, DeleteCause::kDeleted);
  EXPECT_EQ(ReasonOf(store->Get("s1").status()), reason::kSessionNotFound);
  EXPECT_EQ(*store->Count(), 0u);
  // Nothing of the old session comes back under its id.
  ASSERT_TRUE(store->Create(Named("s1")).ok());
  EXPECT_EQ(ReasonOf(store->GetProgram("s1", "p").status()),
            reason::kProgramNotFound);
}

TEST_P(StoreConformanceTest, RemovedListenerIsNotCalled) {
  auto store = Open();
  DeleteLog kept;
  DeleteLog removed;
  store->AddDeleteListener(kept.Listener());
  int handle = store->AddDeleteListener(removed.Listener());
  store->RemoveDeleteListener(handle);
  ASSERT_TRUE(store->Create(Named("s1")).ok());
  ASSERT_TRUE(store->Delete("s1").ok());
  EXPECT_EQ(kept.Events().size(), 1u);
  EXPECT_EQ(removed.Events().size(), 0u);
}

TEST_P(StoreConformanceTest, ListenerMayCallTheStore) {
  auto store = Open();
  std::atomic<int> seen{0};
  store->AddDeleteListener([&](const std::string& id, DeleteCause) {
    if (!*store->Exists(id)) {
      ++seen;
    }
  });
  ASSERT_TRUE(store->Create(Named("s1")).ok());
  ASSERT_TRUE(store->Delete("s1").ok());
  EXPECT_EQ(seen.load(), 1);
}

// --- Programs --------------------------------------------------------------

TEST_P(StoreConformanceTest, ProgramsRoundTripAsBytes) {
  auto store = Open();
  ASSERT_TRUE(store->Create(Named("s1")).ok());
  const std::string code("def f():\n  return b'\\x00'\0\xff", 25);
  absl::StatusOr<uint64_t> v = store->StoreProgram("s1", "main.py", code);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(*v, 2u);
  EXPECT_EQ(*store->GetProgram("s1", "main.py"), code);
  EXPECT_EQ((*store->Get("s1"))->programs.at("main.py"), code);
  // Replacing one program keeps the others.
  ASSERT_TRUE(store->StoreProgram("s1", "other", "x").ok());
  ASSERT_TRUE(store->StoreProgram("s1", "main.py", "v2").ok());
  EXPECT_EQ(*store->GetProgram("s1", "main.py"), "v2");
  EXPECT_EQ(*store->GetProgram("s1", "other"), "x");
  EXPECT_EQ((*store->Get("s1"))->version, 4u);
}

TEST_P(StoreConformanceTest, UpdateReplacesAndDropsPrograms) {
  auto store = Open();
  ASSERT_TRUE(store->Create(Named("s1")).ok());
  ASSERT_TRUE(store->StoreProgram("s1", "a", "aaaa").ok());
  ASSERT_TRUE(store->StoreProgram("s1", "b", "bbbb").ok());
  ASSERT_TRUE(store->StoreProgram("s1", "c", "cccc").ok());
  ASSERT_TRUE(store
                  ->Update("s1",
                           [](SessionRecord& s) {
                             s.programs["a"] = "AAAA";  // same size, new bytes
                             s.programs.erase("b");
                             s.programs["d"] = "dd";
                             return absl::OkStatus();
                           })
                  .ok());
  SessionRef s = *store->Get("s1");
  const std::map<std::string, std::string> expected = {
      {"a", "AAAA"}, {"c", "cccc"}, {"d", "dd"}};
  EXPECT_EQ(s->programs, expected);
  EXPECT_EQ(ReasonOf(store->GetProgram("s1", "b").status()),
            reason::kProgramNotFound);
  EXPECT_EQ(*store->GetProgram("s1", "a"), "AAAA");
}

TEST_P(StoreConformanceTest, MissingProgramIsNotFound) {
  auto store = Open();
  ASSERT_TRUE(store->Create(Named("s1")).ok());
  absl::StatusOr<std::string> p = store->GetProgram("s1", "absent");
  EXPECT_EQ(p.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(ReasonOf(p.status()), reason::kProgramNotFound);
  EXPECT_EQ(ReasonOf(store->GetProgram("s1", "bad id").status()),
            reason::kInvalidArgument);
}

TEST_P(StoreConformanceTest, ProgramOverTheLimitIsRejectedNamingIt) {
  StoreConfig config;
  config.max_program_bytes = 1024;
  auto store = Open(config);
  ASSERT_TRUE(store->Create(Named("s1")).ok());
  EXPECT_TRUE(store->StoreProgram("s1", "fits", std::string(1024, 'a')).ok());
  absl::StatusOr<uint64_t> big =
      store->StoreProgram("s1", "big", std::string(1025, 'a'));
  EXPECT_EQ(big.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(ReasonOf(big.status()), reason::kProgramTooLarge);
  EXPECT_NE(std::string(big.status().message()).find("limit of 1024"),
            std::string::npos)
      << big.status();
  absl::StatusOr<SessionRef> via_update =
      store->Update("s1", [](SessionRecord& s) {
        s.programs["big"] = std::string(2048, 'b');
        return absl::OkStatus();
      });
  EXPECT_EQ(ReasonOf(via_update.status()), reason::kProgramTooLarge);
  EXPECT_EQ((*store->Get("s1"))->programs.size(), 1u);
}

// --- Listing ---------------------------------------------------------------

TEST_P(StoreConformanceTest, ListPagesThroughEveryIdInOrder) {
  auto store = Open();
  std::set<std::string> expected;
  for (int i = 0; i < 25; ++i) {
    std::string id = absl::StrCat("s", i);
    ASSERT_TRUE(store->Create(Named(id)).ok());
    expected.insert(id);
  }
  ASSERT_TRUE(store->Delete("s7").ok());
  expected.erase("s7");

  std::vector<std::string> listed;
  PageRequest page;
  page.limit = 10;
  int pages = 0;
  do {
    absl::StatusOr<IdPage> ids = store->List(page);
    ASSERT_TRUE(ids.ok()) << ids.status();
    EXPECT_LE(ids->ids.size(), 10u);
    listed.insert(listed.end(), ids->ids.begin(), ids->ids.end());
    page.start_after = ids->next_start_after;
  } while (!page.start_after.empty() && ++pages < 10);
  EXPECT_TRUE(std::is_sorted(listed.begin(), listed.end()));
  EXPECT_EQ(std::set<std::string>(listed.begin(), listed.end()), expected);
  EXPECT_EQ(listed.size(), expected.size());
  EXPECT_EQ(*store->Count(), expected.size());
}

TEST_P(StoreConformanceTest, ScanReturnsWholeRecords) {
  auto store = Open();
  ASSERT_TRUE(store->Create(Named("a")).ok());
  ASSERT_TRUE(store->StoreProgram("a", "p", "code").ok());
  ASSERT_TRUE(store->Create(Named("b")).ok());
  absl::StatusOr<RecordPage> page = store->Scan({});
  ASSERT_TRUE(page.ok()) << page.status();
  ASSERT_EQ(page->sessions.size(), 2u);
  EXPECT_EQ(page->sessions[0]->id, "a");
  EXPECT_EQ(page->sessions[0]->programs.at("p"), "code");
  EXPECT_EQ(page->sessions[1]->id, "b");
  EXPECT_TRUE(page->next_start_after.empty());
}

// --- Export and import -----------------------------------------------------

TEST_P(StoreConformanceTest, ExportThenImportReproducesEveryRecord) {
  auto source = Open();
  for (int i = 0; i < 30; ++i) {
    CreateOptions options = Named(absl::StrCat("s", i));
    options.metadata = {{"user", absl::StrCat("u", i)},
                        {"note", "d\xc3\xa9j\xc3\xa0"}};
    options.owner = i % 2 ? "node-a" : "";
    ASSERT_TRUE(source->Create(options).ok());
    ASSERT_TRUE(source->Update(options.id, Increment).ok());
    ASSERT_TRUE(
        source->StoreProgram(options.id, "p", std::string(i, '\0')).ok());
  }
  std::stringstream file;
  absl::StatusOr<size_t> exported = ExportSessions(*source, file);
  ASSERT_TRUE(exported.ok()) << exported.status();
  EXPECT_EQ(*exported, 30u);

  auto target = Open();
  absl::StatusOr<ImportResult> imported = ImportSessions(file, *target);
  ASSERT_TRUE(imported.ok()) << imported.status();
  EXPECT_EQ(imported->read, 30u);
  EXPECT_EQ(imported->imported, 30u);
  PageRequest all;
  all.limit = 100;
  std::vector<SessionRef> before = source->Scan(all)->sessions;
  std::vector<SessionRef> after = target->Scan(all)->sessions;
  ASSERT_EQ(before.size(), after.size());
  for (size_t i = 0; i < before.size(); ++i) {
    EXPECT_EQ(*before[i], *after[i]) << before[i]->id;
  }
}

TEST_P(StoreConformanceTest, RestoreOfALiveIdFails) {
  auto store = Open();
  SessionRef s = store->Create(Named("s1"))->session;
  absl::Status again = store->Restore(*s);
  EXPECT_EQ(again.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(ReasonOf(again), reason::kSessionExists);
}

// --- Load ------------------------------------------------------------------

TEST_P(StoreConformanceTest, MixedConcurrentUseKeepsTheStoreConsistent) {
  auto store = Open();
  constexpr int kThreads = 8;
  constexpr int kOps = 300;
  std::atomic<int> unexpected{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kOps; ++i) {
        std::string id = absl::StrCat("s", (i * 7 + t) % 20);
        absl::Status s;
        switch ((i + t) % 5) {
          case 0:
            s = store->Create(Named(id)).status();
            break;
          case 1:
            s = store->Update(id, Increment).status();
            break;
          case 2:
            s = store->Delete(id).status();
            break;
          case 3:
            s = store->StoreProgram(id, "p", "x").status();
            break;
          default:
            s = store->Get(id).status();
        }
        if (!s.ok() && s.code() != absl::StatusCode::kNotFound &&
            s.code() != absl::StatusCode::kAborted) {
          ++unexpected;
          ADD_FAILURE() << s;
        }
      }
    });
  }
  for (std::thread& thread : threads) {
    thread.join();
  }
  EXPECT_EQ(unexpected.load(), 0);
  absl::StatusOr<IdPage> listed = store->List({});
  ASSERT_TRUE(listed.ok());
  EXPECT_EQ(listed->ids.size(), *store->Count());
  for (const std::string& id : listed->ids) {
    EXPECT_TRUE(store->Get(id).ok()) << id;
  }
}

// 20,000 sessions nobody closes all expire; the store's count returns to
// zero, the memory they held is given back, and a session in use stays.
TEST_P(StoreConformanceTest, TwentyThousandAbandonedSessionsExpire) {
  constexpr int kSessions = 20'000;
  StoreConfig config;
  config.sweep_interval = absl::Milliseconds(50);
  // Expiry does not depend on how commits sync; this keeps sqlite quick.
  config.sqlite_sync = SqliteSync::kNormal;
  auto store = Open(config);
  DeleteLog deletes;
  store->AddDeleteListener(deletes.Listener());
  // Used every 100 ms; its TTL leaves room for a slow disk's stalls.
  CreateOptions kept = Named("kept");
  kept.ttl = absl::Seconds(5);
  ASSERT_TRUE(store->Create(kept).ok());
  std::atomic<bool> done{false};
  std::atomic<int> kept_failures{0};
  std::thread user([&] {
    for (int i = 0; i < 100'000 && !done; ++i) {
      kept_failures += !store->Get("kept").ok();
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  });

  const int64_t rss_before = testing::ResidentBytes();
  const std::string payload(4096, 'p');
  for (int i = 0; i < kSessions; ++i) {
    CreateOptions options;
    options.ttl = absl::Seconds(2);
    options.metadata = {{"payload", payload}};
    ASSERT_TRUE(store->Create(options).ok()) << i;
  }
  const int64_t rss_peak = testing::ResidentBytes();
  const bool drained = WaitFor(
      [&] {
        return *store->Count() == 1 &&
               deletes.Count(DeleteCause::kExpired) == kSessions;
      },
      absl::Seconds(120));
  // Generous: at least half of what the sessions took comes back (the
  // allocator may keep some), with 8 MiB of slack for noise; the store
  // may take a moment after the last expiry to hand memory back.
  auto memory_returned = [&] {
    return testing::ResidentBytes() - rss_before <
           (rss_peak - rss_before) / 2 + (8 << 20);
  };
  const bool returned = WaitFor(memory_returned, absl::Seconds(10));
  const int64_t rss_after = testing::ResidentBytes();
  done = true;
  user.join();

  ASSERT_TRUE(drained) << *store->Count() << " sessions left";
  EXPECT_EQ(deletes.Count(DeleteCause::kExpired), size_t{kSessions});
  EXPECT_EQ(kept_failures.load(), 0);
  EXPECT_TRUE(*store->Exists("kept"));
  const double mib = 1 << 20;
  RecordProperty("rss_before_mib", rss_before / mib);
  RecordProperty("rss_peak_mib", rss_peak / mib);
  RecordProperty("rss_after_mib", rss_after / mib);
  std::printf("rss MiB: before %.1f, peak %.1f, after expiry %.1f\n",
              rss_before / mib, rss_peak / mib, rss_after / mib);
  EXPECT_TRUE(returned);
}

std::string FactoryName(const ::testing::TestParamInfo<StoreFactory>& info) {
  return info.param.name;
}

INSTANTIATE_TEST_SUITE_P(Stores, StoreConformanceTest,
                         ::testing::Values(testing::MemoryStoreFactory(),
                                           testing::SqliteStoreFactory()),
                         FactoryName);

}  // namespace
}  // namespace snakepit
