// Moving sessions between stores: `snakepit session export > FILE` and
// `snakepit session import < FILE`. The format is JSON lines, specified in
// docs/sessions.md, "Export format".

#ifndef SNAKEPIT_SESSION_EXPORT_H_
#define SNAKEPIT_SESSION_EXPORT_H_

#include <cstddef>
#include <istream>
#include <ostream>

#include "absl/status/statusor.h"

#include "snakepit/session/store.h"

namespace snakepit {

// Writes every live session of `store` to `out`, without refreshing them,
// and returns how many. Each record is consistent; the whole is not a
// point-in-time snapshot of a store in use.
absl::StatusOr<size_t> ExportSessions(SessionStore& store, std::ostream& out);

enum class OnExisting {
  kFail,  // import the rest, then fail naming the ids (import_mismatch)
  kSkip,  // count them in ImportResult::skipped_existing
};

struct ImportOptions {
  OnExisting on_existing = OnExisting::kFail;
};

struct ImportResult {
  size_t read = 0;      // records in the file
  size_t imported = 0;  // records now in the store
  size_t skipped_existing = 0;
  size_t skipped_expired = 0;  // idle past their TTL by now
};

// Reads a file ExportSessions wrote into `store`, keeping each record's
// version, times and owner. Verifies the count in the file's end line and
// that every imported session is then in the store.
//
// Errors: INVALID_ARGUMENT (serialization_error) for a malformed line,
// naming it; DATA_LOSS (import_mismatch) for a file whose end line is
// missing or disagrees with what it holds, or for imported sessions not
// found afterwards; FAILED_PRECONDITION (import_mismatch) for existing
// ids under OnExisting::kFail; the store's error (e.g. session_limit) when
// a write fails, which stops the import there.
absl::StatusOr<ImportResult> ImportSessions(std::istream& in,
                                            SessionStore& store,
                                            const ImportOptions& options = {});

}  // namespace snakepit

#endif  // SNAKEPIT_SESSION_EXPORT_H_
