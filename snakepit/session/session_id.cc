#include "snakepit/session/session_id.h"

#include <array>
#include <cstdint>

#include "absl/strings/str_cat.h"

#include "snakepit/base/status.h"
#include "snakepit/os/file.h"
#include "snakepit/session/errors.h"

namespace snakepit {
namespace {

// [A-Za-z0-9._:-] as a table: ids are checked on every store call.
constexpr std::array<bool, 256> kIdChars = [] {
  std::array<bool, 256> table{};
  for (unsigned char c = 0; c < 128; ++c) {
    table[c] = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
               (c >= '0' && c <= '9') || c == '.' || c == '_' || c == ':' ||
               c == '-';
  }
  return table;
}();

bool IsIdChar(char c) {
  return kIdChars[static_cast<unsigned char>(c)];
}

// Empty when `id` follows the id rule, else what is wrong with it.
std::string IdProblem(std::string_view id) {
  if (id.empty()) {
    return "is empty";
  }
  if (id.size() > kMaxSessionIdLength) {
    return absl::StrCat("is ", id.size(), " bytes long, over the limit of ",
                        kMaxSessionIdLength);
  }
  for (size_t i = 0; i < id.size(); ++i) {
    if (!IsIdChar(id[i])) {
      return absl::StrCat("has a byte outside [A-Za-z0-9._:-] at offset ", i);
    }
  }
  return "";
}

}  // namespace

std::string NewSessionId() { return os::RandomHexId(); }

absl::Status ValidateSessionId(std::string_view id) {
  std::string problem = IdProblem(id);
  if (problem.empty()) {
    return absl::OkStatus();
  }
  return MakeError(
      absl::StatusCode::kInvalidArgument, reason::kInvalidSessionId,
      absl::StrCat("session id \"", internal::QuoteId(id), "\" ", problem));
}

absl::Status ValidateProgramId(std::string_view id) {
  std::string problem = IdProblem(id);
  if (problem.empty()) {
    return absl::OkStatus();
  }
  return MakeError(
      absl::StatusCode::kInvalidArgument, reason::kInvalidArgument,
      absl::StrCat("program id \"", internal::QuoteId(id), "\" ", problem));
}

}  // namespace snakepit
