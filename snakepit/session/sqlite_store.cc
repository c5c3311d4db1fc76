#include "snakepit/session/sqlite_store.h"

#include <sqlite3.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

#include "snakepit/base/log.h"
#include "snakepit/base/status.h"
#include "snakepit/base/value.h"
#include "snakepit/session/session_id.h"

namespace snakepit {
namespace {

// Schema version 1; docs/sessions.md describes it. expires_us is
// last_used_us + ttl_us, kept so the reaper finds due sessions by index.
constexpr char kSchema[] = R"sql(
CREATE TABLE sessions (
  id TEXT PRIMARY KEY NOT NULL,
  version INTEGER NOT NULL,
  owner TEXT NOT NULL,
  created_us INTEGER NOT NULL,
  last_used_us INTEGER NOT NULL,
  ttl_us INTEGER NOT NULL,
  expires_us INTEGER NOT NULL,
  metadata BLOB NOT NULL,
  variables BLOB NOT NULL);
CREATE INDEX sessions_by_expiry ON sessions (expires_us);
CREATE TABLE programs (
  session_id TEXT NOT NULL,
  program_id TEXT NOT NULL,
  bytes BLOB NOT NULL,
  PRIMARY KEY (session_id, program_id));
PRAGMA user_version = 1;
)sql";

constexpr int64_t kSchemaVersion = 1;

// Most sessions one reaper transaction deletes (see Sweep).
constexpr size_t kMaxExpiriesPerSweep = 1000;

constexpr char kSelectSession[] =
    "SELECT version, owner, created_us, last_used_us, ttl_us, metadata, "
    "variables FROM sessions WHERE id = ?1";
constexpr char kSelectPrograms[] =
    "SELECT program_id, bytes FROM programs WHERE session_id = ?1";
constexpr char kInsertSession[] =
    "INSERT INTO sessions (id, version, owner, created_us, last_used_us, "
    "ttl_us, expires_us, metadata, variables) "
    "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";
constexpr char kUpdateSession[] =
    "UPDATE sessions SET version = ?2, owner = ?3, last_used_us = ?4, "
    "ttl_us = ?5, expires_us = ?6, metadata = ?7, variables = ?8 "
    "WHERE id = ?1";
constexpr char kBumpSession[] =
    "UPDATE sessions SET version = version + 1, last_used_us = ?2, "
    "expires_us = ?2 + ttl_us WHERE id = ?1";
constexpr char kTouchSession[] =
    "UPDATE sessions SET last_used_us = ?2, expires_us = ?2 + ttl_us "
    "WHERE id = ?1 AND last_used_us < ?2";
constexpr char kDeleteSession[] = "DELETE FROM sessions WHERE id = ?1";
constexpr char kDeletePrograms[] = "DELETE FROM programs WHERE session_id = ?1";
constexpr char kSelectProgramSizes[] =
    "SELECT program_id, length(bytes) FROM programs WHERE session_id = ?1";
constexpr char kSelectProgram[] =
    "SELECT bytes FROM programs WHERE session_id = ?1 AND program_id = ?2";
constexpr char kPutProgram[] =
    "INSERT OR REPLACE INTO programs (session_id, program_id, bytes) "
    "VALUES (?1, ?2, ?3)";
constexpr char kDeleteProgram[] =
    "DELETE FROM programs WHERE session_id = ?1 AND program_id = ?2";
constexpr char kSelectDue[] =
    "SELECT id, ttl_us FROM sessions WHERE expires_us <= ?1 "
    "ORDER BY expires_us LIMIT ?2";
constexpr char kSelectLiveIds[] =
    "SELECT id FROM sessions WHERE id > ?1 AND expires_us > ?2 "
    "ORDER BY id LIMIT ?3";

// Metadata and variables are each one msgpack map (str to str, str to
// bin), so a record is one row however many entries it has.
absl::StatusOr<std::string> EncodeMap(
    const std::map<std::string, std::string>& map, bool binary) {
  Value object = Value::object();
  for (const auto& [key, value] : map) {
    object[key] = binary ? Bytes(value) : Value(value);
  }
  return EncodeValue(object);
}

absl::Status DecodeMap(std::string_view blob, bool binary,
                       std::map<std::string, std::string>& out) {
  absl::StatusOr<Value> decoded = DecodeValue(blob);
  if (!decoded.ok()) {
    return decoded.status();
  }
  if (!decoded->is_object()) {
    return absl::DataLossError("not a msgpack map");
  }
  for (const auto& [key, value] : decoded->items()) {
    if (binary && value.is_binary()) {
      const auto& bin = value.get_binary();
      out[key] = std::string(bin.begin(), bin.end());
    } else if (!binary && value.is_string()) {
      out[key] = value.get<std::string>();
    } else {
      return absl::DataLossError(
          absl::StrCat("entry ", key, " has a bad type"));
    }
  }
  return absl::OkStatus();
}

absl::Status Corrupt(std::string_view id, std::string_view column,
                     const absl::Status& cause) {
  return MakeError(
      absl::StatusCode::kDataLoss, reason::kSessionStoreError,
      absl::StrCat("session ", internal::QuoteId(id), ": column ",
                   ToAbsl(column), " is corrupt: ", cause.message()));
}

}  // namespace

