#include "snakepit/base/status.h"

#include <cstring>
#include <optional>
#include <utility>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"

namespace snakepit {
namespace {

constexpr std::string_view kReasonKey = "snakepit.dev/reason";
constexpr std::string_view kTypeKey = "snakepit.dev/python_type";
constexpr std::string_view kTracebackKey = "snakepit.dev/traceback";
constexpr std::string_view kPathKey = "snakepit.dev/path";

struct ReasonCode {
  std::string_view reason;
  absl::StatusCode code;
};

constexpr ReasonCode kReasonCodes[] = {
    {reason::kPythonException, absl::StatusCode::kUnknown},
    {reason::kInvalidArgument, absl::StatusCode::kInvalidArgument},
    {reason::kSerializationError, absl::StatusCode::kInvalidArgument},
    {reason::kPayloadTooLarge, absl::StatusCode::kResourceExhausted},
    {reason::kPayloadTooDeep, absl::StatusCode::kInvalidArgument},
    {reason::kUnknownFunction, absl::StatusCode::kNotFound},
    {reason::kCancelled, absl::StatusCode::kCancelled},
    {reason::kDeadlineExceeded, absl::StatusCode::kDeadlineExceeded},
    {reason::kWorkerCrashed, absl::StatusCode::kUnavailable},
    {reason::kQueueFull, absl::StatusCode::kResourceExhausted},
    {reason::kPoolClosed, absl::StatusCode::kUnavailable},
    {reason::kImportError, absl::StatusCode::kFailedPrecondition},
    {reason::kStartHookFailed, absl::StatusCode::kFailedPrecondition},
    {reason::kWorkerStartFailed, absl::StatusCode::kFailedPrecondition},
    {reason::kProtocolError, absl::StatusCode::kInternal},
    {reason::kInternal, absl::StatusCode::kInternal},
};

std::string PayloadOr(const absl::Status& status, std::string_view key) {
  auto value = status.GetPayload(ToAbsl(key));
  return value ? std::string(*value) : std::string();
}

}  // namespace

absl::StatusCode CodeForReason(std::string_view reason) {
  for (const ReasonCode& entry : kReasonCodes) {
    if (entry.reason == reason) {
      return entry.code;
    }
  }
  return absl::StatusCode::kUnknown;
}

absl::Status MakeError(absl::StatusCode code, std::string_view reason,
                       std::string_view message) {
  absl::Status status(code, ToAbsl(message));
  status.SetPayload(ToAbsl(kReasonKey), absl::Cord(ToAbsl(reason)));
  return status;
}

absl::Status ReasonError(std::string_view reason, std::string_view message) {
  return MakeError(CodeForReason(reason), reason, message);
}

absl::Status WithMessage(const absl::Status& status,
                         std::string_view message) {
  absl::Status out(status.code(), ToAbsl(message));
  status.ForEachPayload(
      [&out](absl::string_view url, const absl::Cord& payload) {
        out.SetPayload(url, payload);
      });
  return out;
}

std::string ReasonOf(const absl::Status& status) {
  if (status.ok()) {
    return "";
  }
  std::string reason = PayloadOr(status, kReasonKey);
  return reason.empty() ? std::string(reason::kInternal) : reason;
}

void SetPythonDetails(absl::Status& status, const PythonDetails& details) {
  if (!details.type.empty()) {
    status.SetPayload(ToAbsl(kTypeKey), absl::Cord(details.type));
  }
  if (!details.traceback.empty()) {
    status.SetPayload(ToAbsl(kTracebackKey), absl::Cord(details.traceback));
  }
  if (!details.path.empty()) {
    status.SetPayload(ToAbsl(kPathKey), absl::Cord(details.path));
  }
}

PythonDetails PythonDetailsOf(const absl::Status& status) {
  return PythonDetails{PayloadOr(status, kTypeKey),
                       PayloadOr(status, kTracebackKey),
                       PayloadOr(status, kPathKey)};
}

absl::Status ErrnoToStatus(int err, std::string_view context) {
  std::string message = absl::StrCat(ToAbsl(context), ": ", std::strerror(err));
  absl::StatusCode code = absl::StatusCode::kInternal;
  switch (err) {
    case ENOENT:
      code = absl::StatusCode::kNotFound;
      break;
    case EACCES:
    case EPERM:
      code = absl::StatusCode::kPermissionDenied;
      break;
    case EAGAIN:
    case EMFILE:
    case ENFILE:
    case ENOMEM:
      code = absl::StatusCode::kResourceExhausted;
      break;
    case EPIPE:
    case ECONNRESET:
      code = absl::StatusCode::kUnavailable;
      break;
    default:
      break;
  }
  return MakeError(code, reason::kInternal, message);
}

std::string DescribeError(const absl::Status& status) {
  return absl::StrCat("error: ", ReasonOf(status), ": ", status.message());
}

}  // namespace snakepit
