// The node's admin HTTP endpoint: /livez, /readyz, /metrics.

#ifndef SNAKEPIT_ADMIN_ADMIN_SERVER_H_
#define SNAKEPIT_ADMIN_ADMIN_SERVER_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace snakepit::admin {

// One readiness check: a name and whether it passes, with a detail.
struct Check {
  std::string name;  // "pool default warm", "not draining"
  bool ok = false;
  std::string detail;
};

struct AdminHandlers {
  // Readiness checks, evaluated per request. /readyz is 200 when all
  // pass, else 503; `?verbose` lists each.
  std::function<std::vector<Check>()> readiness;
  // The Prometheus text for /metrics.
  std::function<std::string()> metrics;
};

// Serves the handlers on its own thread. Thread-safe.
class AdminServer {
 public:
  // Binds `address` ("HOST:PORT"; port 0 picks one) and starts serving.
  static absl::StatusOr<std::unique_ptr<AdminServer>> Start(
      const std::string& address, AdminHandlers handlers);
  ~AdminServer();

  // "HOST:PORT" actually bound.
  std::string address() const;

  // Stops serving; idempotent.
  void Stop();

 private:
  struct Impl;
  explicit AdminServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace snakepit::admin

#endif  // SNAKEPIT_ADMIN_ADMIN_SERVER_H_
