// A thin layer over the sqlite3 C API for the sqlite session store:
// owning handles, cached statements, transactions, and one mapping from
// sqlite result codes to statuses.

#ifndef SNAKEPIT_SESSION_INTERNAL_SQLITE_H_
#define SNAKEPIT_SESSION_INTERNAL_SQLITE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"

struct sqlite3;
struct sqlite3_stmt;

namespace snakepit::internal {

// A status for sqlite result `rc`, reason session_store_error, naming
// `context`. The code follows the caller's next move: UNAVAILABLE for a
// busy or failing medium, RESOURCE_EXHAUSTED for a full disk, DATA_LOSS
// for a corrupt file, FAILED_PRECONDITION for one that cannot be opened or
// written, INTERNAL for the rest.
absl::Status SqliteError(int rc, sqlite3* db, std::string_view context);

// Marks a parameter to bind as a blob; plain strings bind as text.
struct AsBlob {
  std::string_view bytes;
};

// One use of a prepared statement: binds parameters in order, steps, and
// resets the statement when destroyed. Bound text and blobs are not
// copied, so they must outlive the Query. Move-only.
class Query {
 public:
  Query(sqlite3* db, sqlite3_stmt* stmt) : db_(db), stmt_(stmt) {}
  Query(Query&& other) noexcept;
  Query& operator=(Query&&) = delete;
  ~Query();

  Query& Text(std::string_view value);
  Query& Blob(std::string_view value);
  Query& Int(int64_t value);
  Query& Bind(std::string_view value) { return Text(value); }
  Query& Bind(AsBlob value) { return Blob(value.bytes); }
  Query& Bind(int64_t value) { return Int(value); }

  // True with a row to read, false when done.
  absl::StatusOr<bool> Step();
  // Steps a statement that returns no rows.
  absl::Status Run();

  int64_t IntAt(int column) const;
  // Valid until the next Step or the end of the Query.
  std::string_view TextAt(int column) const;
  std::string_view BlobAt(int column) const;

 private:
  sqlite3* db_;
  sqlite3_stmt* stmt_;
  int next_param_ = 1;
};

// An open database connection with a cache of prepared statements.
// Not thread-safe: the store serialises all use.
class SqliteDb {
 public:
  // Opens or creates the file at `path`.
  static absl::StatusOr<std::unique_ptr<SqliteDb>> Open(
      const std::string& path);
  ~SqliteDb();
  SqliteDb(const SqliteDb&) = delete;
  SqliteDb& operator=(const SqliteDb&) = delete;

  // Runs one or more statements that return no rows.
  absl::Status Exec(const char* sql);

  // A query on the statement for `sql`, prepared on first use. `sql` must
  // be a string literal: the cache is keyed by its address.
  absl::StatusOr<Query> Prepare(const char* sql);

  // Prepares `sql`, binds `args` in order (see Query::Bind) and runs it
  // to completion.
  template <typename... Args>
  absl::Status Run(const char* sql, const Args&... args) {
    absl::StatusOr<Query> query = Prepare(sql);
    if (!query.ok()) {
      return query.status();
    }
    (query->Bind(args), ...);
    return query->Run();
  }

  sqlite3* raw() const { return db_; }
  const std::string& path() const { return path_; }

 private:
  SqliteDb(sqlite3* db, std::string path) : db_(db), path_(std::move(path)) {}

  sqlite3* db_;
  const std::string path_;
  absl::flat_hash_map<const char*, sqlite3_stmt*> statements_;
};

// BEGIN IMMEDIATE on construction (check status()), ROLLBACK on
// destruction unless committed. IMMEDIATE takes the write lock at once, so
// a transaction never fails half-way for lack of it.
class Transaction {
 public:
  explicit Transaction(SqliteDb& db);
  ~Transaction();
  Transaction(const Transaction&) = delete;
  Transaction& operator=(const Transaction&) = delete;

  const absl::Status& status() const { return status_; }
  // Durable on return (with synchronous=FULL) when OK.
  absl::Status Commit();

 private:
  SqliteDb& db_;
  absl::Status status_;
  bool open_ = false;
};

}  // namespace snakepit::internal

#endif  // SNAKEPIT_SESSION_INTERNAL_SQLITE_H_
