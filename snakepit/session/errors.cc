#include "snakepit/session/errors.h"

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

namespace snakepit::internal {

std::string QuoteId(std::string_view id) {
  constexpr size_t kShown = 64;
  std::string_view shown = id.substr(0, kShown);
  std::string quoted = absl::CHexEscape(ToAbsl(shown));
  if (id.size() > kShown) {
    absl::StrAppend(&quoted, "... (", id.size(), " bytes)");
  }
  return quoted;
}

absl::Status SessionNotFound(std::string_view id) {
  return MakeError(absl::StatusCode::kNotFound, reason::kSessionNotFound,
                   absl::StrCat("session ", QuoteId(id),
                                " not found (never created, deleted or "
                                "expired)"));
}

absl::Status SessionExists(std::string_view id) {
  return MakeError(absl::StatusCode::kAlreadyExists, reason::kSessionExists,
                   absl::StrCat("session ", QuoteId(id), " already exists"));
}

absl::Status SessionConflict(std::string_view id, uint64_t current,
                             uint64_t expected) {
  return MakeError(absl::StatusCode::kAborted, reason::kSessionConflict,
                   absl::StrCat("session ", QuoteId(id), " is at v", current,
                                ", caller had v", expected));
}

absl::Status SessionLimit(size_t max_sessions) {
  return MakeError(
      absl::StatusCode::kResourceExhausted, reason::kSessionLimit,
      absl::StrCat("session limit of ", max_sessions,
                   " reached (sessions.max_sessions); delete sessions or "
                   "raise the limit"));
}

absl::Status ProgramNotFound(std::string_view id, std::string_view program_id) {
  return MakeError(absl::StatusCode::kNotFound, reason::kProgramNotFound,
                   absl::StrCat("session ", QuoteId(id), " has no program ",
                                QuoteId(program_id)));
}

}  // namespace snakepit::internal