absl::StatusOr<std::unique_ptr<SqliteStore>> SqliteStore::Open(
    StoreConfig config) {
  if (config.path.empty()) {
    return MakeError(absl::StatusCode::kInvalidArgument,
                     reason::kInvalidArgument,
                     "the sqlite session store needs a database path");
  }
  absl::StatusOr<std::unique_ptr<internal::SqliteDb>> db =
      internal::SqliteDb::Open(config.path);
  if (!db.ok()) {
    return db.status();
  }
  std::unique_ptr<SqliteStore> store(
      new SqliteStore(std::move(config), *std::move(db)));
  if (absl::Status s = store->Initialize(); !s.ok()) {
    return s;
  }
  const StoreConfig& c = store->config();
  store->sweeper_.Start(std::min(c.sweep_interval, c.refresh_lag),
                        [raw = store.get()] { return raw->Sweep(); });
  return store;
}

SqliteStore::SqliteStore(StoreConfig config,
                         std::unique_ptr<internal::SqliteDb> db)
    : SessionStore(StoreKind::kSqlite, std::move(config)), db_(std::move(db)) {}

SqliteStore::~SqliteStore() {
  sweeper_.Stop();
  absl::MutexLock lock(&mu_);
  if (absl::Status s = FlushTouches(); !s.ok()) {
    Log().warn("session store {}: refreshes lost at close: {}", db_->path(),
               std::string(s.message()));
  }
}

absl::Status SqliteStore::Initialize() {
  absl::MutexLock lock(&mu_);
  if (absl::Status s = Configure(); !s.ok()) {
    return InUseOr(s);
  }
  if (absl::Status s = LoadSchema(); !s.ok()) {
    return InUseOr(s);
  }
  absl::StatusOr<std::string> count =
      ReadPragma("SELECT COUNT(*) FROM sessions");
  if (!count.ok()) {
    return count.status();
  }
  count_ = std::stoull(*count);
  Log().info("session store sqlite at {}: {} sessions", db_->path(), count_);
  return absl::OkStatus();
}

// locking_mode=EXCLUSIVE comes before the first access in WAL mode, so
// sqlite keeps the WAL index in heap memory (no -shm file) and holds the
// file lock until close. synchronous: see docs/sessions.md, "Durability".
absl::Status SqliteStore::Configure() {
  if (absl::Status s = db_->Exec("PRAGMA locking_mode = EXCLUSIVE"); !s.ok()) {
    return s;
  }
  absl::StatusOr<std::string> mode = ReadPragma("PRAGMA journal_mode = WAL");
  if (!mode.ok()) {
    return mode.status();
  }
  if (*mode != "wal") {
    return MakeError(absl::StatusCode::kFailedPrecondition,
                     reason::kSessionStoreError,
                     absl::StrCat("session database ", db_->path(),
                                  " cannot use write-ahead logging"));
  }
  const bool full = config().sqlite_sync == SqliteSync::kFull;
  return db_->Exec(full ? "PRAGMA synchronous = FULL"
                        : "PRAGMA synchronous = NORMAL");
}

