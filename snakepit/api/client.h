// A client of a snakepitd node. No gRPC or protobuf types in this header.
//
//   auto client = snakepit::Client::Connect({.address = "127.0.0.1:50051"});
//   absl::StatusOr<snakepit::Value> r =
//       (*client)->Call("lab.stats", {{"values", {1, 2, 3}}});
//
// Errors are the node's: the same codes, reasons and Python details a
// local Pool gives, plus UNAVAILABLE "cannot_connect" when the node does
// not answer.

#ifndef SNAKEPIT_API_CLIENT_H_
#define SNAKEPIT_API_CLIENT_H_

#include <cstdint>
#include <functional>
#include <iosfwd>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "snakepit/base/value.h"

namespace snakepit {

struct ClientOptions {
  // "HOST:PORT" or "unix:PATH".
  std::string address;
  // Bearer token, when the node asks for one.
  std::string token;
  // TLS: the CA certificate (PEM file) that signed the node's
  // certificate; empty: plaintext.
  std::string tls_ca_file;
  absl::Duration connect_timeout = absl::Seconds(5);
  uint32_t max_message_bytes = 128u << 20;
};

struct RemoteFunction {
  std::string name;
  std::string pool;
  std::string kind;
  std::string signature;
  std::string doc;
};

struct RemoteCallOptions {
  absl::Duration timeout = absl::InfiniteDuration();
  std::string pool;      // empty: routed by function name
  std::string session;   // empty: none
  std::string affinity;  // "hint" (default), "strict-queue", "strict-fail"
};

// Thread-safe.
class Client {
 public:
  // Connects and waits until the node answers, or connect_timeout.
  static absl::StatusOr<std::unique_ptr<Client>> Connect(
      const ClientOptions& options);
  ~Client();

  // Calls `function` with `args` (map, array or null) within `timeout`.
  absl::StatusOr<Value> Call(const std::string& function, const Value& args,
                             absl::Duration timeout = absl::InfiniteDuration(),
                             const std::string& pool = "");

  // Streams: `on_chunk` sees each chunk as it arrives; returning false
  // cancels the call (the result is then OK).
  absl::Status CallStream(const std::string& function, const Value& args,
                          const std::function<bool(const Value&)>& on_chunk,
                          absl::Duration timeout = absl::InfiniteDuration());

  absl::StatusOr<Value> Call(const std::string& function, const Value& args,
                             const RemoteCallOptions& options);
  absl::Status CallStream(const std::string& function, const Value& args,
                          const std::function<bool(const Value&)>& on_chunk,
                          const RemoteCallOptions& options);

  absl::StatusOr<std::vector<RemoteFunction>> ListFunctions();

  // Sessions. A session is returned as a map: id, version, created and
  // last_used (Unix ms), ttl_seconds, metadata, variables (decoded),
  // programs (ids), created_now.
  absl::StatusOr<Value> CreateSession(const std::string& id = "",
                                      absl::Duration ttl = absl::ZeroDuration(),
                                      bool strict = false);
  absl::StatusOr<Value> GetSession(const std::string& id);
  absl::StatusOr<std::vector<std::string>> ListSessions();
  // True when a session was deleted, false when there was none.
  absl::StatusOr<bool> DeleteSession(const std::string& id);
  // Writes every session to `out` (JSON lines); returns the bytes written.
  absl::StatusOr<size_t> ExportSessions(std::ostream& out);
  // Sends what ExportSessions wrote; returns the node's counts (read,
  // imported, skipped_existing, skipped_expired).
  absl::StatusOr<Value> ImportSessions(std::istream& in);

  // The node's description (NodeInfo) as a Value map.
  absl::StatusOr<Value> NodeInfo();

  // gRPC health check: true when the node is SERVING (ready), false when
  // it answers NOT_SERVING (alive, draining or not ready).
  absl::StatusOr<bool> Serving();

 private:
  struct Impl;
  explicit Client(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace snakepit

#endif  // SNAKEPIT_API_CLIENT_H_
