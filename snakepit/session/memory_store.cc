#include "snakepit/session/memory_store.h"

#include <malloc.h>

#include <algorithm>
#include <functional>
#include <utility>

#include "snakepit/base/log.h"
#include "snakepit/session/session_id.h"

namespace snakepit {
namespace {

// Removed sessions that make a trim worth its cost (it walks the heap).
constexpr size_t kTrimAfterRemoved = 1024;
constexpr absl::Duration kMinTrimInterval = absl::Seconds(1);

}  // namespace

MemoryStore::MemoryStore(StoreConfig config)
    : SessionStore(StoreKind::kMemory, std::move(config)),
      refresh_lag_us_(absl::ToInt64Microseconds(this->config().refresh_lag)) {
  sweeper_.Start(this->config().sweep_interval, [this] {
    bool backlog = Sweep();
    if (!backlog) {
      MaybeReleaseMemory();
    }
    return backlog;
  });
}

MemoryStore::~MemoryStore() {
  sweeper_.Stop();
}

absl::StatusOr<CreateResult> MemoryStore::Create(const CreateOptions& options) {
  absl::StatusOr<SessionRecord> record = RecordFor(options);
  if (!record.ok()) {
    return record.status();
  }
  auto fresh = std::make_shared<const SessionRecord>(*std::move(record));

  // At the cap, expired sessions the reaper has not reached yet may hold
  // the slots; one sweep here frees them before giving up.
  CreateAttempt attempt;
  for (int pass = 0; pass < 2; ++pass) {
    attempt = TryCreate(fresh, options.strict);
    if (attempt.cleared_expired) {
      NotifyDeleted(fresh->id, DeleteCause::kExpired);
    }
    if (pass > 0 ||
        ReasonOf(attempt.result.status()) != reason::kSessionLimit) {
      break;
    }
    Sweep();
  }
  return attempt.result;
}

MemoryStore::CreateAttempt MemoryStore::TryCreate(SessionRef fresh,
                                                  bool strict) {
  CreateAttempt attempt;
  const std::string& id = fresh->id;
  const int64_t now_us = NowMicros();
  Shard& shard = ShardFor(id);
  absl::WriterMutexLock lock(&shard.mu);

  auto it = shard.sessions.find(id);
  if (it != shard.sessions.end()) {
    Entry& entry = it->second;
    if (!Expired(entry, now_us)) {
      if (strict) {
        attempt.result = internal::SessionExists(id);
        return attempt;
      }
      Touch(entry, now_us);
      attempt.result = CreateResult{entry.record, false};
      return attempt;
    }
    Remove(shard, it);
    attempt.cleared_expired = true;
  }
  if (!ReserveSlot()) {
    attempt.result = internal::SessionLimit(config().max_sessions);
    return attempt;
  }

  auto record = std::make_shared<SessionRecord>(*fresh);
  record->created = record->last_used = absl::FromUnixMicros(now_us);
  record->version = 1;
  Insert(shard, record);
  attempt.result = CreateResult{std::move(record), true};
  return attempt;
}

absl::StatusOr<SessionRef> MemoryStore::Get(std::string_view id) {
  if (absl::Status s = ValidateSessionId(id); !s.ok()) {
    return s;
  }
  const int64_t now_us = NowMicros();
  Shard& shard = ShardFor(id);
  {
    absl::ReaderMutexLock lock(&shard.mu);
    auto it = shard.sessions.find(ToAbsl(id));
    if (it == shard.sessions.end() || Expired(it->second, now_us)) {
      return internal::SessionNotFound(id);
    }
    Entry& entry = it->second;
    Touch(entry, now_us);
    if (now_us - entry.shown_last_used_us < refresh_lag_us_) {
      return entry.record;
    }
  }
  return PublishRefresh(id);
}

// Copies the record with its last_used brought up to date. Runs at most
// about once per refresh_lag per session, so Get stays on the reader lock.
absl::StatusOr<SessionRef> MemoryStore::PublishRefresh(std::string_view id) {
  const int64_t now_us = NowMicros();
  Shard& shard = ShardFor(id);
  absl::WriterMutexLock lock(&shard.mu);
  auto it = shard.sessions.find(ToAbsl(id));
  if (it == shard.sessions.end() || Expired(it->second, now_us)) {
    return internal::SessionNotFound(id);
  }
  Entry& entry = it->second;
  const int64_t last_used_us = entry.last_used_us.load();
  if (entry.shown_last_used_us < last_used_us) {
    auto copy = std::make_shared<SessionRecord>(*entry.record);
    copy->last_used = absl::FromUnixMicros(last_used_us);
    Publish(entry, std::move(copy));
  }
  return entry.record;
}

absl::StatusOr<bool> MemoryStore::Exists(std::string_view id) {
  if (absl::Status s = ValidateSessionId(id); !s.ok()) {
    return s;
  }
  const int64_t now_us = NowMicros();
  Shard& shard = ShardFor(id);
  absl::ReaderMutexLock lock(&shard.mu);
  auto it = shard.sessions.find(ToAbsl(id));
  return it != shard.sessions.end() && !Expired(it->second, now_us);
}

absl::StatusOr<SessionRef> MemoryStore::CompareAndSwap(
    std::string_view id, uint64_t expected_version, SessionRecord record) {
  record.id = std::string(id);
  if (absl::Status s = ValidateRecord(record); !s.ok()) {
    return s;
  }
  record.ttl = absl::Trunc(record.ttl, absl::Microseconds(1));
  const int64_t now_us = NowMicros();
  Shard& shard = ShardFor(id);
  absl::WriterMutexLock lock(&shard.mu);

  auto it = shard.sessions.find(ToAbsl(id));
  if (it == shard.sessions.end() || Expired(it->second, now_us)) {
    return internal::SessionNotFound(id);
  }
  Entry& entry = it->second;
  if (entry.record->version != expected_version) {
    return internal::SessionConflict(id, entry.record->version,
                                     expected_version);
  }
  record.version = expected_version + 1;
  record.created = entry.record->created;
  record.last_used = absl::FromUnixMicros(now_us);
  Publish(entry, std::make_shared<const SessionRecord>(std::move(record)));
  Touch(entry, now_us);
  Reindex(shard, it->first, entry);
  return entry.record;
}

absl::StatusOr<bool> MemoryStore::Delete(std::string_view id) {
  if (absl::Status s = ValidateSessionId(id); !s.ok()) {
    return s;
  }
  const int64_t now_us = NowMicros();
  Shard& shard = ShardFor(id);
  bool expired = false;
  {
    absl::WriterMutexLock lock(&shard.mu);
    auto it = shard.sessions.find(ToAbsl(id));
    if (it == shard.sessions.end()) {
      return false;
    }
    expired = Expired(it->second, now_us);
    Remove(shard, it);
  }
  // An expired session was already gone for callers; it leaves as expired.
  NotifyDeleted(std::string(id),
                expired ? DeleteCause::kExpired : DeleteCause::kDeleted);
  return !expired;
}

std::vector<std::pair<std::string, SessionRef>> MemoryStore::Collect(
    const PageRequest& page, size_t limit) {
  const int64_t now_us = NowMicros();
  std::vector<std::pair<std::string, SessionRef>> found;
  for (Shard& shard : shards_) {
    absl::ReaderMutexLock lock(&shard.mu);
    size_t taken = 0;
    for (auto it = shard.ordered.upper_bound(page.start_after);
         it != shard.ordered.end() && taken <= limit; ++it) {
      const Entry& entry = shard.sessions.find(ToAbsl(*it))->second;
      if (!Expired(entry, now_us)) {
        found.emplace_back(*it, entry.record);
        ++taken;
      }
    }
  }
  std::sort(found.begin(), found.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  return found;
}

absl::StatusOr<IdPage> MemoryStore::List(const PageRequest& page) {
  const size_t limit = std::clamp<size_t>(page.limit, 1, kMaxPageLimit);
  std::vector<std::pair<std::string, SessionRef>> found = Collect(page, limit);
  IdPage result;
  if (found.size() > limit) {
    found.resize(limit);
    result.next_start_after = found.back().first;
  }
  for (auto& [id, record] : found) {
    result.ids.push_back(std::move(id));
  }
  return result;
}

absl::StatusOr<RecordPage> MemoryStore::Scan(const PageRequest& page) {
  const size_t limit = std::clamp<size_t>(page.limit, 1, kMaxPageLimit);
  std::vector<std::pair<std::string, SessionRef>> found = Collect(page, limit);
  RecordPage result;
  if (found.size() > limit) {
    found.resize(limit);
    result.next_start_after = found.back().first;
  }
  for (auto& [id, record] : found) {
    result.sessions.push_back(std::move(record));
  }
  return result;
}

absl::StatusOr<size_t> MemoryStore::Count() {
  return count_.load();
}

absl::Status MemoryStore::Restore(const SessionRecord& record) {
  if (absl::Status s = ValidateRecord(record); !s.ok()) {
    return s;
  }
  auto copy = std::make_shared<SessionRecord>(record);
  copy->created = TruncateToMicros(copy->created);
  copy->last_used = TruncateToMicros(copy->last_used);
  copy->ttl = absl::Trunc(copy->ttl, absl::Microseconds(1));

  const int64_t now_us = NowMicros();
  Shard& shard = ShardFor(record.id);
  bool cleared_expired = false;
  absl::Status status;
  {
    absl::WriterMutexLock lock(&shard.mu);
    auto it = shard.sessions.find(record.id);
    if (it != shard.sessions.end() && !Expired(it->second, now_us)) {
      return internal::SessionExists(record.id);
    }
    if (it != shard.sessions.end()) {
      Remove(shard, it);
      cleared_expired = true;
    }
    if (ReserveSlot()) {
      Insert(shard, std::move(copy));
    } else {
      status = internal::SessionLimit(config().max_sessions);
    }
  }
  if (cleared_expired) {
    NotifyDeleted(record.id, DeleteCause::kExpired);
  }
  return status;
}

absl::Duration MemoryStore::RefreshLag() const {
  return config().refresh_lag;
}

MemoryStore::Shard& MemoryStore::ShardFor(std::string_view id) {
  return shards_[std::hash<std::string_view>{}(id) % kShardCount];
}

int64_t MemoryStore::NowMicros() const {
  return absl::ToUnixMicros(Now());
}

bool MemoryStore::Expired(const Entry& entry, int64_t now_us) {
  return entry.last_used_us.load(std::memory_order_relaxed) + entry.ttl_us <=
         now_us;
}

// Raises last_used to `now_us`, never lowers it: concurrent Gets may
// arrive with their clock readings out of order. Relaxed is enough
// because the reaper reads it under the shard's writer lock.
void MemoryStore::Touch(Entry& entry, int64_t now_us) {
  int64_t seen = entry.last_used_us.load(std::memory_order_relaxed);
  while (seen < now_us && !entry.last_used_us.compare_exchange_weak(
                              seen, now_us, std::memory_order_relaxed)) {
  }
}

bool MemoryStore::ReserveSlot() {
  if (count_.fetch_add(1) < config().max_sessions) {
    return true;
  }
  count_.fetch_sub(1);
  return false;
}

void MemoryStore::Insert(Shard& shard, SessionRef record) {
  auto [it, inserted] = shard.sessions.try_emplace(record->id);
  Entry& entry = it->second;
  Publish(entry, std::move(record));
  entry.last_used_us = entry.shown_last_used_us;
  entry.deadline_key_us = entry.last_used_us + entry.ttl_us;
  std::string_view id = it->first;
  shard.ordered.insert(id);
  shard.deadlines.emplace(entry.deadline_key_us, id);
}

void MemoryStore::Remove(Shard& shard, Iterator it) {
  std::string_view id = it->first;
  shard.deadlines.erase({it->second.deadline_key_us, id});
  shard.ordered.erase(id);
  shard.sessions.erase(it);
  count_.fetch_sub(1);
  removed_since_trim_.fetch_add(1, std::memory_order_relaxed);
}

void MemoryStore::Reindex(Shard& shard, std::string_view id, Entry& entry) {
  int64_t deadline_us = entry.last_used_us.load() + entry.ttl_us;
  if (deadline_us == entry.deadline_key_us) {
    return;
  }
  shard.deadlines.erase({entry.deadline_key_us, id});
  shard.deadlines.emplace(deadline_us, id);
  entry.deadline_key_us = deadline_us;
}

void MemoryStore::Publish(Entry& entry, SessionRef record) {
  entry.shown_last_used_us = absl::ToUnixMicros(record->last_used);
  entry.ttl_us = absl::ToInt64Microseconds(record->ttl);
  entry.record = std::move(record);
}

bool MemoryStore::Sweep() {
  const int64_t now_us = NowMicros();
  size_t budget = config().sweep_budget;
  std::vector<std::string> expired;
  const size_t start = sweep_start_.fetch_add(1) % kShardCount;
  bool more = false;
  for (size_t i = 0; i < kShardCount && !more; ++i) {
    Shard& shard = shards_[(start + i) % kShardCount];
    while (SweepShard(shard, now_us, budget, expired)) {
      if (budget == 0) {
        more = true;
        break;
      }
    }
  }
  if (!expired.empty()) {
    Log().info("sessions expired: {} idle past their ttl (first {})",
               expired.size(), expired.front());
  }
  for (const std::string& id : expired) {
    NotifyDeleted(id, DeleteCause::kExpired);
  }
  return more;
}

void MemoryStore::MaybeReleaseMemory() {
  const absl::Time now = absl::Now();
  if (removed_since_trim_.load(std::memory_order_relaxed) < kTrimAfterRemoved ||
      now - last_trim_ < kMinTrimInterval) {
    return;
  }
  removed_since_trim_.store(0, std::memory_order_relaxed);
  last_trim_ = now;
  malloc_trim(0);
}

bool MemoryStore::SweepShard(Shard& shard, int64_t now_us, size_t& budget,
                             std::vector<std::string>& expired) {
  absl::WriterMutexLock lock(&shard.mu);
  for (size_t checks = 0; checks < kMaxChecksPerLock; ++checks) {
    if (shard.deadlines.empty() || shard.deadlines.begin()->first > now_us) {
      return false;
    }
    if (budget == 0) {
      return true;
    }
    --budget;
    auto it = shard.sessions.find(ToAbsl(shard.deadlines.begin()->second));
    Entry& entry = it->second;
    if (Expired(entry, now_us)) {
      expired.emplace_back(it->first);
      Remove(shard, it);
    } else {
      Reindex(shard, it->first, entry);
    }
  }
  return true;
}

}  // namespace snakepit
