// The session store: what every store (memory, sqlite, later etcd) must do.
// docs/sessions.md is the contract in prose; store_conformance_test.cc is
// the same contract as tests, run against every store.
//
// A session is a versioned record. Reads return immutable snapshots;
// writes are compare-and-swap on the version, so the interface maps onto
// etcd's transactions on mod_revision (DESIGN.md D8, D9).

#ifndef SNAKEPIT_SESSION_STORE_H_
#define SNAKEPIT_SESSION_STORE_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

#include "snakepit/session/errors.h"

namespace snakepit {

// One session. Plain data; stores hand out immutable snapshots of it.
// Times have microsecond precision in every store.
struct SessionRecord {
  std::string id;
  // Free-form labels. Keys and values must be valid UTF-8.
  std::map<std::string, std::string> metadata;
  // Name (valid UTF-8) to a msgpack value. The store does not decode them.
  std::map<std::string, std::string> variables;
  // Program id (session id alphabet) to its bytes, each at most
  // StoreConfig::max_program_bytes.
  std::map<std::string, std::string> programs;
  absl::Time created = absl::UnixEpoch();
  // The last Create, Get or write; may trail by up to RefreshLag().
  absl::Time last_used = absl::UnixEpoch();
  // The session expires once idle (now - last use) for this long.
  absl::Duration ttl = absl::ZeroDuration();
  // 1 at creation, +1 on every write; refreshes do not change it.
  uint64_t version = 0;
  // The node that serves the session; lease-like in a cluster, where a
  // store fences writes by it. Empty on a single node.
  std::string owner;

  bool operator==(const SessionRecord&) const = default;
};

// A snapshot: never changes, safe to keep and share across threads.
using SessionRef = std::shared_ptr<const SessionRecord>;

enum class StoreKind { kMemory, kSqlite };

// "memory" or "sqlite"; INVALID_ARGUMENT otherwise.
absl::StatusOr<StoreKind> ParseStoreKind(std::string_view name);
std::string_view StoreKindName(StoreKind kind);

// How the sqlite store syncs a commit; see docs/sessions.md, "Durability".
enum class SqliteSync {
  kFull,    // fsync at every commit: survives a crash of the host
  kNormal,  // fsync at checkpoints: survives a crash of the process only
};

struct StoreConfig {
  StoreKind kind = StoreKind::kMemory;
  // The sqlite database file; its folder must exist.
  std::string path;
  SqliteSync sqlite_sync = SqliteSync::kFull;

  // Create fails with session_limit beyond this many sessions.
  size_t max_sessions = 100'000;
  // Each stored program at most this many bytes (program_too_large).
  size_t max_program_bytes = 1 << 20;
  // TTL of a session created without one.
  absl::Duration default_ttl = absl::Hours(1);

  // The reaper wakes this often and expires at most `sweep_budget`
  // sessions per wake, so one sweep never holds a lock for long. With a
  // backlog it wakes again at once.
  absl::Duration sweep_interval = absl::Seconds(1);
  size_t sweep_budget = 10'000;
  // How late a refresh may reach the record's last_used (memory) or the
  // disk (sqlite). Expiry itself always sees every refresh at once.
  absl::Duration refresh_lag = absl::Seconds(1);

  // Wall clock for created, last_used and expiry. Empty: absl::Now. Tests
  // pass a fake; it must be thread-safe.
  std::function<absl::Time()> clock;
};

struct CreateOptions {
  // Empty: the store makes one with NewSessionId().
  std::string id;
  // Used only when the session is created, never merged into an
  // existing one.
  std::map<std::string, std::string> metadata;
  // Zero: StoreConfig::default_ttl.
  absl::Duration ttl = absl::ZeroDuration();
  std::string owner;
  // Fail with ALREADY_EXISTS (session_exists) instead of returning an
  // existing session.
  bool strict = false;
};

struct CreateResult {
  SessionRef session;
  // True for exactly one of any number of concurrent creates of an id.
  bool created = false;
};

// A page of a listing in ascending byte order of id.
struct PageRequest {
  // Only ids after this one; empty for the first page.
  std::string start_after;
  // Clamped to [1, kMaxPageLimit].
  size_t limit = 1000;
};

inline constexpr size_t kMaxPageLimit = 10'000;

struct IdPage {
  std::vector<std::string> ids;
  // Pass as start_after for the next page; empty when this was the last.
  std::string next_start_after;
};

struct RecordPage {
  std::vector<SessionRef> sessions;
  std::string next_start_after;
};

enum class DeleteCause {
  kDeleted,  // Delete() removed it
  kExpired,  // idle past its TTL
};

std::string_view DeleteCauseName(DeleteCause cause);

// Called once for each session that leaves the store, with no store lock
// held: on the thread that called Delete (or Create, which clears an
// expired session under a reused id), or on the reaper thread.
using DeleteListener =
    std::function<void(const std::string& id, DeleteCause cause)>;

// Edits a private copy of the session. A non-OK result abandons the
// update and is returned as is. May run several times (once per attempt),
// so it must not have side effects beyond `record`. Changes to id,
// version, created and last_used are ignored.
using UpdateFn = std::function<absl::Status(SessionRecord& record)>;

// The store contract. Implementations are thread-safe: every method may
// be called from any thread at any time. A session past its TTL is gone
// for every call, even before the reaper removes it.
//
// Every method taking an id fails with INVALID_ARGUMENT
// (invalid_session_id) for a malformed one, and a store whose medium fails
// returns session_store_error.
class SessionStore {
 public:
  // Internal retries of Update after the first attempt.
  static constexpr int kUpdateRetries = 3;

