// A snakepitd node: its pools, the gRPC API, the admin endpoint, and the
// orderly shutdown on SIGTERM.

#ifndef SNAKEPIT_SERVER_NODE_H_
#define SNAKEPIT_SERVER_NODE_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "snakepit/admin/admin_server.h"
#include "snakepit/admin/metrics.h"
#include "snakepit/api/service.h"
#include "snakepit/server/config.h"

namespace grpc {
class Server;
}  // namespace grpc

namespace snakepit::server {

inline constexpr char kVersion[] = "0.1.0";

class Node {
 public:
  // Starts every pool (concurrently), then the gRPC listeners and the
  // admin endpoint, and writes the ready file. Fails if any pool cannot
  // start or any address cannot be bound.
  static absl::StatusOr<std::unique_ptr<Node>> Start(NodeConfig config);
  ~Node();

  // Waits for SIGTERM, SIGINT or SIGHUP, which the calling thread (and
  // every thread, see BlockShutdownSignals) must have blocked; then
  // drains and returns the exit status: 0 after an orderly drain. A
  // second signal during the drain ends the process at once.
  int ServeUntilSignalled();

  // Refuses new calls, lets calls in flight finish within the drain
  // timeout, ends the workers and stops serving. Idempotent.
  void Drain();

  // The gRPC and admin addresses actually bound.
  const std::vector<std::string>& grpc_addresses() const;
  std::string admin_address() const;

 private:
  explicit Node(NodeConfig config);
  absl::Status OpenSessions();
  absl::Status StartPools();
  absl::Status StartGrpc();
  absl::Status StartAdmin();
  absl::Status WriteReadyFile() const;
  std::vector<admin::Check> Readiness() const;
  std::vector<admin::PoolGauges> Gauges() const;

  const NodeConfig config_;
  admin::Metrics metrics_;
  api::NodeState state_;
  std::unique_ptr<api::Service> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<admin::AdminServer> admin_;
  std::vector<std::string> grpc_addresses_;
  int session_listener_ = 0;
  bool serving_ = false;  // set once Start has succeeded
  std::once_flag drain_once_;
};

// Blocks the shutdown signals in the calling thread; call it first thing
// in main, before any thread starts, so that every thread inherits the
// mask and ServeUntilSignalled alone receives them.
void BlockShutdownSignals();

}  // namespace snakepit::server

#endif  // SNAKEPIT_SERVER_NODE_H_
