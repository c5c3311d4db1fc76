// Snakepit's benchmarks from C++, each beside its raw floor.
//
//   pool_bench latency [--calls N] [--limit S] [--payload BYTES]
//   pool_bench cli     [--calls RUNS]
//   pool_bench load    --section throughput|scaling --workers 1,2,8
//                      [--in-flight K] [--calls N] [--limit S]
//   pool_bench payload [--sizes B,B,...] [--bytes TOTAL] [--calls N]
//   pool_bench start   [--workers 1,10,50]
//
// Every command takes --python EXE (default /usr/bin/python3) and prints
// one JSON object per measurement (bench_util.h).

#include <fcntl.h>

#include <cstdio>
#include <map>
#include <string>

#include "absl/strings/escaping.h"

#include "bench/benches.h"
#include "snakepit/base/log.h"

namespace snakepit::bench {

absl::StatusOr<std::unique_ptr<Pool>> StartPool(const PoolSpec& spec) {
  PoolOptions options;
  options.name = "bench";
  options.python = spec.python;
  options.modules = {std::string(SNAKEPIT_BENCH_DIR) + "/" + spec.module};
  options.size = spec.workers;
  options.zygote = spec.zygote;
  options.max_payload_bytes = 256u << 20;
  absl::StatusOr<std::unique_ptr<Pool>> pool = Pool::Start(options);
  if (!pool.ok()) {
    std::fprintf(stderr, "bench: pool: %s\n",
                 DescribeError(pool.status()).c_str());
  }
  return pool;
}

namespace {

Row LatencyRow(const std::string& name, size_t payload) {
  return Row{
      {"section", "latency"}, {"name", name}, {"payload_bytes", payload}};
}

bool MeasureInto(Row row, const Budget& budget,
                 const std::function<bool()>& call) {
  std::optional<Stats> stats =
      Measure(row["name"].get<std::string>(), budget, call);
  if (stats) {
    Print(WithStats(std::move(row), *stats));
  }
  return stats.has_value();
}

bool LatencyFloor(const Flags& flags, size_t payload) {
  absl::StatusOr<RawEcho> echo =
      RawEcho::Start(flags.Get("python", "/usr/bin/python3"));
  if (!echo.ok()) {
    return false;
  }
  std::string frame = RawFrame(payload);
  std::string reply(frame.size(), '\0');
  return MeasureInto(LatencyRow("raw socketpair echo (floor)", payload),
                     flags.MakeBudget(),
                     [&] { return echo->RoundTrip(frame, &reply); });
}

bool LatencyPool(const Flags& flags, size_t payload) {
  auto pool = StartPool({flags.Get("python", "/usr/bin/python3")});
  if (!pool.ok()) {
    return false;
  }
  Value args = {{"data", Bytes(std::string(payload, 'x'))}};
  std::string raw_args = *EncodeValue(args);
  bool ok = MeasureInto(
      LatencyRow("snakepit Pool, msgpack bytes in and out", payload),
      flags.MakeBudget(), [&] {
        return (*pool)->SubmitRaw("bench_echo.echo", raw_args).GetRaw().ok();
      });
  return ok &&
         MeasureInto(LatencyRow("snakepit Pool, Value in and out", payload),
                     flags.MakeBudget(), [&] {
                       return (*pool)->Invoke("bench_echo.echo", args).ok();
                     });
}

}  // namespace

bool RunLatency(const Flags& flags) {
  size_t payload = static_cast<size_t>(flags.Number("payload", 100));
  return LatencyFloor(flags, payload) && LatencyPool(flags, payload);
}

namespace {

// Runs `argv` as a whole process with stdout thrown away; true when it
// exits with status 0 within 60 s.
bool RunOnce(const std::vector<std::string>& argv, int devnull) {
  os::SpawnRequest request;
  request.argv = argv;
  request.env = OwnEnvironment();
  request.fds = {{devnull, 1}, {2, 2}};
  absl::StatusOr<os::SpawnedProcess> process = os::Spawn(request);
  if (!process.ok() ||
      !os::AwaitExit(process->pidfd.get(), absl::Seconds(60))) {
    return false;
  }
  auto exit = os::TryReap(process->pidfd.get());
  return exit.ok() && exit->has_value() && !(*exit)->signalled &&
         (*exit)->code == 0;
}

// The CLI's arguments for one echo of `payload` bytes, given as JSON.
std::vector<std::string> CliArgv(const std::string& python, size_t payload) {
  std::string data = absl::Base64Escape(std::string(payload, 'x'));
  return {SNAKEPIT_CLI,
          "call",
          "bench_echo.echo",
          "--module",
          std::string(SNAKEPIT_BENCH_DIR) + "/bench_echo.py",
          "--python",
          python,
          "--json",
          "{\"data\": {\"$bytes\": \"" + data + "\"}}"};
}

}  // namespace

bool RunCli(const Flags& flags) {
  std::string python = flags.Get("python", "/usr/bin/python3");
  int devnull = ::open("/dev/null", O_WRONLY | O_CLOEXEC);
  Budget budget = flags.MakeBudget();
  budget.min_calls = 3;
  std::map<std::string, std::vector<std::string>> commands = {
      {"python3 -c pass (whole process)", {python, "-c", "pass"}},
      {"snakepit CLI one-shot (whole process)", CliArgv(python, 100)},
  };
  bool ok = true;
  for (const auto& [name, argv] : commands) {
    ok = ok && MeasureInto(LatencyRow(name, 100), budget,
                           [&] { return RunOnce(argv, devnull); });
  }
  ::close(devnull);
  return ok;
}

}  // namespace snakepit::bench

int main(int argc, char** argv) {
  using namespace snakepit::bench;
  const std::map<std::string, bool (*)(const Flags&)> commands = {
      {"latency", RunLatency}, {"cli", RunCli},     {"load", RunLoad},
      {"payload", RunPayload}, {"start", RunStart},
  };
  auto command = argc > 1 ? commands.find(argv[1]) : commands.end();
  if (command == commands.end()) {
    std::fprintf(stderr,
                 "usage: pool_bench latency|cli|load|payload|start "
                 "[--flag value ...]\n");
    return 1;
  }
  snakepit::Log().set_level(spdlog::level::warn);
  snakepit::os::IgnoreSigpipe();
  return command->second(Flags(argc, argv, 2)) ? 0 : 1;
}
