// The stable reasons of session failures, and the errors that carry them.
// docs/sessions.md lists each reason with its code and the caller's next
// move.

#ifndef SNAKEPIT_SESSION_ERRORS_H_
#define SNAKEPIT_SESSION_ERRORS_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"

#include "snakepit/base/status.h"

namespace snakepit {
namespace reason {
// NOT_FOUND: no such session, or it expired.
inline constexpr std::string_view kSessionNotFound = "session_not_found";
// ALREADY_EXISTS: a strict create, or an import, met an existing id.
inline constexpr std::string_view kSessionExists = "session_exists";
// ABORTED: the session moved on; re-read and redo the read-modify-write.
inline constexpr std::string_view kSessionConflict = "session_conflict";
// RESOURCE_EXHAUSTED: the store holds its maximum number of sessions.
inline constexpr std::string_view kSessionLimit = "session_limit";
// INVALID_ARGUMENT: a session id outside the allowed alphabet or length.
inline constexpr std::string_view kInvalidSessionId = "invalid_session_id";
// NOT_FOUND: the session holds no program with that id.
inline constexpr std::string_view kProgramNotFound = "program_not_found";
// RESOURCE_EXHAUSTED: a program over the store's size limit.
inline constexpr std::string_view kProgramTooLarge = "program_too_large";
// The store's own medium failed; the code says how (UNAVAILABLE,
// RESOURCE_EXHAUSTED for a full disk, DATA_LOSS, FAILED_PRECONDITION).
inline constexpr std::string_view kSessionStoreError = "session_store_error";
// An import file that is malformed, truncated, or did not fully apply.
inline constexpr std::string_view kImportMismatch = "import_mismatch";
}  // namespace reason

namespace internal {

// `id` made safe to quote in an error message: escaped and cut short.
std::string QuoteId(std::string_view id);

absl::Status SessionNotFound(std::string_view id);
absl::Status SessionExists(std::string_view id);

// "session <id> is at v12, caller had v11".
absl::Status SessionConflict(std::string_view id, uint64_t current,
                             uint64_t expected);

absl::Status SessionLimit(size_t max_sessions);

absl::Status ProgramNotFound(std::string_view id, std::string_view program_id);

}  // namespace internal
}  // namespace snakepit

#endif  // SNAKEPIT_SESSION_ERRORS_H_