  virtual ~SessionStore();
  SessionStore(const SessionStore&) = delete;
  SessionStore& operator=(const SessionStore&) = delete;

  // Creates a session, or returns the live one that has the id (and
  // refreshes it). Idempotent. RESOURCE_EXHAUSTED (session_limit) when a
  // new session would pass max_sessions.
  virtual absl::StatusOr<CreateResult> Create(const CreateOptions& options) = 0;

  // The session, refreshed: it will not expire before now + TTL.
  // NOT_FOUND (session_not_found) when missing or expired.
  virtual absl::StatusOr<SessionRef> Get(std::string_view id) = 0;

  // Whether a live session has the id. Does not refresh it.
  virtual absl::StatusOr<bool> Exists(std::string_view id) = 0;

  // Replaces the session with `record` if it is still at
  // `expected_version`; returns the stored snapshot, at
  // expected_version + 1 and refreshed. ABORTED (session_conflict) when
  // the version moved on; NOT_FOUND when gone; program_too_large or
  // INVALID_ARGUMENT when `record` breaks a limit.
  virtual absl::StatusOr<SessionRef> CompareAndSwap(std::string_view id,
                                                    uint64_t expected_version,
                                                    SessionRecord record) = 0;

  // Read, `fn`, CompareAndSwap; on a conflict the whole sequence runs
  // again, up to kUpdateRetries more times, then ABORTED
  // (session_conflict) naming the versions.
  absl::StatusOr<SessionRef> Update(std::string_view id, const UpdateFn& fn);

  // Removes the session and everything it holds, and tells the delete
  // listeners. Idempotent: true when this call removed a live session.
  virtual absl::StatusOr<bool> Delete(std::string_view id) = 0;

  // Ids of live sessions. Does not refresh them. Not a point-in-time
  // snapshot: sessions created or deleted meanwhile may or may not show.
  virtual absl::StatusOr<IdPage> List(const PageRequest& page) = 0;

  // Like List, with whole records (for export). Does not refresh them.
  virtual absl::StatusOr<RecordPage> Scan(const PageRequest& page) = 0;

  // Sessions held, including expired ones the reaper has not removed yet
  // (at most one sweep behind).
  virtual absl::StatusOr<size_t> Count() = 0;

  // Stores `bytes` as program `program_id` of the session (a write:
  // returns the new version). program_too_large over max_program_bytes.
  virtual absl::StatusOr<uint64_t> StoreProgram(std::string_view id,
                                                std::string_view program_id,
                                                std::string bytes);

  // A program of the session; refreshes the session. NOT_FOUND
  // (program_not_found) when the session has no such program.
  virtual absl::StatusOr<std::string> GetProgram(std::string_view id,
                                                 std::string_view program_id);

  // Inserts `record` exactly as given (version, times, owner), for import.
  // ALREADY_EXISTS (session_exists) when a live session has the id;
  // session_limit as for Create.
  virtual absl::Status Restore(const SessionRecord& record) = 0;

  // The most a refresh may trail in last_used or on durable media.
  virtual absl::Duration RefreshLag() const = 0;

  StoreKind kind() const { return kind_; }
  const StoreConfig& config() const { return config_; }

  // Registers `listener`; returns a handle for RemoveDeleteListener. A
  // listener must not block for long; it may call the store. A call
  // already under way may still run after RemoveDeleteListener returns,
  // so capture state the listener outlives by weak_ptr, or remove
  // listeners only once the store is gone.
  int AddDeleteListener(DeleteListener listener);
  void RemoveDeleteListener(int handle);

 protected:
  SessionStore(StoreKind kind, StoreConfig config);

  absl::Time Now() const;
  // The session `options` ask for, validated, with its id and TTL filled
  // in; times and version are left for the store.
  absl::StatusOr<SessionRecord> RecordFor(const CreateOptions& options) const;
  // The validated TTL for a new session: `requested`, or the default.
  absl::StatusOr<absl::Duration> TtlFor(absl::Duration requested) const;
  // Checks what a write may store: limits, UTF-8, ids, TTL.
  absl::Status ValidateRecord(const SessionRecord& record) const;
  absl::Status ValidateProgram(std::string_view program_id,
                               std::string_view bytes) const;
  void NotifyDeleted(const std::string& id, DeleteCause cause) const;

 private:
  using Listeners = std::vector<std::pair<int, DeleteListener>>;

  // Fixed at construction.
  const StoreKind kind_;
  const StoreConfig config_;

  // Copy on write, so that notifying needs the lock only to take a
  // reference, never while a listener runs.
  mutable absl::Mutex listeners_mu_;
  std::shared_ptr<const Listeners> listeners_ ABSL_GUARDED_BY(listeners_mu_);
  int next_listener_ ABSL_GUARDED_BY(listeners_mu_) = 1;
};

// `t` cut to whole microseconds, the precision every store keeps.
absl::Time TruncateToMicros(absl::Time t);

}  // namespace snakepit

#endif  // SNAKEPIT_SESSION_STORE_H_
