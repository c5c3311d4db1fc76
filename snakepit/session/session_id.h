// Session ids: the node makes random ones; users may bring their own.

#ifndef SNAKEPIT_SESSION_SESSION_ID_H_
#define SNAKEPIT_SESSION_SESSION_ID_H_

#include <cstddef>
#include <string>
#include <string_view>

#include "absl/status/status.h"

namespace snakepit {

// Longest session or program id, in bytes.
inline constexpr size_t kMaxSessionIdLength = 128;

// A new id: 128 bits from the kernel's random source, as 32 lowercase hex
// characters. Unguessable, so an id may serve as a bearer token.
// Thread-safe.
std::string NewSessionId();

// OK when `id` is 1 to 128 characters of [A-Za-z0-9._:-]; otherwise
// INVALID_ARGUMENT with reason invalid_session_id. The alphabet keeps ids
// safe in etcd keys, file names, URLs and log lines.
absl::Status ValidateSessionId(std::string_view id);

// The same rule for the id of a stored program, with reason
// invalid_argument.
absl::Status ValidateProgramId(std::string_view id);

}  // namespace snakepit

#endif  // SNAKEPIT_SESSION_SESSION_ID_H_
