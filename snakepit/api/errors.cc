#include "snakepit/api/errors.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "snakepit/base/status.h"
#include "snakepit/v1/snakepit.pb.h"

namespace snakepit::api {

std::string ErrorDetailBytes(const absl::Status& status) {
  v1::ErrorDetail detail;
  detail.set_reason(ReasonOf(status));
  detail.set_message(std::string(status.message()));
  PythonDetails python = PythonDetailsOf(status);
  detail.set_python_type(python.type);
  detail.set_traceback(python.traceback);
  detail.set_path(python.path);
  return detail.SerializeAsString();
}

grpc::Status ToGrpcStatus(const absl::Status& status) {
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()),
                      std::string(status.message()));
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
