// The sub-commands of pool_bench, one per section of docs/benchmarks.md.
// Each prints result lines (bench_util.h) and returns false when a
// measurement could not be made.

#ifndef SNAKEPIT_BENCH_BENCHES_H_
#define SNAKEPIT_BENCH_BENCHES_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"

#include "bench/bench_util.h"
#include "snakepit/snakepit.h"

namespace snakepit::bench {

// One small call in flight: the raw floor, then the Pool.
bool RunLatency(const Flags& flags);

// The snakepit CLI as a whole process, beside `python3 -c pass`.
bool RunCli(const Flags& flags);

// Many calls in flight over N workers: the floor, then the Pool.
bool RunLoad(const Flags& flags);

// One call in flight with a large binary argument echoed back.
bool RunPayload(const Flags& flags);

// Time until N workers importing numpy are ready, and their memory.
bool RunStart(const Flags& flags);

// A pool of `workers` workers of `module`, a file in bench/, run by
// `python`, taking payloads up to 256 MiB each way.
struct PoolSpec {
  std::string python;
  std::string module = "bench_echo.py";
  int workers = 1;
  bool zygote = false;  // fork the workers from a zygote
};

// Starts the pool; on failure prints why on stderr.
absl::StatusOr<std::unique_ptr<Pool>> StartPool(const PoolSpec& spec);

}  // namespace snakepit::bench

#endif  // SNAKEPIT_BENCH_BENCHES_H_
