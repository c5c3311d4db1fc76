// Pieces shared by the C++ benchmarks: timing with bounded loops, result
// lines, raw socketpair echo workers, and per-process memory from /proc.
//
// Every benchmark prints one JSON object per line to stdout:
//
//   {"section": "latency", "name": "...", <parameters>, <figures>}
//
// Parameters say which point of a sweep the line is (workers, in_flight,
// payload_bytes, sessions); figures are what was measured (calls, p50_us,
// p99_us, calls_per_s, mb_per_s, ready_ms, memory in kB). bench/report.py
// keys lines by section, name and parameters, so the Python benchmarks
// follow the same convention.

#ifndef SNAKEPIT_BENCH_BENCH_UTIL_H_
#define SNAKEPIT_BENCH_BENCH_UTIL_H_

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

#include "snakepit/os/fd.h"
#include "snakepit/os/process.h"

namespace snakepit::bench {

using Clock = std::chrono::steady_clock;
using Row = nlohmann::ordered_json;

double SecondsSince(Clock::time_point start);

// How much one measurement may take: at most `calls` timed calls, and no
// more once `limit_s` seconds have gone by (at least `min_calls` are made
// all the same, so that a slow peer still yields a figure).
struct Budget {
  int calls = 20000;
  double limit_s = 5;
  int min_calls = 5;
};

// Percentiles of per-call times, and the call rate.
struct Stats {
  size_t calls = 0;
  double p50_us = 0;
  double p99_us = 0;
  double calls_per_s = 0;
};

// `seconds` holds one duration per call. `wall_s` is the time the whole
// batch took; calls_per_s is calls / wall_s.
Stats Summarise(std::vector<double> seconds, double wall_s);

// A result line with the figures of `stats` after `row`'s own fields.
Row WithStats(Row row, const Stats& stats);

// Writes `row` as one line to stdout and flushes it, so that a crash
// later in the run keeps what was measured.
void Print(const Row& row);

// Runs `call` for a tenth of the budget as warm-up, then times each call
// within `budget`. nullopt (with a message on stderr) when a call fails.
std::optional<Stats> Measure(const std::string& name, const Budget& budget,
                             const std::function<bool()>& call);

// The budget of one payload cell: about `bytes_per_cell` payload bytes
// sent, so fewer calls for big payloads, within `budget`'s bounds.
Budget PayloadBudget(Budget budget, double bytes_per_cell, long size);

// Times `call` within `budget` and prints a "payload" line for `name`
// at `size` bytes, with MB/s = 2 × size ÷ p50 (the payload both ways,
// 10^6 bytes per second). False when a call fails.
bool PayloadCell(const std::string& name, long size, const Budget& budget,
                 const std::function<bool()>& call);

// Writes all `n` bytes to the blocking socket `fd`.
bool SendExact(int fd, const char* data, size_t n);

// Reads exactly `n` bytes from the blocking socket `fd`.
bool ReadExact(int fd, char* out, size_t n);

// The environment of this process, as SpawnRequest wants it.
std::vector<std::string> OwnEnvironment();

// A bench/raw_echo.py process serving a socketpair: the floor of any
// C++→Python call. The frame is a u32 little-endian length and the
// payload; the worker sends the frame back unchanged.
class RawEcho {
 public:
  static absl::StatusOr<RawEcho> Start(const std::string& python);

  RawEcho(RawEcho&&) = default;
  RawEcho& operator=(RawEcho&&) = default;
  // Closes the socket, which ends the worker, and reaps it.
  ~RawEcho();

  int fd() const { return socket_.get(); }
  pid_t pid() const { return process_.pid; }

  // Sends `frame` and reads the echo into `reply` (sized by the caller).
  bool RoundTrip(const std::string& frame, std::string* reply) const;

 private:
  RawEcho(os::SpawnedProcess process, os::UniqueFd socket)
      : process_(std::move(process)), socket_(std::move(socket)) {}

  os::SpawnedProcess process_;
  os::UniqueFd socket_;
};

// A raw_echo.py frame holding `payload` bytes.
std::string RawFrame(size_t payload);

// Memory of one process, from /proc/<pid>/smaps_rollup, in kB.
struct Memory {
  long rss_kb = 0;
  long pss_kb = 0;
  long uss_kb = 0;  // Private_Clean + Private_Dirty
};

std::optional<Memory> ReadMemory(pid_t pid);

// Pids of this process's direct children, found by scanning /proc.
std::vector<pid_t> ChildPids();
// Their children (a zygote's workers).
std::vector<pid_t> GrandchildPids();

// Memory of a host and its workers: `host` is this process, the rest are
// per-worker means and the workers' sum.
Row MemoryFields(const std::vector<pid_t>& workers);

// Command-line flags of the form --name value.
class Flags {
 public:
  Flags(int argc, char** argv, int first);

  std::string Get(const std::string& name, const std::string& fallback) const;
  double Number(const std::string& name, double fallback) const;
  // A comma-separated list of numbers: "1,10,50".
  std::vector<long> List(const std::string& name,
                         const std::vector<long>& fallback) const;
  Budget MakeBudget() const;

 private:
  std::vector<std::pair<std::string, std::string>> pairs_;
};

}  // namespace snakepit::bench

#endif  // SNAKEPIT_BENCH_BENCH_UTIL_H_
