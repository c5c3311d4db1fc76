// The default session store: everything in this process's memory.
//
// Sessions live in 64 shards chosen by a hash of the id, each with its own
// reader-writer lock and hash map, so there is no global lock. Get takes
// only its shard's reader lock: it hands out the shared snapshot and
// records the refresh in an atomic. Writes copy the record, edit the copy
// and publish it under the shard's writer lock.
//
// Expiry: each shard keeps its sessions ordered by the deadline they had
// when last written. The reaper pops due deadlines; a session refreshed
// since is put back under its new deadline, one that is really idle is
// removed. Refreshes therefore never touch the ordered index.
//
// Memory: glibc keeps freed small blocks in its heap, so after a wave of
// expiries the process would stay at its peak size. Once the reaper has
// no backlog and many sessions have gone since, it calls malloc_trim
// (at most once a second), so the host gets the memory back.

#ifndef SNAKEPIT_SESSION_MEMORY_STORE_H_
#define SNAKEPIT_SESSION_MEMORY_STORE_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/btree_set.h"
#include "absl/container/node_hash_map.h"
#include "absl/synchronization/mutex.h"

#include "snakepit/session/internal/sweeper.h"
#include "snakepit/session/store.h"

namespace snakepit {

// Thread-safe. Destroying the store drops its sessions without calling
// the delete listeners. TODO(#4): a write copies the whole record,
// programs included; share immutable program bytes between versions.
class MemoryStore final : public SessionStore {
 public:
  // Starts the reaper thread (none with an infinite sweep_interval).
  explicit MemoryStore(StoreConfig config);
  ~MemoryStore() override;

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
  absl::Status Restore(const SessionRecord& record) override;
  absl::Duration RefreshLag() const override;

 private:
  static constexpr size_t kShardCount = 64;
  // Most expiry checks made under one hold of a shard's writer lock.
  static constexpr size_t kMaxChecksPerLock = 512;

  // One session. All but `last_used_us` change only under the shard's
  // writer lock; Get raises `last_used_us` under the reader lock, so it is
  // atomic. Get reads only this struct and the snapshot's refcount, so
  // the hot path touches few cache lines.
  struct Entry {
    SessionRef record;
    // record->last_used and record->ttl, copied here for Get.
    int64_t shown_last_used_us = 0;
    int64_t ttl_us = 0;
    std::atomic<int64_t> last_used_us{0};
    // This entry's key in Shard::deadlines: a deadline it had, never
    // later than its real one.
    int64_t deadline_key_us = 0;
  };

  // Aligned so that two shards' locks never share a cache line. The
  // indexes hold views of the map's keys, which stay put (node map).
  struct alignas(64) Shard {
    mutable absl::Mutex mu;
    absl::node_hash_map<std::string, Entry> sessions ABSL_GUARDED_BY(mu);
    // Ids in byte order, for List and Scan.
    absl::btree_set<std::string_view> ordered ABSL_GUARDED_BY(mu);
    absl::btree_set<std::pair<int64_t, std::string_view>> deadlines
        ABSL_GUARDED_BY(mu);
  };

  using Iterator = absl::node_hash_map<std::string, Entry>::iterator;

  // What one attempt at Create did, so that listeners run after unlock.
  struct CreateAttempt {
    absl::StatusOr<CreateResult> result;
    bool cleared_expired = false;
  };

  Shard& ShardFor(std::string_view id);
  int64_t NowMicros() const;
  static bool Expired(const Entry& entry, int64_t now_us);
  static void Touch(Entry& entry, int64_t now_us);

  CreateAttempt TryCreate(SessionRef fresh, bool strict);
  absl::StatusOr<SessionRef> PublishRefresh(std::string_view id);
  bool ReserveSlot();
  void Insert(Shard& shard, SessionRef record)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(shard.mu);
  void Remove(Shard& shard, Iterator it)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(shard.mu);
  void Reindex(Shard& shard, std::string_view id, Entry& entry)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(shard.mu);
  // Makes `record` the entry's snapshot.
  static void Publish(Entry& entry, SessionRef record);

  // Up to limit + 1 live sessions after `page.start_after`, by id.
  std::vector<std::pair<std::string, SessionRef>> Collect(
      const PageRequest& page, size_t limit);

  // One reaper pass over the shards within sweep_budget; true when it
  // stopped at the budget with work left.
  bool Sweep();
  // Hands freed heap back to the OS after many sessions went. Reaper
  // thread only.
  void MaybeReleaseMemory();
  // Expires due sessions of `shard`; true when it stopped at a bound
  // with more due.
  bool SweepShard(Shard& shard, int64_t now_us, size_t& budget,
                  std::vector<std::string>& expired);

  // Fixed at construction.
  const int64_t refresh_lag_us_;

  std::array<Shard, kShardCount> shards_;
  // Sessions held, expired ones not yet removed included.
  std::atomic<size_t> count_{0};
  // The shard the next sweep starts at, so a budget-limited sweep does
  // not always favour the first shards.
  std::atomic<size_t> sweep_start_{0};
  // Sessions removed since the last MaybeReleaseMemory trim.
  std::atomic<size_t> removed_since_trim_{0};
  // Reaper thread only.
  absl::Time last_trim_ = absl::InfinitePast();
  internal::Sweeper sweeper_;
};

}  // namespace snakepit

#endif  // SNAKEPIT_SESSION_MEMORY_STORE_H_