// Creates the schema in a new file; accepts a file at our version.
absl::Status SqliteStore::LoadSchema() {
  internal::Transaction txn(*db_);
  if (!txn.status().ok()) {
    return txn.status();
  }
  absl::StatusOr<std::string> schema = ReadPragma("PRAGMA user_version");
  if (!schema.ok()) {
    return schema.status();
  }
  if (*schema != "0" && *schema != absl::StrCat(kSchemaVersion)) {
    return MakeError(
        absl::StatusCode::kFailedPrecondition, reason::kSessionStoreError,
        absl::StrCat("session database ", db_->path(), " has schema v", *schema,
                     "; this build reads v", kSchemaVersion));
  }
  if (*schema == "0") {
    if (absl::Status s = db_->Exec(kSchema); !s.ok()) {
      return s;
    }
  }
  return txn.Commit();
}

// `s`, or FAILED_PRECONDITION when it failed because another connection
// holds the database's lock.
absl::Status SqliteStore::InUseOr(const absl::Status& s) {
  if ((sqlite3_errcode(db_->raw()) & 0xff) != SQLITE_BUSY) {
    return s;
  }
  return MakeError(absl::StatusCode::kFailedPrecondition,
                   reason::kSessionStoreError,
                   absl::StrCat("session database ", db_->path(),
                                " is in use by another process"));
}

// The first column of the first row of `sql`, as text. The statement is
// reset before returning, so it never holds up a COMMIT.
absl::StatusOr<std::string> SqliteStore::ReadPragma(const char* sql) {
  absl::StatusOr<internal::Query> query = db_->Prepare(sql);
  if (!query.ok()) {
    return query.status();
  }
  absl::StatusOr<bool> row = query->Step();
  if (!row.ok()) {
    return row.status();
  }
  if (!*row) {
    return MakeError(absl::StatusCode::kInternal, reason::kSessionStoreError,
                     absl::StrCat(sql, " returned no row"));
  }
  return std::string(query->TextAt(0));
}

absl::StatusOr<CreateResult> SqliteStore::Create(const CreateOptions& options) {
  absl::StatusOr<SessionRecord> record = RecordFor(options);
  if (!record.ok()) {
    return record.status();
  }
  std::vector<std::string> cleared;
  absl::StatusOr<CreateResult> result;
  {
    absl::MutexLock lock(&mu_);
    result = CreateLocked(*record, options.strict, cleared);
  }
  NotifyExpired(cleared);
  return result;
}

absl::StatusOr<CreateResult> SqliteStore::CreateLocked(
    SessionRecord& record, bool strict, std::vector<std::string>& cleared) {
  const int64_t now_us = NowMicros();
  internal::Transaction txn(*db_);
  if (!txn.status().ok()) {
    return txn.status();
  }
  absl::StatusOr<std::optional<Row>> row = ReadRow(record.id);
  if (!row.ok()) {
    return row.status();
  }
  if (row->has_value() && !(*row)->Expired(now_us)) {
    if (strict) {
      return internal::SessionExists(record.id);
    }
    touches_[record.id] = (*row)->last_used_us = now_us;
    absl::StatusOr<SessionRef> existing = LoadRecord(record.id, **row);
    if (!existing.ok()) {
      return existing.status();
    }
    return CreateResult{*std::move(existing), false};
  }

  record.created = record.last_used = absl::FromUnixMicros(now_us);
  record.version = 1;
  if (absl::Status s =
          InsertInto(txn, record, row->has_value(), now_us, cleared);
      !s.ok()) {
    return s;
  }
  return CreateResult{std::make_shared<const SessionRecord>(record), true};
}

// Inserts `record` and commits `txn`. First removes the expired session
// that holds the id (`expired_row`), and makes room when at the cap; what
// expired is added to `cleared` once committed.
absl::Status SqliteStore::InsertInto(internal::Transaction& txn,
                                     const SessionRecord& record,
                                     bool expired_row, int64_t now_us,
                                     std::vector<std::string>& cleared) {
  std::vector<std::string> expired;
  if (expired_row) {
    if (absl::Status s = DeleteRows(record.id); !s.ok()) {
      return s;
    }
    expired.push_back(record.id);
  }
  if (count_ - expired.size() >= config().max_sessions) {
    if (absl::Status s = MakeRoom(now_us, expired); !s.ok()) {
      return s;
    }
  }
  if (absl::Status s = InsertRecord(record); !s.ok()) {
    return s;
  }
  if (absl::Status s = txn.Commit(); !s.ok()) {
    return s;
  }
  count_ = count_ - expired.size() + 1;
  Forget(expired);
  cleared.insert(cleared.end(), expired.begin(), expired.end());
  return absl::OkStatus();
}

