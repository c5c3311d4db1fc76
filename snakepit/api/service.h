// The snakepit.v1.Snakepit gRPC service: turns RPCs into pool calls.
//
// Call, the unary RPC most clients make, is served on gRPC's async API by
// a few threads the service owns (StartCallThreads). The thread that takes
// an RPC submits its call and, when the function has been quick and
// another of these threads is free to take the next RPC, reads the
// worker's reply itself for up to kDriveBudget (Call::WaitFor) and answers
// at once: no thread handoff on the way back. Otherwise the RPC finishes
// from the call's completion callback, so no thread waits on a long
// Python call. The other methods use the callback API; a stream writes
// each chunk as the worker yields it. Cancelling an RPC (or its deadline
// passing) cancels the call.

#ifndef SNAKEPIT_API_SERVICE_H_
#define SNAKEPIT_API_SERVICE_H_

#include <atomic>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "snakepit/admin/metrics.h"
#include "snakepit/pool/pool.h"
#include "snakepit/session/store.h"
#include "snakepit/v1/snakepit.grpc.pb.h"

namespace grpc {
class ServerBuilder;
}  // namespace grpc

namespace snakepit::api {

inline constexpr char kMsgpack[] = "application/msgpack";
inline constexpr char kJson[] = "application/json";

// One pool as the service sees it.
struct ServedPool {
  std::string name;
  std::unique_ptr<Pool> pool;
  std::set<std::string, std::less<>> functions;  // the pool's, by name
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

// How long a thread serving Call reads a worker's reply itself before it
// leaves the call to its completion callback. Not 1 ms: with a 1 ms poll
// timeout a small call through the node took 98-150 us, with 2 to 20 ms
// 82-96 us (Linux 6.18; docs/architecture.md).
inline constexpr absl::Duration kDriveBudget = absl::Milliseconds(5);

// Call on the async API, every other method on the callback API.
// clang-format off
using ServiceBase = v1::Snakepit::WithAsyncMethod_Call<
    v1::Snakepit::WithCallbackMethod_CallStream<
    v1::Snakepit::WithCallbackMethod_ListFunctions<
    v1::Snakepit::WithCallbackMethod_GetNodeInfo<
    v1::Snakepit::WithCallbackMethod_CreateSession<
    v1::Snakepit::WithCallbackMethod_GetSession<
    v1::Snakepit::WithCallbackMethod_ListSessions<
    v1::Snakepit::WithCallbackMethod_DeleteSession<
    v1::Snakepit::WithCallbackMethod_ExportSessions<
    v1::Snakepit::WithCallbackMethod_ImportSessions<
    v1::Snakepit::Service>>>>>>>>>>;
// clang-format on

// The threads serving Call and what they share (service.cc).
struct CallThreads;

// Registered with one server. Serving Call takes three steps around the
// server's life: AddCallQueue before it is built, StartCallThreads once it
// is, StopCallThreads after its Shutdown. StopCallThreads cancels the
// calls still running (shut the pools down first to let them finish),
// waits up to 30 s for their RPCs to end, and returns how many did not
// (an answer after that would use a queue already shut down); it is
// idempotent, and the destructor runs it.
class Service final : public ServiceBase {
 public:
  explicit Service(NodeState* node);
  ~Service() override;

  void AddCallQueue(grpc::ServerBuilder& builder);
  void StartCallThreads();
  size_t StopCallThreads();

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
  std::unique_ptr<CallThreads> call_threads_;
};

// Checks the bearer token, the draining flag and the route, and turns the
// request's payload into msgpack arguments. Exposed for tests.
struct PreparedCall {
  ServedPool* pool = nullptr;
  std::string args_msgpack;
  std::string accept;  // content type of the result
  CallOptions options;  // timeout, session, affinity
};
absl::StatusOr<PreparedCall> PrepareCall(
    NodeState& node, const grpc::ServerContextBase& context,
    const v1::CallRequest& request);

// Converts a msgpack result to the payload the caller asked for; msgpack
// is moved into the payload, not copied.
absl::Status FillPayload(std::string msgpack, const std::string& content_type,
                         v1::Payload* out);

}  // namespace snakepit::api

#endif  // SNAKEPIT_API_SERVICE_H_
