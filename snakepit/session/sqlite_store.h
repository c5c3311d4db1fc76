// The durable single-node session store: one sqlite database file.
//
// Every write is one transaction, committed before the call returns, in
// WAL mode with synchronous=FULL by default: an acknowledged write
// survives a kill -9 of the process and a crash of the host. Refreshes by
// Get are kept in memory and written in batches every refresh_lag, so a
// read costs no disk write; expiry in this process sees them at once,
// only the copy on disk trails. docs/sessions.md, "Durability", has the
// reasoning and the schema.
//
// The store holds the database's lock for as long as it is open
// (locking_mode=EXCLUSIVE): a second process opening the same file fails
// with FAILED_PRECONDITION instead of corrupting the in-memory state.

#ifndef SNAKEPIT_SESSION_SQLITE_STORE_H_
#define SNAKEPIT_SESSION_SQLITE_STORE_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"

#include "snakepit/session/internal/sqlite.h"
#include "snakepit/session/internal/sweeper.h"
#include "snakepit/session/store.h"

namespace snakepit {

// Thread-safe; one connection serialises all calls. TODO(#4): reads wait
// behind a write's fsync; a pool of read connections would need the -shm
// WAL index and so give up the exclusive lock.
class SqliteStore final : public SessionStore {
 public:
  // Opens or creates config.path and starts the reaper.
  // FAILED_PRECONDITION when another process holds the database or it was
  // written by a newer schema; DATA_LOSS when it is not a database.
  static absl::StatusOr<std::unique_ptr<SqliteStore>> Open(StoreConfig config);
  // Stops the reaper and writes pending refreshes before closing.
  ~SqliteStore() override;

  absl::StatusOr<CreateResult> Create(const CreateOptions& options) override;
  absl::StatusOr<SessionRef> Get(std::string_view id) override;
  absl::StatusOr<bool> Exists(std::string_view id) override;
  absl::StatusOr<SessionRef> CompareAndSwap(std::string_view id,
                                            uint64_t expected_version,
                                            SessionRecord record) override;
  absl::StatusOr<bool> Delete(std::string_view id) override;
  absl::StatusOr<IdPage> List(const PageRequest& page) override;
  absl::StatusOr<RecordPage> Scan(const PageRequest& page) override;
  absl::StatusOr<size_t> Count() override;
  absl::StatusOr<uint64_t> StoreProgram(std::string_view id,
                                        std::string_view program_id,
                                        std::string bytes) override;
  absl::StatusOr<std::string> GetProgram(std::string_view id,
                                         std::string_view program_id) override;
  absl::Status Restore(const SessionRecord& record) override;
  absl::Duration RefreshLag() const override;

  // Runs PRAGMA integrity_check; DATA_LOSS with its findings unless "ok".
  absl::Status CheckIntegrity();

 private:
  // The sessions row of one id, with last_used raised by any pending
  // refresh.
  struct Row {
    uint64_t version = 0;
    std::string owner;
    int64_t created_us = 0;
    int64_t last_used_us = 0;
    int64_t ttl_us = 0;
    std::string metadata;   // msgpack map of str to str
    std::string variables;  // msgpack map of str to bin

    bool Expired(int64_t now_us) const {
      return last_used_us + ttl_us <= now_us;
    }
  };

  SqliteStore(StoreConfig config, std::unique_ptr<internal::SqliteDb> db);
  absl::Status Initialize();
  absl::Status Configure() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status LoadSchema() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status InUseOr(const absl::Status& s)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<std::string> ReadPragma(const char* sql)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  int64_t NowMicros() const;
  absl::StatusOr<std::optional<Row>> ReadRow(std::string_view id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<SessionRef> LoadRecord(std::string_view id, const Row& row)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A live row, or NOT_FOUND.
  absl::StatusOr<Row> ReadLiveRow(std::string_view id, int64_t now_us)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status InsertRecord(const SessionRecord& record)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status InsertInto(internal::Transaction& txn,
                          const SessionRecord& record, bool expired_row,
                          int64_t now_us, std::vector<std::string>& cleared)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<SessionRef> SwapLocked(uint64_t expected_version,
                                        SessionRecord record,
                                        const std::string& metadata,
                                        const std::string& variables)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status RestoreLocked(const SessionRecord& record,
                             std::vector<std::string>& cleared)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<std::map<std::string, int64_t>> ProgramSizes(
      std::string_view id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<bool> StoredProgramEquals(std::string_view id,
                                           std::string_view program_id,
                                           std::string_view bytes)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status WritePrograms(std::string_view id,
                             const std::map<std::string, std::string>& programs)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status DeleteRows(std::string_view id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Deletes up to `budget` expired sessions inside the caller's
  // transaction and returns their ids.
  absl::StatusOr<std::vector<std::string>> DeleteExpired(int64_t now_us,
                                                         size_t budget)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Makes room for one more session inside the caller's transaction;
  // `cleared` collects what it expired. session_limit when none is free.
  absl::Status MakeRoom(int64_t now_us, std::vector<std::string>& cleared)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Writes the pending refreshes in one transaction.
  absl::Status FlushTouches() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Forget(const std::vector<std::string>& ids)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void NotifyExpired(const std::vector<std::string>& ids);

  // Up to limit + 1 ids of live sessions after page.start_after.
  absl::StatusOr<std::vector<std::string>> ListIds(const PageRequest& page,
                                                   size_t limit)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<CreateResult> CreateLocked(SessionRecord& record, bool strict,
                                            std::vector<std::string>& cleared)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // One reaper pass: flush refreshes, then expire what is due, in chunks
  // of at most sweep_budget and 1,000. True when a chunk was full.
  bool Sweep();

  absl::Mutex mu_;
  const std::unique_ptr<internal::SqliteDb> db_ ABSL_PT_GUARDED_BY(mu_);
  // Rows in the sessions table, expired ones not yet removed included.
  size_t count_ ABSL_GUARDED_BY(mu_) = 0;
  // Refreshes not yet on disk: id to last_used in microseconds.
  absl::flat_hash_map<std::string, int64_t> touches_ ABSL_GUARDED_BY(mu_);
  internal::Sweeper sweeper_;
};

}  // namespace snakepit

#endif  // SNAKEPIT_SESSION_SQLITE_STORE_H_