absl::Status SqliteStore::MakeRoom(int64_t now_us,
                                   std::vector<std::string>& cleared) {
  absl::StatusOr<std::vector<std::string>> reaped =
      DeleteExpired(now_us, config().sweep_budget);
  if (!reaped.ok()) {
    return reaped.status();
  }
  cleared.insert(cleared.end(), reaped->begin(), reaped->end());
  if (count_ - cleared.size() >= config().max_sessions) {
    return internal::SessionLimit(config().max_sessions);
  }
  return absl::OkStatus();
}

absl::StatusOr<SessionRef> SqliteStore::Get(std::string_view id) {
  if (absl::Status s = ValidateSessionId(id); !s.ok()) {
    return s;
  }
  absl::MutexLock lock(&mu_);
  const int64_t now_us = NowMicros();
  absl::StatusOr<Row> row = ReadLiveRow(id, now_us);
  if (!row.ok()) {
    return row.status();
  }
  touches_[std::string(id)] = row->last_used_us = now_us;
  return LoadRecord(id, *row);
}

absl::StatusOr<bool> SqliteStore::Exists(std::string_view id) {
  if (absl::Status s = ValidateSessionId(id); !s.ok()) {
    return s;
  }
  absl::MutexLock lock(&mu_);
  absl::StatusOr<std::optional<Row>> row = ReadRow(id);
  if (!row.ok()) {
    return row.status();
  }
  return row->has_value() && !(*row)->Expired(NowMicros());
}

absl::StatusOr<SessionRef> SqliteStore::CompareAndSwap(
    std::string_view id, uint64_t expected_version, SessionRecord record) {
  record.id = std::string(id);
  if (absl::Status s = ValidateRecord(record); !s.ok()) {
    return s;
  }
  record.ttl = absl::Trunc(record.ttl, absl::Microseconds(1));
  absl::StatusOr<std::string> metadata = EncodeMap(record.metadata, false);
  absl::StatusOr<std::string> variables = EncodeMap(record.variables, true);
  if (!metadata.ok() || !variables.ok()) {
    return metadata.ok() ? variables.status() : metadata.status();
  }
  absl::MutexLock lock(&mu_);
  return SwapLocked(expected_version, std::move(record), *metadata, *variables);
}

absl::StatusOr<SessionRef> SqliteStore::SwapLocked(
    uint64_t expected_version, SessionRecord record,
    const std::string& metadata, const std::string& variables) {
  const std::string& id = record.id;
  const int64_t now_us = NowMicros();
  internal::Transaction txn(*db_);
  if (!txn.status().ok()) {
    return txn.status();
  }
  absl::StatusOr<Row> row = ReadLiveRow(id, now_us);
  if (!row.ok()) {
    return row.status();
  }
  if (row->version != expected_version) {
    return internal::SessionConflict(id, row->version, expected_version);
  }
  const int64_t ttl_us = absl::ToInt64Microseconds(record.ttl);
  absl::Status s =
      db_->Run(kUpdateSession, id, static_cast<int64_t>(expected_version + 1),
               record.owner, now_us, ttl_us, now_us + ttl_us,
               internal::AsBlob{metadata}, internal::AsBlob{variables});
  if (s.ok()) {
    s = WritePrograms(id, record.programs);
  }
  if (s.ok()) {
    s = txn.Commit();
  }
  if (!s.ok()) {
    return s;
  }
  touches_.erase(id);
  record.version = expected_version + 1;
  record.created = absl::FromUnixMicros(row->created_us);
  record.last_used = absl::FromUnixMicros(now_us);
  return std::make_shared<const SessionRecord>(std::move(record));
}

