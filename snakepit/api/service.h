// The snakepit.v1.Snakepit gRPC service: turns RPCs into pool calls.
//
// Callback API throughout: no thread waits on a Python call. A unary RPC
// submits its call and finishes from the call's completion callback; a
// stream writes each chunk as the worker yields it. Cancelling the RPC (or
// its deadline passing) cancels the call.

#ifndef SNAKEPIT_API_SERVICE_H_
#define SNAKEPIT_API_SERVICE_H_

#include <atomic>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "snakepit/admin/metrics.h"
#include "snakepit/pool/pool.h"
#include "snakepit/session/store.h"
#include "snakepit/v1/snakepit.grpc.pb.h"

namespace snakepit::api {

inline constexpr char kMsgpack[] = "application/msgpack";
inline constexpr char kJson[] = "application/json";

// One pool as the service sees it.
struct ServedPool {
  std::string name;
  std::unique_ptr<Pool> pool;
  std::vector<std::string> modules;
  std::string python;
};

// What the service needs of the node. The node owns it and outlives the
// service.
struct NodeState {
  // Fixed once the node serves.
  std::vector<ServedPool> pools;
  std::map<std::string, size_t> function_to_pool;  // first pool wins
  std::string token;  // empty: no auth
  std::vector<std::string> listen;
  absl::Time started = absl::Now();
  std::string version;
  admin::Metrics* metrics = nullptr;
  std::shared_ptr<SessionStore> sessions;

  // Changes while serving.
  std::atomic<bool> draining{false};
  std::atomic<int64_t> rpcs_in_flight{0};
};

class Service final : public v1::Snakepit::CallbackService {
 public:
  explicit Service(NodeState* node) : node_(node) {}

  grpc::ServerUnaryReactor* Call(grpc::CallbackServerContext* context,
                                 const v1::CallRequest* request,
                                 v1::CallResponse* response) override;
  grpc::ServerWriteReactor<v1::CallChunk>* CallStream(
      grpc::CallbackServerContext* context,
      const v1::CallRequest* request) override;
  grpc::ServerUnaryReactor* ListFunctions(
      grpc::CallbackServerContext* context,
      const v1::ListFunctionsRequest* request,
      v1::ListFunctionsResponse* response) override;
  grpc::ServerUnaryReactor* GetNodeInfo(
      grpc::CallbackServerContext* context,
      const v1::GetNodeInfoRequest* request,
      v1::NodeInfo* response) override;

  grpc::ServerUnaryReactor* CreateSession(
      grpc::CallbackServerContext* context,
      const v1::CreateSessionRequest* request,
      v1::SessionInfo* response) override;
  grpc::ServerUnaryReactor* GetSession(grpc::CallbackServerContext* context,
                                       const v1::GetSessionRequest* request,
                                       v1::SessionInfo* response) override;
  grpc::ServerUnaryReactor* ListSessions(
      grpc::CallbackServerContext* context,
      const v1::ListSessionsRequest* request,
      v1::ListSessionsResponse* response) override;
  grpc::ServerUnaryReactor* DeleteSession(
      grpc::CallbackServerContext* context,
      const v1::DeleteSessionRequest* request,
      v1::DeleteSessionResponse* response) override;
  grpc::ServerWriteReactor<v1::SessionsData>* ExportSessions(
      grpc::CallbackServerContext* context,
      const v1::ExportSessionsRequest* request) override;
  grpc::ServerReadReactor<v1::SessionsData>* ImportSessions(
      grpc::CallbackServerContext* context,
      v1::ImportSessionsResponse* response) override;

 private:
  NodeState* const node_;
};

// Checks the bearer token, the draining flag and the route, and turns the
// request's payload into msgpack arguments. Exposed for tests.
struct PreparedCall {
  ServedPool* pool = nullptr;
  std::string args_msgpack;
  std::string accept;  // content type of the result
  CallOptions options;  // timeout, session, affinity
};
absl::StatusOr<PreparedCall> PrepareCall(NodeState& node,
                                         const grpc::CallbackServerContext&
                                             context,
                                         const v1::CallRequest& request);

// Converts a msgpack result to the payload the caller asked for.
absl::Status FillPayload(const std::string& msgpack,
                         const std::string& content_type, v1::Payload* out);

}  // namespace snakepit::api

#endif  // SNAKEPIT_API_SERVICE_H_
