// Start-up and memory (pool_bench start): the time from asking for N
// workers whose module imports numpy until all of them are ready, and
// their memory once ready.
//
// The floor is N bare interpreters exec'd at once that import numpy and
// say so over a socket: what any exec-based start must pay. The Pool's
// workers add the snakepit runtime, the handshake and the module.
//
// The zygote row forks the N workers from a running zygote (one that has
// imported the module already) through worker::Zygote: the time from the
// first Fork until every worker has sent READY. The zygote's own start,
// paid once per pool, is reported beside it (zygote_start_ms).

#include <poll.h>
#include <sys/socket.h>

#include "bench/benches.h"
#include "snakepit/protocol/frame.h"
#include "snakepit/worker/zygote.h"

namespace snakepit::bench {
namespace {

constexpr char kFloorProgram[] =
    "import os, numpy\n"
    "os.write(3, b'r')\n"
    "os.read(4, 1)\n";  // holds the process until the bench closes fd 4

Row StartRow(const std::string& name, int workers, double ready_s,
             const std::vector<pid_t>& pids) {
  Row row = {{"section", "startup"},
             {"name", name},
             {"workers", workers},
             {"ready_ms", ready_s * 1e3},
             {"workers_found", pids.size()}};
  row.update(MemoryFields(pids));
  return row;
}

// Waits until `n` bytes have come in on `fd`, for up to 120 s.
bool AwaitBytes(int fd, int n) {
  Clock::time_point start = Clock::now();
  char buf[64];
  while (n > 0 && SecondsSince(start) < 120) {
    pollfd p = {fd, POLLIN, 0};
    if (::poll(&p, 1, 1000) < 0) {
      return false;
    }
    if (p.revents & POLLIN) {
      ssize_t got = ::recv(fd, buf, sizeof(buf), 0);
      if (got <= 0) {
        return false;
      }
      n -= static_cast<int>(got);
    }
  }
  return n <= 0;
}

// The ends the floor's children share: they write readiness to `ready`
// (fd 3) and wait on `hold` (fd 4) until the bench closes its end.
struct FloorSockets {
  os::UniqueFd ready_host, ready_child, hold_host, hold_child;
};

absl::StatusOr<FloorSockets> MakeFloorSockets() {
  FloorSockets s;
  os::UniqueFd ready, hold;
  if (absl::Status st = os::MakeSocketPair(&s.ready_host, &ready); !st.ok()) {
    return st;
  }
  if (absl::Status st = os::MakeSocketPair(&s.hold_host, &hold); !st.ok()) {
    return st;
  }
  // Above 4, so that mapping them to 3 and 4 cannot clobber a source.
  auto ready_high = os::DupAtLeast(ready.get(), 10);
  auto hold_high = os::DupAtLeast(hold.get(), 10);
  if (!ready_high.ok() || !hold_high.ok()) {
    return absl::InternalError("dup");
  }
  s.ready_child = std::move(*ready_high);
  s.hold_child = std::move(*hold_high);
  return s;
}

bool FloorStart(const std::string& python, int workers) {
  absl::StatusOr<FloorSockets> sockets = MakeFloorSockets();
  if (!sockets.ok()) {
    return false;
  }
  os::SpawnRequest request;
  request.argv = {python, "-c", kFloorProgram};
  request.env = OwnEnvironment();
  request.fds = {{sockets->ready_child.get(), 3},
                 {sockets->hold_child.get(), 4},
                 {1, 1},
                 {2, 2}};
  std::vector<os::SpawnedProcess> children;
  Clock::time_point start = Clock::now();
  for (int i = 0; i < workers; ++i) {
    absl::StatusOr<os::SpawnedProcess> child = os::Spawn(request);
    if (child.ok()) {
      children.push_back(std::move(*child));
    }
  }
  bool ok = static_cast<int>(children.size()) == workers &&
            AwaitBytes(sockets->ready_host.get(), workers);
  double ready_s = SecondsSince(start);
  std::vector<pid_t> pids;
  for (const os::SpawnedProcess& child : children) {
    pids.push_back(child.pid);
  }
  if (ok) {
    Print(StartRow("exec python3 + import numpy, N at once (floor)", workers,
                   ready_s, pids));
  }
  sockets->hold_host.Reset();  // EOF on fd 4: the children exit
  for (os::SpawnedProcess& child : children) {
    os::AwaitExit(child.pidfd.get(), absl::Seconds(10));
    (void)os::TryReap(child.pidfd.get());
  }
  return ok;
}

// A whole Pool::Start, by exec or (`zygote`) by fork from a zygote that
// the pool starts first: what a user waits for, the zygote's own import
// included.
bool PoolStart(const std::string& python, int workers, bool zygote) {
  Clock::time_point start = Clock::now();
  auto pool = StartPool({python, "bench_numpy.py", workers, zygote});
  double ready_s = SecondsSince(start);
  if (!pool.ok()) {
    return false;
  }
  std::vector<pid_t> pids = ChildPids();
  if (zygote) {
    pids = GrandchildPids();  // the workers are the zygote's children
  }
  Print(StartRow(zygote ? "snakepit Pool, zygote start (zygote included), "
                          "module imports numpy"
                        : "snakepit Pool, exec start, module imports numpy",
                 workers, ready_s, pids));
  return true;
}

absl::StatusOr<worker::WorkerSpec> NumpySpec(const std::string& python) {
  worker::WorkerSpec spec;
  spec.pool = "bench";
  spec.python = python;
  spec.max_payload = 256u << 20;
  spec.max_depth = kDefaultMaxDepth;
  if (absl::Status s = worker::ResolveModules(
          {std::string(SNAKEPIT_BENCH_DIR) + "/bench_numpy.py"},
          &spec.modules, &spec.search_paths);
      !s.ok()) {
    return s;
  }
  absl::StatusOr<std::string> runtime = worker::FindRuntimeDir("");
  if (!runtime.ok()) {
    return runtime.status();
  }
  spec.runtime_dir = *runtime;
  return spec;
}

// Reads every worker's channel until each has sent READY, for up to
// 120 s. False on FATAL, end of file or time out.
bool AwaitAllReady(
    const std::vector<std::unique_ptr<worker::WorkerProcess>>& workers) {
  std::vector<protocol::FrameReader> readers(workers.size(),
                                             protocol::FrameReader(1 << 20));
  std::vector<bool> ready(workers.size(), false);
  size_t left = workers.size();
  Clock::time_point start = Clock::now();
  while (left > 0 && SecondsSince(start) < 120) {
    std::vector<pollfd> fds;
    for (const auto& w : workers) {
      fds.push_back({w->channel_fd(), POLLIN, 0});
    }
    if (::poll(fds.data(), fds.size(), 1000) < 0) {
      return false;
    }
    for (size_t i = 0; i < workers.size(); ++i) {
      if (fds[i].revents == 0 || ready[i]) {
        continue;
      }
      bool eof = false;
      if (!readers[i].ReadFrom(fds[i].fd, &eof).ok()) {
        return false;
      }
      for (const protocol::Frame& frame : readers[i].frames()) {
        if (frame.type == protocol::FrameType::kReady) {
          ready[i] = true;
          --left;
        } else if (frame.type != protocol::FrameType::kHello) {
          return false;
        }
      }
      readers[i].frames().clear();
      if (eof && !ready[i]) {
        return false;
      }
    }
  }
  return left == 0;
}

bool ZygoteStart(const std::string& python, int workers) {
  absl::StatusOr<worker::WorkerSpec> spec = NumpySpec(python);
  if (!spec.ok()) {
    std::fprintf(stderr, "bench: %s\n", DescribeError(spec.status()).c_str());
    return false;
  }
  Clock::time_point zygote_start = Clock::now();
  absl::StatusOr<std::unique_ptr<worker::Zygote>> zygote =
      worker::Zygote::Start(*spec, absl::Now() + absl::Seconds(120));
  double zygote_s = SecondsSince(zygote_start);
  if (!zygote.ok()) {
    std::fprintf(stderr, "bench: zygote: %s\n",
                 DescribeError(zygote.status()).c_str());
    return false;
  }

  std::vector<std::unique_ptr<worker::WorkerProcess>> children;
  Clock::time_point start = Clock::now();
  for (int i = 0; i < workers; ++i) {
    auto child = (*zygote)->Fork(absl::Now() + absl::Seconds(120));
    if (!child.ok()) {
      std::fprintf(stderr, "bench: fork: %s\n",
                   DescribeError(child.status()).c_str());
      break;
    }
    children.push_back(std::move(*child));
  }
  bool ok = static_cast<int>(children.size()) == workers &&
            AwaitAllReady(children);
  double ready_s = SecondsSince(start);
  std::vector<pid_t> pids;
  for (const auto& child : children) {
    pids.push_back(child->pid());
  }
  if (ok) {
    Row row = StartRow("snakepit Zygote.Fork, module imports numpy", workers,
                       ready_s, pids);
    row["zygote_start_ms"] = zygote_s * 1e3;
    row["zygote_pss_kb"] = MemoryFields({(*zygote)->pid()})["worker_pss_kb"];
    Print(row);
  }
  for (auto& child : children) {
    child->CloseSockets();  // end of file: the worker exits
  }
  for (auto& child : children) {
    os::AwaitExit(child->pidfd(), absl::Seconds(10));
    (void)child->TryReap();
  }
  return ok;
}

}  // namespace

bool RunStart(const Flags& flags) {
  std::string python = flags.Get("python", "/usr/bin/python3");
  for (long workers : flags.List("workers", {1, 10, 50})) {
    int n = static_cast<int>(workers);
    if (!FloorStart(python, n) || !PoolStart(python, n, false) ||
        !PoolStart(python, n, true) || !ZygoteStart(python, n)) {
      return false;
    }
  }
  return true;
}

}  // namespace snakepit::bench