absl::StatusOr<bool> SqliteStore::Delete(std::string_view id) {
  if (absl::Status s = ValidateSessionId(id); !s.ok()) {
    return s;
  }
  bool expired = false;
  {
    absl::MutexLock lock(&mu_);
    internal::Transaction txn(*db_);
    if (!txn.status().ok()) {
      return txn.status();
    }
    absl::StatusOr<std::optional<Row>> row = ReadRow(id);
    if (!row.ok()) {
      return row.status();
    }
    if (!row->has_value()) {
      return false;
    }
    expired = (*row)->Expired(NowMicros());
    if (absl::Status s = DeleteRows(id); !s.ok()) {
      return s;
    }
    if (absl::Status s = txn.Commit(); !s.ok()) {
      return s;
    }
    --count_;
    touches_.erase(std::string(id));
  }
  NotifyDeleted(std::string(id),
                expired ? DeleteCause::kExpired : DeleteCause::kDeleted);
  return !expired;
}

absl::StatusOr<std::vector<std::string>> SqliteStore::ListIds(
    const PageRequest& page, size_t limit) {
  // With every refresh on disk, expires_us alone tells live from expired.
  if (absl::Status s = FlushTouches(); !s.ok()) {
    return s;
  }
  absl::StatusOr<internal::Query> query = db_->Prepare(kSelectLiveIds);
  if (!query.ok()) {
    return query.status();
  }
  query->Text(page.start_after)
      .Int(NowMicros())
      .Int(static_cast<int64_t>(limit + 1));
  std::vector<std::string> ids;
  while (true) {
    absl::StatusOr<bool> row = query->Step();
    if (!row.ok()) {
      return row.status();
    }
    if (!*row) {
      return ids;
    }
    ids.emplace_back(query->TextAt(0));
  }
}

absl::StatusOr<IdPage> SqliteStore::List(const PageRequest& page) {
  const size_t limit = std::clamp<size_t>(page.limit, 1, kMaxPageLimit);
  absl::MutexLock lock(&mu_);
  absl::StatusOr<std::vector<std::string>> ids = ListIds(page, limit);
  if (!ids.ok()) {
    return ids.status();
  }
  IdPage result;
  result.ids = *std::move(ids);
  if (result.ids.size() > limit) {
    result.ids.resize(limit);
    result.next_start_after = result.ids.back();
  }
  return result;
}

absl::StatusOr<RecordPage> SqliteStore::Scan(const PageRequest& page) {
  const size_t limit = std::clamp<size_t>(page.limit, 1, kMaxPageLimit);
  absl::MutexLock lock(&mu_);
  absl::StatusOr<std::vector<std::string>> ids = ListIds(page, limit);
  if (!ids.ok()) {
    return ids.status();
  }
  RecordPage result;
  if (ids->size() > limit) {
    ids->resize(limit);
    result.next_start_after = ids->back();
  }
  for (const std::string& id : *ids) {
    absl::StatusOr<std::optional<Row>> row = ReadRow(id);
    if (!row.ok()) {
      return row.status();
    }
    absl::StatusOr<SessionRef> record = LoadRecord(id, **row);
    if (!record.ok()) {
      return record.status();
    }
    result.sessions.push_back(*std::move(record));
  }
  return result;
}

absl::StatusOr<size_t> SqliteStore::Count() {
  absl::MutexLock lock(&mu_);
  return count_;
}

absl::StatusOr<uint64_t> SqliteStore::StoreProgram(std::string_view id,
                                                   std::string_view program_id,
                                                   std::string bytes) {
  if (absl::Status s = ValidateSessionId(id); !s.ok()) {
    return s;
  }
  if (absl::Status s = ValidateProgram(program_id, bytes); !s.ok()) {
    return s;
  }
  absl::MutexLock lock(&mu_);
  const int64_t now_us = NowMicros();
  internal::Transaction txn(*db_);
  if (!txn.status().ok()) {
    return txn.status();
  }
  absl::StatusOr<Row> row = ReadLiveRow(id, now_us);
  if (!row.ok()) {
    return row.status();
  }
  absl::Status s =
      db_->Run(kPutProgram, id, program_id, internal::AsBlob{bytes});
  if (s.ok()) {
    s = db_->Run(kBumpSession, id, now_us);
  }
  if (s.ok()) {
    s = txn.Commit();
  }
  if (!s.ok()) {
    return s;
  }
  touches_.erase(std::string(id));
  return row->version + 1;
}

