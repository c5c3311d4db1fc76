// Many calls in flight over N workers (pool_bench load).
//
// The Pool gives each worker one call at a time and queues the rest, so
// its floor is N raw echo workers driven the same way: one frame per
// worker in flight, the next sent as soon as a reply is read. A second
// raw row keeps in_flight / N frames queued on every socket (pipelining,
// which the Pool does not do) to show what that would be worth.

#include <poll.h>

#include <algorithm>
#include <deque>
#include <utility>

#include "bench/benches.h"

namespace snakepit::bench {
namespace {

constexpr size_t kPayload = 100;
constexpr int kStallMs = 10000;

struct LoadPoint {
  std::string section;
  int workers = 1;
  int in_flight = 1;
  bool memory = false;
};

Row LoadRow(const LoadPoint& point, const std::string& name) {
  return Row{{"section", point.section},
             {"name", name},
             {"workers", point.workers},
             {"in_flight", point.in_flight},
             {"payload_bytes", kPayload}};
}

// Sends frames over `echoes`, `depth` outstanding on each, until
// `budget` runs out, and times each from send to reply.
class RawDriver {
 public:
  RawDriver(const std::vector<RawEcho>& echoes, int depth)
      : echoes_(echoes),
        depth_(depth),
        sent_(echoes.size()),
        frame_(RawFrame(kPayload)),
        reply_(frame_.size(), '\0') {}

  std::optional<Stats> Run(const Budget& budget);

 private:
  bool Send(size_t i);
  // Reads one reply from worker `i`, then sends it another frame while
  // the budget lasts.
  bool Receive(size_t i, const Budget& budget, Clock::time_point start);

  const std::vector<RawEcho>& echoes_;
  const int depth_;
  std::vector<std::deque<Clock::time_point>> sent_;
  const std::string frame_;
  std::string reply_;
  std::vector<double> samples_;
  long issued_ = 0;
  long done_ = 0;
};

bool RawDriver::Send(size_t i) {
  sent_[i].push_back(Clock::now());
  ++issued_;
  return SendExact(echoes_[i].fd(), frame_.data(), frame_.size());
}

bool RawDriver::Receive(size_t i, const Budget& budget,
                        Clock::time_point start) {
  if (!ReadExact(echoes_[i].fd(), reply_.data(), reply_.size())) {
    return false;
  }
  samples_.push_back(SecondsSince(sent_[i].front()));
  sent_[i].pop_front();
  ++done_;
  bool more = issued_ < budget.calls && SecondsSince(start) < budget.limit_s;
  return !more || Send(i);
}

std::optional<Stats> RawDriver::Run(const Budget& budget) {
  Clock::time_point start = Clock::now();
  std::vector<pollfd> fds;
  for (size_t i = 0; i < echoes_.size(); ++i) {
    fds.push_back({echoes_[i].fd(), POLLIN, 0});
    for (int d = 0; d < depth_ && issued_ < budget.calls; ++d) {
      if (!Send(i)) {
        return std::nullopt;
      }
    }
  }
  while (done_ < issued_) {
    if (::poll(fds.data(), fds.size(), kStallMs) <= 0) {
      return std::nullopt;  // a worker died or stalled
    }
    for (size_t i = 0; i < fds.size(); ++i) {
      if ((fds[i].revents & POLLIN) && !Receive(i, budget, start)) {
        return std::nullopt;
      }
    }
  }
  return Summarise(std::move(samples_), SecondsSince(start));
}

// A tenth of the budget, but `at_least` calls, for warm-up runs.
Budget Tenth(Budget budget, int at_least) {
  budget.calls = std::max(at_least, budget.calls / 10);
  budget.limit_s /= 10;
  return budget;
}

bool RawLoad(const LoadPoint& point, const std::string& name, int depth,
             const Flags& flags) {
  std::vector<RawEcho> echoes;
  for (int i = 0; i < point.workers; ++i) {
    absl::StatusOr<RawEcho> echo =
        RawEcho::Start(flags.Get("python", "/usr/bin/python3"));
    if (!echo.ok()) {
      return false;
    }
    echoes.push_back(std::move(*echo));
  }
  Budget budget = flags.MakeBudget();
  if (!RawDriver(echoes, depth).Run(Tenth(budget, point.workers))) {
    return false;
  }
  std::optional<Stats> stats = RawDriver(echoes, depth).Run(budget);
  if (!stats) {
    return false;
  }
  Row row = WithStats(LoadRow(point, name), *stats);
  if (point.memory) {
    std::vector<pid_t> pids;
    for (const RawEcho& echo : echoes) {
      pids.push_back(echo.pid());
    }
    row.update(MemoryFields(pids));
  }
  Print(row);
  return true;
}

// Keeps `in_flight` calls submitted to `pool` until `budget` runs out,
// collecting them in submission order.
std::optional<Stats> DrivePool(Pool& pool, int in_flight,
                               const Budget& budget) {
  std::string args =
      *EncodeValue({{"data", Bytes(std::string(kPayload, 'x'))}});
  std::deque<std::pair<Call, Clock::time_point>> pending;
  std::vector<double> samples;
  long issued = 0;
  Clock::time_point start = Clock::now();
  auto submit = [&] {
    pending.emplace_back(pool.SubmitRaw("bench_echo.echo", args), Clock::now());
    ++issued;
  };
  while (issued < in_flight && issued < budget.calls) {
    submit();
  }
  while (!pending.empty()) {
    if (!pending.front().first.GetRaw().ok()) {
      return std::nullopt;
    }
    samples.push_back(SecondsSince(pending.front().second));
    pending.pop_front();
    if (issued < budget.calls && SecondsSince(start) < budget.limit_s) {
      submit();
    }
  }
  return Summarise(std::move(samples), SecondsSince(start));
}

bool PoolLoad(const LoadPoint& point, const Flags& flags) {
  auto pool = StartPool({flags.Get("python", "/usr/bin/python3"),
                         "bench_echo.py", point.workers});
  if (!pool.ok()) {
    return false;
  }
  Budget budget = flags.MakeBudget();
  if (!DrivePool(**pool, point.in_flight, Tenth(budget, point.in_flight))) {
    return false;
  }
  std::optional<Stats> stats = DrivePool(**pool, point.in_flight, budget);
  if (!stats) {
    std::fprintf(stderr, "bench: pool load: a call failed\n");
    return false;
  }
  Row row = WithStats(LoadRow(point, "snakepit Pool, msgpack bytes in and out"),
                      *stats);
  if (point.memory) {
    row.update(MemoryFields(ChildPids()));
  }
  Print(row);
  return true;
}

bool LoadAt(const LoadPoint& point, const Flags& flags) {
  bool ok = RawLoad(point, "raw socketpair echo, one call per worker (floor)",
                    1, flags);
  if (ok && point.in_flight > point.workers) {
    ok = RawLoad(point, "raw socketpair echo, pipelined",
                 point.in_flight / point.workers, flags);
  }
  return ok && PoolLoad(point, flags);
}

}  // namespace

bool RunLoad(const Flags& flags) {
  LoadPoint point;
  point.section = flags.Get("section", "throughput");
  point.memory = flags.Number("memory", 0) != 0;
  int in_flight = static_cast<int>(flags.Number("in-flight", 0));
  for (long workers : flags.List("workers", {1, 2, 8})) {
    point.workers = static_cast<int>(workers);
    point.in_flight = in_flight > 0 ? in_flight : point.workers;
    if (!LoadAt(point, flags)) {
      return false;
    }
  }
  return true;
}

}  // namespace snakepit::bench
