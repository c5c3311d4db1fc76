// One call in flight carrying a binary argument that is echoed back as
// the result (pool_bench payload).

#include "bench/benches.h"

namespace snakepit::bench {
namespace {

struct Sweep {
  std::vector<long> sizes;
  double bytes_per_cell = 0;  // payload bytes sent per cell, one way
  Budget budget;
};

Budget CellBudget(const Sweep& sweep, long size) {
  return PayloadBudget(sweep.budget, sweep.bytes_per_cell, size);
}

bool FloorSweep(const Sweep& sweep, const std::string& python) {
  absl::StatusOr<RawEcho> echo = RawEcho::Start(python);
  if (!echo.ok()) {
    return false;
  }
  for (long size : sweep.sizes) {
    std::string frame = RawFrame(size);
    std::string reply(frame.size(), '\0');
    if (!PayloadCell("raw socketpair echo (floor)", size,
                     CellBudget(sweep, size),
                     [&] { return echo->RoundTrip(frame, &reply); })) {
      return false;
    }
  }
  return true;
}

// The Pool twice per size: with the argument already encoded (what the
// Pool itself costs) and as a Value (what a C++ caller pays, the
// msgpack encoding and decoding in C++ included).
bool PoolCells(Pool& pool, const Sweep& sweep, long size) {
  Value args = {{"data", Bytes(std::string(size, 'x'))}};
  std::string raw_args = *EncodeValue(args);
  bool ok = PayloadCell(
      "snakepit Pool, msgpack bytes in and out", size, CellBudget(sweep, size),
      [&] {
        return pool.SubmitRaw("bench_echo.echo", raw_args).GetRaw().ok();
      });
  return ok && PayloadCell("snakepit Pool, Value in and out", size,
                           CellBudget(sweep, size), [&] {
                             return pool.Invoke("bench_echo.echo", args).ok();
                           });
}

}  // namespace

bool RunPayload(const Flags& flags) {
  Sweep sweep;
  sweep.sizes =
      flags.List("sizes", {100, 64 << 10, 1 << 20, 16 << 20, 64 << 20});
  sweep.bytes_per_cell = flags.Number("bytes", 1 << 30);
  sweep.budget = flags.MakeBudget();
  std::string python = flags.Get("python", "/usr/bin/python3");
  if (!FloorSweep(sweep, python)) {
    return false;
  }
  auto pool = StartPool({python});
  if (!pool.ok()) {
    return false;
  }
  for (long size : sweep.sizes) {
    if (!PoolCells(**pool, sweep, size)) {
      return false;
    }
  }
  return true;
}

}  // namespace snakepit::bench