absl::StatusOr<std::string> SqliteStore::GetProgram(
    std::string_view id, std::string_view program_id) {
  if (absl::Status s = ValidateSessionId(id); !s.ok()) {
    return s;
  }
  if (absl::Status s = ValidateProgramId(program_id); !s.ok()) {
    return s;
  }
  absl::MutexLock lock(&mu_);
  const int64_t now_us = NowMicros();
  absl::StatusOr<Row> row = ReadLiveRow(id, now_us);
  if (!row.ok()) {
    return row.status();
  }
  touches_[std::string(id)] = now_us;
  absl::StatusOr<internal::Query> query = db_->Prepare(kSelectProgram);
  if (!query.ok()) {
    return query.status();
  }
  query->Text(id).Text(program_id);
  absl::StatusOr<bool> found = query->Step();
  if (!found.ok()) {
    return found.status();
  }
  if (!*found) {
    return internal::ProgramNotFound(id, program_id);
  }
  return std::string(query->BlobAt(0));
}

absl::Status SqliteStore::Restore(const SessionRecord& record) {
  if (absl::Status s = ValidateRecord(record); !s.ok()) {
    return s;
  }
  std::vector<std::string> cleared;
  absl::Status status;
  {
    absl::MutexLock lock(&mu_);
    status = RestoreLocked(record, cleared);
  }
  NotifyExpired(cleared);
  return status;
}

absl::Status SqliteStore::RestoreLocked(const SessionRecord& record,
                                        std::vector<std::string>& cleared) {
  const int64_t now_us = NowMicros();
  internal::Transaction txn(*db_);
  if (!txn.status().ok()) {
    return txn.status();
  }
  absl::StatusOr<std::optional<Row>> row = ReadRow(record.id);
  if (!row.ok()) {
    return row.status();
  }
  if (row->has_value() && !(*row)->Expired(now_us)) {
    return internal::SessionExists(record.id);
  }
  return InsertInto(txn, record, row->has_value(), now_us, cleared);
}

absl::Duration SqliteStore::RefreshLag() const {
  return config().refresh_lag;
}

absl::Status SqliteStore::CheckIntegrity() {
  absl::MutexLock lock(&mu_);
  absl::StatusOr<internal::Query> query =
      db_->Prepare("PRAGMA integrity_check");
  if (!query.ok()) {
    return query.status();
  }
  std::vector<std::string> findings;
  while (true) {
    absl::StatusOr<bool> row = query->Step();
    if (!row.ok()) {
      return row.status();
    }
    if (!*row) {
      break;
    }
    findings.emplace_back(query->TextAt(0));
  }
  if (findings.size() == 1 && findings[0] == "ok") {
    return absl::OkStatus();
  }
  return MakeError(absl::StatusCode::kDataLoss, reason::kSessionStoreError,
                   absl::StrCat("session database ", db_->path(),
                                " fails its integrity check: ",
                                absl::StrJoin(findings, "; ")));
}

int64_t SqliteStore::NowMicros() const {
  return absl::ToUnixMicros(Now());
}

absl::StatusOr<std::optional<SqliteStore::Row>> SqliteStore::ReadRow(
    std::string_view id) {
  absl::StatusOr<internal::Query> query = db_->Prepare(kSelectSession);
  if (!query.ok()) {
    return query.status();
  }
  query->Text(id);
  absl::StatusOr<bool> found = query->Step();
  if (!found.ok()) {
    return found.status();
  }
  if (!*found) {
    return std::nullopt;
  }
  Row row;
  row.version = static_cast<uint64_t>(query->IntAt(0));
  row.owner = std::string(query->TextAt(1));
  row.created_us = query->IntAt(2);
  row.last_used_us = query->IntAt(3);
  row.ttl_us = query->IntAt(4);
  row.metadata = std::string(query->BlobAt(5));
  row.variables = std::string(query->BlobAt(6));
  if (auto touch = touches_.find(ToAbsl(id)); touch != touches_.end()) {
    row.last_used_us = std::max(row.last_used_us, touch->second);
  }
  return row;
}

