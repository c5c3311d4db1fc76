// Conversions between our absl::Status errors and gRPC statuses. The
// stable reason and Python details travel in the trailing metadata
// "snakepit-error-bin" as a snakepit.v1.ErrorDetail.

#ifndef SNAKEPIT_API_ERRORS_H_
#define SNAKEPIT_API_ERRORS_H_

#include <map>
#include <string>

#include "absl/status/status.h"
#include "grpcpp/grpcpp.h"

namespace snakepit::api {

inline constexpr char kErrorTrailer[] = "snakepit-error-bin";

// The serialized ErrorDetail for `status` (reason, message, Python type,
// traceback, path).
std::string ErrorDetailBytes(const absl::Status& status);

// A gRPC status with the same code and message.
grpc::Status ToGrpcStatus(const absl::Status& status);

// Rebuilds our status from a gRPC status and the server's trailing
// metadata; the reason defaults from the code when no trailer came.
absl::Status FromGrpc(const grpc::Status& status,
                      const std::multimap<grpc::string_ref,
                                          grpc::string_ref>& trailers);

// "DEADLINE_EXCEEDED" for kDeadlineExceeded, and so on.
std::string CodeName(absl::StatusCode code);

}  // namespace snakepit::api

#endif  // SNAKEPIT_API_ERRORS_H_
