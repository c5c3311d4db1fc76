// Error helpers: every failure in Snakepit is an absl::Status whose code is
// chosen by the caller's next move and which carries a stable reason.
//
// The reason travels as a Status payload so that it survives copies and can
// cross a gRPC boundary unchanged. Python failures also carry the exception
// type and traceback; serialization failures carry the path of the value.

#ifndef SNAKEPIT_BASE_STATUS_H_
#define SNAKEPIT_BASE_STATUS_H_

#include <string>
#include <string_view>

#include "absl/status/status.h"

namespace snakepit {

// Debian's Abseil has its own string_view type; this converts at the
// boundary so the rest of the code can use std::string_view.
inline absl::string_view ToAbsl(std::string_view s) {
  return absl::string_view(s.data(), s.size());
}

// Stable reasons. docs/protocol.md lists each with its status code.
namespace reason {
inline constexpr std::string_view kPythonException = "python_exception";
inline constexpr std::string_view kInvalidArgument = "invalid_argument";
inline constexpr std::string_view kSerializationError = "serialization_error";
inline constexpr std::string_view kPayloadTooLarge = "payload_too_large";
inline constexpr std::string_view kPayloadTooDeep = "payload_too_deep";
inline constexpr std::string_view kUnknownFunction = "unknown_function";
inline constexpr std::string_view kCancelled = "cancelled";
inline constexpr std::string_view kDeadlineExceeded = "deadline_exceeded";
inline constexpr std::string_view kWorkerCrashed = "worker_crashed";
inline constexpr std::string_view kQueueFull = "queue_full";
inline constexpr std::string_view kPoolClosed = "pool_closed";
inline constexpr std::string_view kImportError = "import_error";
inline constexpr std::string_view kStartHookFailed = "start_hook_failed";
inline constexpr std::string_view kWorkerStartFailed = "worker_start_failed";
inline constexpr std::string_view kProtocolError = "protocol_error";
inline constexpr std::string_view kInternal = "internal";
}  // namespace reason

// Returns the status code that goes with a stable reason; UNKNOWN for a
// reason this build does not know.
absl::StatusCode CodeForReason(std::string_view reason);

// Builds an error with an explicit code and reason.
absl::Status MakeError(absl::StatusCode code, std::string_view reason,
                       std::string_view message);

// Builds an error whose code comes from CodeForReason(reason).
absl::Status ReasonError(std::string_view reason, std::string_view message);

// `status` with its message replaced, code, reason and details kept.
absl::Status WithMessage(const absl::Status& status, std::string_view message);

// The stable reason of `status`: "" for OK, "internal" when none was set.
std::string ReasonOf(const absl::Status& status);

// Details of a failure raised in Python. Empty strings when absent.
struct PythonDetails {
  std::string type;       // "ValueError", "mymodule.MyError"
  std::string traceback;  // formatted, as Python prints it
  std::string path;       // "$.a[2]" for serialization failures
};

// Attaches `details` to `status` (non-empty fields only).
void SetPythonDetails(absl::Status& status, const PythonDetails& details);

// Reads back what SetPythonDetails attached.
PythonDetails PythonDetailsOf(const absl::Status& status);

// Converts an errno value into a status naming `context`, e.g.
// "spawn worker for pool default: No such file or directory".
absl::Status ErrnoToStatus(int err, std::string_view context);

// "error: <reason>: <message>", the one-line form the CLI prints.
std::string DescribeError(const absl::Status& status);

}  // namespace snakepit

#endif  // SNAKEPIT_BASE_STATUS_H_