absl::StatusOr<SqliteStore::Row> SqliteStore::ReadLiveRow(std::string_view id,
                                                          int64_t now_us) {
  absl::StatusOr<std::optional<Row>> row = ReadRow(id);
  if (!row.ok()) {
    return row.status();
  }
  if (!row->has_value() || (*row)->Expired(now_us)) {
    return internal::SessionNotFound(id);
  }
  return **std::move(row);
}

absl::StatusOr<SessionRef> SqliteStore::LoadRecord(std::string_view id,
                                                   const Row& row) {
  auto record = std::make_shared<SessionRecord>();
  record->id = std::string(id);
  record->version = row.version;
  record->owner = row.owner;
  record->created = absl::FromUnixMicros(row.created_us);
  record->last_used = absl::FromUnixMicros(row.last_used_us);
  record->ttl = absl::Microseconds(row.ttl_us);
  if (absl::Status s = DecodeMap(row.metadata, false, record->metadata);
      !s.ok()) {
    return Corrupt(id, "metadata", s);
  }
  if (absl::Status s = DecodeMap(row.variables, true, record->variables);
      !s.ok()) {
    return Corrupt(id, "variables", s);
  }
  absl::StatusOr<internal::Query> query = db_->Prepare(kSelectPrograms);
  if (!query.ok()) {
    return query.status();
  }
  query->Text(id);
  while (true) {
    absl::StatusOr<bool> more = query->Step();
    if (!more.ok()) {
      return more.status();
    }
    if (!*more) {
      return record;
    }
    record->programs.emplace(query->TextAt(0), query->BlobAt(1));
  }
}

absl::Status SqliteStore::InsertRecord(const SessionRecord& record) {
  absl::StatusOr<std::string> metadata = EncodeMap(record.metadata, false);
  absl::StatusOr<std::string> variables = EncodeMap(record.variables, true);
  if (!metadata.ok() || !variables.ok()) {
    return metadata.ok() ? variables.status() : metadata.status();
  }
  const int64_t last_used_us = absl::ToUnixMicros(record.last_used);
  const int64_t ttl_us = absl::ToInt64Microseconds(record.ttl);
  absl::Status s =
      db_->Run(kInsertSession, record.id, static_cast<int64_t>(record.version),
               record.owner, absl::ToUnixMicros(record.created), last_used_us,
               ttl_us, last_used_us + ttl_us, internal::AsBlob{*metadata},
               internal::AsBlob{*variables});
  for (auto it = record.programs.begin(); s.ok() && it != record.programs.end();
       ++it) {
    s = db_->Run(kPutProgram, record.id, it->first,
                 internal::AsBlob{it->second});
  }
  return s;
}

