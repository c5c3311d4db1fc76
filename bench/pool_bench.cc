// Per-call latency of a small call (100 B in, 100 B out), one call in
// flight: the raw socketpair floor, then Snakepit's Pool.
//
//   pool_bench [--calls N] [--payload BYTES] [--python EXE]
//
// Prints one JSON object per measurement, as bench/mp_bench.py does.

#include <sys/socket.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "snakepit/base/log.h"
#include "snakepit/os/fd.h"
#include "snakepit/os/process.h"
#include "snakepit/snakepit.h"

namespace {

using Clock = std::chrono::steady_clock;

struct Args {
  int calls = 20000;
  size_t payload = 100;
  std::string python = "/usr/bin/python3";
};

void Report(const std::string& name, std::vector<double> samples) {
  std::sort(samples.begin(), samples.end());
  double total = 0;
  for (double s : samples) {
    total += s;
  }
  size_t n = samples.size();
  std::printf(
      "{\"name\": \"%s\", \"calls\": %zu, \"p50_us\": %.3f, "
      "\"p99_us\": %.3f, \"calls_per_s\": %.1f}\n",
      name.c_str(), n, samples[n / 2] * 1e6,
      samples[std::min(n - 1, n * 99 / 100)] * 1e6, n / total);
  std::fflush(stdout);
}

// Times `call` `calls` times after a tenth as many warm-up calls.
// Returns false if any call fails.
bool Measure(const std::string& name, int calls,
             const std::function<bool()>& call) {
  for (int i = 0; i < std::max(100, calls / 10); ++i) {
    if (!call()) {
      std::fprintf(stderr, "%s: warm-up call failed\n", name.c_str());
      return false;
    }
  }
  std::vector<double> samples;
  samples.reserve(calls);
  for (int i = 0; i < calls; ++i) {
    auto t0 = Clock::now();
    if (!call()) {
      std::fprintf(stderr, "%s: call failed\n", name.c_str());
      return false;
    }
    samples.push_back(
        std::chrono::duration<double>(Clock::now() - t0).count());
  }
  Report(name, std::move(samples));
  return true;
}

bool ReadExact(int fd, char* out, size_t n) {
  while (n > 0) {
    ssize_t got = ::recv(fd, out, n, 0);
    if (got <= 0) {
      return false;
    }
    out += got;
    n -= static_cast<size_t>(got);
  }
  return true;
}

bool RawFloor(const Args& args) {
  snakepit::os::UniqueFd host, child;
  if (!snakepit::os::MakeSocketPair(&host, &child).ok()) {
    return false;
  }
  auto high = snakepit::os::DupAtLeast(child.get(), 10);
  snakepit::os::SpawnRequest request;
  request.argv = {args.python, std::string(SNAKEPIT_BENCH_DIR) +
                                   "/raw_echo.py"};
  request.fds = {{high->get(), 3}, {1, 1}, {2, 2}};
  auto process = snakepit::os::Spawn(request);
  if (!process.ok()) {
    return false;
  }
  child.Reset();
  high->Reset();

  std::string frame(4 + args.payload, 'x');
  uint32_t len = static_cast<uint32_t>(args.payload);
  std::memcpy(frame.data(), &len, 4);
  std::string reply(frame.size(), '\0');
  bool ok = Measure("raw socketpair echo (floor)", args.calls, [&] {
    return ::send(host.get(), frame.data(), frame.size(), 0) ==
               static_cast<ssize_t>(frame.size()) &&
           ReadExact(host.get(), reply.data(), reply.size());
  });
  host.Reset();
  snakepit::os::AwaitExit(process->pidfd.get(), absl::Seconds(5));
  (void)snakepit::os::TryReap(process->pidfd.get());
  return ok;
}

bool PoolCalls(const Args& args) {
  snakepit::PoolOptions options;
  options.modules = {std::string(SNAKEPIT_BENCH_DIR) + "/bench_echo.py"};
  options.python = args.python;
  options.size = 1;
  auto pool = snakepit::Pool::Start(options);
  if (!pool.ok()) {
    std::fprintf(stderr, "%s\n",
                 snakepit::DescribeError(pool.status()).c_str());
    return false;
  }
  snakepit::Value value_args = {
      {"data", snakepit::Bytes(std::string(args.payload, 'x'))}};
  std::string raw_args = *snakepit::EncodeValue(value_args);
  bool ok = Measure("snakepit Pool, msgpack bytes in and out", args.calls,
                    [&] {
                      return (*pool)
                          ->SubmitRaw("bench_echo.echo", raw_args)
                          .GetRaw()
                          .ok();
                    });
  ok = ok && Measure("snakepit Pool, Value in and out", args.calls, [&] {
         return (*pool)->Invoke("bench_echo.echo", value_args).ok();
       });
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string flag = argv[i];
    if (flag == "--calls") {
      args.calls = std::atoi(argv[i + 1]);
    } else if (flag == "--payload") {
      args.payload = std::strtoul(argv[i + 1], nullptr, 10);
    } else if (flag == "--python") {
      args.python = argv[i + 1];
    }
  }
  snakepit::Log().set_level(spdlog::level::warn);
  bool ok = RawFloor(args) && PoolCalls(args);
  return ok ? 0 : 1;
}
