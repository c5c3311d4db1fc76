#include "snakepit/api/errors.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "snakepit/base/status.h"
#include "snakepit/base/value.h"
#include "snakepit/v1/snakepit.pb.h"

namespace snakepit::api {

namespace {

// gRPC refuses trailers past its metadata limit (8 KiB by default),
// which would lose the whole error; protobuf strings must be UTF-8. So
// each field is cut to a budget (a traceback keeps its end, where the
// error is) and invalid bytes become U+FFFD.
std::string Bounded(std::string_view text, size_t budget, bool keep_end) {
  std::string valid = Value(std::string(text))
                          .dump(-1, ' ', false,
                                Value::error_handler_t::replace);
  // dump() quotes and escapes; parse back the plain, repaired string.
  valid = Value::parse(valid).get<std::string>();
  if (valid.size() <= budget) {
    return valid;
  }
  constexpr std::string_view kCut = "[...] ";
  size_t keep = budget - kCut.size();
  size_t start = keep_end ? valid.size() - keep : 0;
  // Do not split a UTF-8 sequence.
  while (start > 0 && start < valid.size() &&
         (static_cast<unsigned char>(valid[start]) & 0xc0) == 0x80) {
    ++start;
  }
  size_t end = start + keep;
  while (end < valid.size() &&
         (static_cast<unsigned char>(valid[end]) & 0xc0) == 0x80) {
    --end;
  }
  std::string part = valid.substr(start, end - start);
  return keep_end ? absl::StrCat(ToAbsl(kCut), part)
                  : absl::StrCat(part, " [...]");
}

constexpr size_t kMessageBudget = 1024;
constexpr size_t kTracebackBudget = 3072;

}  // namespace

std::string ErrorDetailBytes(const absl::Status& status) {
  v1::ErrorDetail detail;
  detail.set_reason(Bounded(ReasonOf(status), 128, false));
  std::string message(status.message());
  detail.set_message(Bounded(message, kMessageBudget, false));
  PythonDetails python = PythonDetailsOf(status);
  detail.set_python_type(Bounded(python.type, 256, false));
  detail.set_traceback(Bounded(python.traceback, kTracebackBudget, true));
  detail.set_path(Bounded(python.path, 256, false));
  return detail.SerializeAsString();
}

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) {
    return grpc::Status::OK;
  }
  std::string message(status.message());
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()),
                      Bounded(message, kMessageBudget, false));
}

absl::Status FromGrpc(
    const grpc::Status& status,
    const std::multimap<grpc::string_ref, grpc::string_ref>& trailers) {
  if (status.ok()) {
    return absl::OkStatus();
  }
  auto code = static_cast<absl::StatusCode>(status.error_code());
  auto it = trailers.find(kErrorTrailer);
  v1::ErrorDetail detail;
  if (it == trailers.end() ||
      !detail.ParseFromArray(it->second.data(),
                             static_cast<int>(it->second.size()))) {
    // Not from a snakepit node's handler: gRPC itself (connection,
    // deadline, message size) or an older node.
    std::string why = code == absl::StatusCode::kUnavailable
                          ? "unavailable"
                          : absl::AsciiStrToLower(
                                ToAbsl(CodeName(code)));
    return MakeError(code, why, status.error_message());
  }
  absl::Status out = MakeError(code, detail.reason(), detail.message());
  SetPythonDetails(out, {detail.python_type(), detail.traceback(),
                         detail.path()});
  return out;
}

std::string CodeName(absl::StatusCode code) {
  std::string name = absl::StatusCodeToString(code);
  for (char& c : name) {
    c = c == ' ' ? '_' : static_cast<char>(std::toupper(c));
  }
  return name;
}

}  // namespace snakepit::api