// Writes only the programs that changed: an update of one variable must
// not rewrite every program.
absl::Status SqliteStore::WritePrograms(
    std::string_view id, const std::map<std::string, std::string>& programs) {
  absl::StatusOr<std::map<std::string, int64_t>> stored = ProgramSizes(id);
  if (!stored.ok()) {
    return stored.status();
  }
  for (const auto& [program_id, size] : *stored) {
    if (programs.contains(program_id)) {
      continue;
    }
    if (absl::Status s = db_->Run(kDeleteProgram, id, program_id); !s.ok()) {
      return s;
    }
  }
  for (const auto& [program_id, bytes] : programs) {
    auto it = stored->find(program_id);
    if (it != stored->end() &&
        it->second == static_cast<int64_t>(bytes.size())) {
      absl::StatusOr<bool> same = StoredProgramEquals(id, program_id, bytes);
      if (!same.ok()) {
        return same.status();
      }
      if (*same) {
        continue;
      }
    }
    absl::Status s =
        db_->Run(kPutProgram, id, program_id, internal::AsBlob{bytes});
    if (!s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::map<std::string, int64_t>> SqliteStore::ProgramSizes(
    std::string_view id) {
  absl::StatusOr<internal::Query> query = db_->Prepare(kSelectProgramSizes);
  if (!query.ok()) {
    return query.status();
  }
  query->Text(id);
  std::map<std::string, int64_t> sizes;
  absl::StatusOr<bool> row;
  while ((row = query->Step()).ok() && *row) {
    sizes.emplace(query->TextAt(0), query->IntAt(1));
  }
  if (!row.ok()) {
    return row.status();
  }
  return sizes;
}

absl::StatusOr<bool> SqliteStore::StoredProgramEquals(
    std::string_view id, std::string_view program_id, std::string_view bytes) {
  absl::StatusOr<internal::Query> query = db_->Prepare(kSelectProgram);
  if (!query.ok()) {
    return query.status();
  }
  query->Text(id).Text(program_id);
  absl::StatusOr<bool> found = query->Step();
  if (!found.ok()) {
    return found.status();
  }
  return *found && query->BlobAt(0) == bytes;
}

absl::Status SqliteStore::DeleteRows(std::string_view id) {
  absl::Status s = db_->Run(kDeletePrograms, id);
  return s.ok() ? db_->Run(kDeleteSession, id) : s;
}

absl::StatusOr<std::vector<std::string>> SqliteStore::DeleteExpired(
    int64_t now_us, size_t budget) {
  std::vector<std::string> due;
  {
    absl::StatusOr<internal::Query> query = db_->Prepare(kSelectDue);
    if (!query.ok()) {
      return query.status();
    }
    query->Int(now_us).Int(static_cast<int64_t>(budget));
    absl::StatusOr<bool> row;
    while ((row = query->Step()).ok() && *row) {
      // A refresh not yet on disk keeps the session alive.
      std::string id(query->TextAt(0));
      auto touch = touches_.find(id);
      if (touch == touches_.end() ||
          touch->second + query->IntAt(1) <= now_us) {
        due.push_back(std::move(id));
      }
    }
    if (!row.ok()) {
      return row.status();
    }
  }
  for (const std::string& id : due) {
    if (absl::Status s = DeleteRows(id); !s.ok()) {
      return s;
    }
  }
  return due;
}

absl::Status SqliteStore::FlushTouches() {
  if (touches_.empty()) {
    return absl::OkStatus();
  }
  internal::Transaction txn(*db_);
  if (!txn.status().ok()) {
    return txn.status();
  }
  for (const auto& [id, last_used_us] : touches_) {
    if (absl::Status s = db_->Run(kTouchSession, id, last_used_us); !s.ok()) {
      return s;
    }
  }
  if (absl::Status s = txn.Commit(); !s.ok()) {
    return s;
  }
  touches_.clear();
  return absl::OkStatus();
}

void SqliteStore::Forget(const std::vector<std::string>& ids) {
  for (const std::string& id : ids) {
    touches_.erase(id);
  }
}

void SqliteStore::NotifyExpired(const std::vector<std::string>& ids) {
  for (const std::string& id : ids) {
    NotifyDeleted(id, DeleteCause::kExpired);
  }
}

bool SqliteStore::Sweep() {
  // Every call waits while a sweep holds the connection, so one sweep
  // deletes a bounded chunk; a backlog takes several sweeps.
  const size_t chunk = std::min(config().sweep_budget, kMaxExpiriesPerSweep);
  std::vector<std::string> expired;
  {
    absl::MutexLock lock(&mu_);
    absl::Status status = FlushTouches();
    absl::StatusOr<std::vector<std::string>> reaped;
    if (status.ok()) {
      internal::Transaction txn(*db_);
      reaped =
          txn.status().ok() ? DeleteExpired(NowMicros(), chunk) : txn.status();
      status = reaped.ok() ? txn.Commit() : reaped.status();
    }
    if (!status.ok()) {
      Log().warn("session store {}: expiry sweep failed: {}", db_->path(),
                 std::string(status.message()));
      return false;
    }
    count_ -= reaped->size();
    Forget(*reaped);
    expired = *std::move(reaped);
  }
  if (!expired.empty()) {
    Log().info("sessions expired: {} idle past their ttl (first {})",
               expired.size(), expired.front());
  }
  NotifyExpired(expired);
  return expired.size() >= chunk;
}

}  // namespace snakepit
