#include "snakepit/session/session_id.h"

#include <sys/random.h>

#include <array>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "absl/strings/str_cat.h"

#include "snakepit/base/status.h"
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

std::string NewSessionId() {
  // TODO(#4): move the getrandom call behind os/, with the other
  // syscalls.
  uint8_t raw[16];
  // getrandom never returns short for 16 bytes once the pool is ready and
  // blocks until then. Anything else means the kernel cannot give us
  // randomness, and a guessable id would be worse than stopping.
  ssize_t n = -1;
  for (int attempt = 0; attempt < 8 && n != sizeof(raw); ++attempt) {
    n = getrandom(raw, sizeof(raw), 0);
  }
  if (n != sizeof(raw)) {
    std::fprintf(stderr, "snakepit: getrandom failed: errno %d\n", errno);
    std::abort();
  }
  static constexpr char kHex[] = "0123456789abcdef";
  std::string id(2 * sizeof(raw), '0');
  for (size_t i = 0; i < sizeof(raw); ++i) {
    id[2 * i] = kHex[raw[i] >> 4];
    id[2 * i + 1] = kHex[raw[i] & 0xf];
  }
  return id;
}

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
