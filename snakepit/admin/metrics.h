// The node's Prometheus metrics, all prefixed snakepit_. Thread-safe.

#ifndef SNAKEPIT_ADMIN_METRICS_H_
#define SNAKEPIT_ADMIN_METRICS_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/time.h"

namespace snakepit::admin {

// A point-in-time view of one pool, read at scrape time.
struct PoolGauges {
  std::string pool;
  size_t queue_depth = 0;
  std::map<std::string, int> workers_by_state;  // starting, idle, busy
  std::map<std::string, uint64_t> restarts_by_reason;  // cumulative
  // starting, ready, degraded or closed; the others read 0.
  std::string state;
};

class Metrics {
 public:
  explicit Metrics(const std::string& version);
  ~Metrics();

  // One finished call: `code` is the gRPC code name ("OK",
  // "DEADLINE_EXCEEDED", ...).
  void RecordCall(const std::string& pool, const std::string& function,
                  const std::string& code, absl::Duration duration,
                  absl::Duration queue_wait);

  // One call refused before it reached a pool (bad token, node draining,
  // unknown pool or function, bad arguments): `reason` is the error's
  // stable reason, so both labels come from small fixed sets.
  void RecordRefused(const std::string& code, const std::string& reason);

  // Renders every metric in the Prometheus text format, with `gauges`
  // for the pools' current state. A pool, state or reason missing from
  // `gauges` drops out of the output, so list zero counts to keep a
  // series. snakepit_worker_restarts_total follows the cumulative counts
  // given here; a count that fell restarts its series from that value.
  std::string Render(const std::vector<PoolGauges>& gauges);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace snakepit::admin

#endif  // SNAKEPIT_ADMIN_METRICS_H_
