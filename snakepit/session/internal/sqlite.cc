#include "snakepit/session/internal/sqlite.h"

#include <sqlite3.h>

#include <utility>

#include "absl/strings/str_cat.h"

#include "snakepit/base/status.h"
#include "snakepit/session/errors.h"

namespace snakepit::internal {
namespace {

absl::StatusCode CodeFor(int rc) {
  switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
    case SQLITE_IOERR:
    case SQLITE_PROTOCOL:
      return absl::StatusCode::kUnavailable;
    case SQLITE_FULL:
    case SQLITE_NOMEM:
      return absl::StatusCode::kResourceExhausted;
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
      return absl::StatusCode::kDataLoss;
    case SQLITE_CANTOPEN:
    case SQLITE_PERM:
    case SQLITE_READONLY:
    case SQLITE_AUTH:
      return absl::StatusCode::kFailedPrecondition;
    default:
      return absl::StatusCode::kInternal;
  }
}

}  // namespace

absl::Status SqliteError(int rc, sqlite3* db, std::string_view context) {
  std::string message = absl::StrCat(ToAbsl(context), ": ", sqlite3_errstr(rc));
  const char* detail = db != nullptr ? sqlite3_errmsg(db) : nullptr;
  if (detail != nullptr && std::string_view(detail) != sqlite3_errstr(rc)) {
    absl::StrAppend(&message, " (", detail, ")");
  }
  return MakeError(CodeFor(rc), reason::kSessionStoreError, message);
}

Query::Query(Query&& other) noexcept
    : db_(other.db_),
      stmt_(std::exchange(other.stmt_, nullptr)),
      next_param_(other.next_param_) {}

Query::~Query() {
  if (stmt_ != nullptr) {
    sqlite3_reset(stmt_);
    sqlite3_clear_bindings(stmt_);
  }
}

Query& Query::Text(std::string_view value) {
  sqlite3_bind_text(stmt_, next_param_++, value.data(),
                    static_cast<int>(value.size()), SQLITE_STATIC);
  return *this;
}

Query& Query::Blob(std::string_view value) {
  // A null pointer would bind NULL; an empty blob must stay a blob.
  static const char kEmpty = 0;
  sqlite3_bind_blob(stmt_, next_param_++,
                    value.empty() ? &kEmpty : value.data(),
                    static_cast<int>(value.size()), SQLITE_STATIC);
  return *this;
}

Query& Query::Int(int64_t value) {
  sqlite3_bind_int64(stmt_, next_param_++, value);
  return *this;
}

absl::StatusOr<bool> Query::Step() {
  int rc = sqlite3_step(stmt_);
  if (rc == SQLITE_ROW) {
    return true;
  }
  if (rc == SQLITE_DONE) {
    return false;
  }
  return SqliteError(rc, db_, sqlite3_sql(stmt_));
}

absl::Status Query::Run() {
  absl::StatusOr<bool> row = Step();
  return row.ok() ? absl::OkStatus() : row.status();
}

int64_t Query::IntAt(int column) const {
  return sqlite3_column_int64(stmt_, column);
}

std::string_view Query::TextAt(int column) const {
  const auto* text =
      reinterpret_cast<const char*>(sqlite3_column_text(stmt_, column));
  int size = sqlite3_column_bytes(stmt_, column);
  return text == nullptr ? std::string_view() : std::string_view(text, size);
}

std::string_view Query::BlobAt(int column) const {
  const auto* blob =
      static_cast<const char*>(sqlite3_column_blob(stmt_, column));
  int size = sqlite3_column_bytes(stmt_, column);
  return blob == nullptr ? std::string_view() : std::string_view(blob, size);
}

absl::StatusOr<std::unique_ptr<SqliteDb>> SqliteDb::Open(
    const std::string& path) {
  sqlite3* db = nullptr;
  // NOMUTEX: the store holds its own lock around every use.
  int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX;
  int rc = sqlite3_open_v2(path.c_str(), &db, flags, nullptr);
  if (rc != SQLITE_OK) {
    absl::Status status =
        SqliteError(rc, db, absl::StrCat("open session database ", path));
    sqlite3_close(db);
    return status;
  }
  sqlite3_extended_result_codes(db, 1);
  return std::unique_ptr<SqliteDb>(new SqliteDb(db, path));
}

SqliteDb::~SqliteDb() {
  for (auto& [sql, stmt] : statements_) {
    sqlite3_finalize(stmt);
  }
  sqlite3_close(db_);
}

absl::Status SqliteDb::Exec(const char* sql) {
  int rc = sqlite3_exec(db_, sql, nullptr, nullptr, nullptr);
  return rc == SQLITE_OK ? absl::OkStatus() : SqliteError(rc, db_, sql);
}

absl::StatusOr<Query> SqliteDb::Prepare(const char* sql) {
  auto it = statements_.find(sql);
  if (it == statements_.end()) {
    sqlite3_stmt* stmt = nullptr;
    int rc = sqlite3_prepare_v3(db_, sql, -1, SQLITE_PREPARE_PERSISTENT, &stmt,
                                nullptr);
    if (rc != SQLITE_OK) {
      return SqliteError(rc, db_, sql);
    }
    it = statements_.emplace(sql, stmt).first;
  }
  return Query(db_, it->second);
}

Transaction::Transaction(SqliteDb& db) : db_(db) {
  status_ = db_.Exec("BEGIN IMMEDIATE");
  open_ = status_.ok();
}

Transaction::~Transaction() {
  if (open_) {
    // Fails only when sqlite already rolled back on its own (after some
    // I/O errors); either way the transaction is over.
    db_.Exec("ROLLBACK").IgnoreError();
  }
}

absl::Status Transaction::Commit() {
  if (!open_) {
    return status_;
  }
  absl::Status status = db_.Exec("COMMIT");
  if (status.ok()) {
    open_ = false;
  }
  return status;
}

}  // namespace snakepit::internal
