#include "bench/bench_util.h"

#include <dirent.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <numeric>
#include <sstream>

extern char** environ;

namespace snakepit::bench {

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

Stats Summarise(std::vector<double> seconds, double wall_s) {
  Stats stats;
  if (seconds.empty()) {
    return stats;
  }
  std::sort(seconds.begin(), seconds.end());
  size_t n = seconds.size();
  stats.calls = n;
  stats.p50_us = seconds[n / 2] * 1e6;
  stats.p99_us = seconds[std::min(n - 1, n * 99 / 100)] * 1e6;
  stats.calls_per_s = wall_s > 0 ? n / wall_s : 0;
  return stats;
}

Row WithStats(Row row, const Stats& stats) {
  row["calls"] = stats.calls;
  row["p50_us"] = stats.p50_us;
  row["p99_us"] = stats.p99_us;
  row["calls_per_s"] = stats.calls_per_s;
  return row;
}

void Print(const Row& row) {
  std::fputs((row.dump() + "\n").c_str(), stdout);
  std::fflush(stdout);
}

namespace {

// Calls `call` up to `count` times or until `limit_s` has passed, but at
// least `min_count` times. Appends each call's duration to `samples`
// when it is given. False when a call fails.
bool Repeat(int count, int min_count, double limit_s,
            const std::function<bool()>& call, std::vector<double>* samples) {
  Clock::time_point start = Clock::now();
  for (int i = 0; i < count; ++i) {
    if (i >= min_count && SecondsSince(start) > limit_s) {
      break;
    }
    Clock::time_point t0 = Clock::now();
    if (!call()) {
      return false;
    }
    if (samples != nullptr) {
      samples->push_back(SecondsSince(t0));
    }
  }
  return true;
}

}  // namespace

std::optional<Stats> Measure(const std::string& name, const Budget& budget,
                             const std::function<bool()>& call) {
  int warmup = std::max(2, budget.calls / 10);
  if (!Repeat(warmup, 1, budget.limit_s / 10, call, nullptr)) {
    std::fprintf(stderr, "bench: %s: warm-up call failed\n", name.c_str());
    return std::nullopt;
  }
  std::vector<double> samples;
  samples.reserve(budget.calls);
  if (!Repeat(budget.calls, budget.min_calls, budget.limit_s, call, &samples)) {
    std::fprintf(stderr, "bench: %s: call failed\n", name.c_str());
    return std::nullopt;
  }
  double total = std::accumulate(samples.begin(), samples.end(), 0.0);
  return Summarise(std::move(samples), total);
}

Budget PayloadBudget(Budget budget, double bytes_per_cell, long size) {
  long calls = static_cast<long>(bytes_per_cell / size);
  budget.calls =
      static_cast<int>(std::clamp<long>(calls, budget.min_calls, budget.calls));
  return budget;
}

bool PayloadCell(const std::string& name, long size, const Budget& budget,
                 const std::function<bool()>& call) {
  std::optional<Stats> stats = Measure(name, budget, call);
  if (!stats) {
    return false;
  }
  Row row = WithStats(
      Row{{"section", "payload"}, {"name", name}, {"payload_bytes", size}},
      *stats);
  row["mb_per_s"] = 2.0 * static_cast<double>(size) / stats->p50_us;
  Print(row);
  return true;
}

bool SendExact(int fd, const char* data, size_t n) {
  while (n > 0) {
    ssize_t sent = ::send(fd, data, n, MSG_NOSIGNAL);
    if (sent <= 0) {
      return false;
    }
    data += sent;
    n -= static_cast<size_t>(sent);
  }
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

std::vector<std::string> OwnEnvironment() {
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    env.emplace_back(*e);
  }
  return env;
}

absl::StatusOr<RawEcho> RawEcho::Start(const std::string& python) {
  os::UniqueFd host, child;
  if (absl::Status s = os::MakeSocketPair(&host, &child); !s.ok()) {
    return s;
  }
  // Above the fds the child is given, so that mapping it to 3 cannot
  // clobber a source fd.
  absl::StatusOr<os::UniqueFd> high = os::DupAtLeast(child.get(), 10);
  if (!high.ok()) {
    return high.status();
  }
  os::SpawnRequest request;
  request.argv = {python, std::string(SNAKEPIT_BENCH_DIR) + "/raw_echo.py"};
  request.fds = {{high->get(), 3}, {1, 1}, {2, 2}};
  absl::StatusOr<os::SpawnedProcess> process = os::Spawn(request);
  if (!process.ok()) {
    return process.status();
  }
  return RawEcho(std::move(*process), std::move(host));
}

RawEcho::~RawEcho() {
  if (!process_.pidfd.valid()) {
    return;  // moved from
  }
  socket_.Reset();
  os::AwaitExit(process_.pidfd.get(), absl::Seconds(5));
  (void)os::TryReap(process_.pidfd.get());
}

bool RawEcho::RoundTrip(const std::string& frame, std::string* reply) const {
  return SendExact(fd(), frame.data(), frame.size()) &&
         ReadExact(fd(), reply->data(), reply->size());
}

std::string RawFrame(size_t payload) {
  std::string frame(4 + payload, 'x');
  uint32_t len = static_cast<uint32_t>(payload);
  std::memcpy(frame.data(), &len, 4);  // x86: already little-endian
  return frame;
}

std::optional<Memory> ReadMemory(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/smaps_rollup");
  if (!in) {
    return std::nullopt;
  }
  // The first line names the range; the rest read "Key:   123 kB".
  Memory memory;
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string key;
    long kb = 0;
    if (!(fields >> key >> kb)) {
      continue;
    }
    if (key == "Rss:") {
      memory.rss_kb = kb;
    } else if (key == "Pss:") {
      memory.pss_kb = kb;
    } else if (key == "Private_Clean:" || key == "Private_Dirty:") {
      memory.uss_kb += kb;
    }
  }
  return memory;
}

namespace {

// The parent pid in /proc/<pid>/stat, or -1. The command name may hold
// spaces and parentheses, so fields are counted from the last ')'.
pid_t ParentOf(const std::string& pid) {
  std::ifstream in("/proc/" + pid + "/stat");
  std::string stat((std::istreambuf_iterator<char>(in)),
                   std::istreambuf_iterator<char>());
  size_t close = stat.rfind(')');
  if (close == std::string::npos) {
    return -1;
  }
  std::istringstream fields(stat.substr(close + 1));
  std::string state;
  pid_t ppid = -1;
  fields >> state >> ppid;
  return ppid;
}

}  // namespace

std::vector<pid_t> ChildrenOf(const std::vector<pid_t>& parents) {
  std::vector<pid_t> children;
  DIR* proc = ::opendir("/proc");
  if (proc == nullptr) {
    return children;
  }
  while (struct dirent* entry = ::readdir(proc)) {
    std::string name = entry->d_name;
    if (name.empty() ||
        name.find_first_not_of("0123456789") != std::string::npos) {
      continue;
    }
    pid_t parent = ParentOf(name);
    if (std::find(parents.begin(), parents.end(), parent) != parents.end()) {
      children.push_back(std::atoi(name.c_str()));
    }
  }
  ::closedir(proc);
  return children;
}

std::vector<pid_t> ChildPids() { return ChildrenOf({::getpid()}); }

std::vector<pid_t> GrandchildPids() { return ChildrenOf(ChildPids()); }

Row MemoryFields(const std::vector<pid_t>& workers) {
  Memory host = ReadMemory(::getpid()).value_or(Memory{});
  Memory sum;
  for (pid_t pid : workers) {
    Memory m = ReadMemory(pid).value_or(Memory{});
    sum.rss_kb += m.rss_kb;
    sum.pss_kb += m.pss_kb;
    sum.uss_kb += m.uss_kb;
  }
  long n = std::max<long>(1, static_cast<long>(workers.size()));
  return Row{{"host_rss_kb", host.rss_kb},
             {"host_pss_kb", host.pss_kb},
             {"worker_pss_kb", sum.pss_kb / n},
             {"worker_uss_kb", sum.uss_kb / n},
             {"worker_rss_kb", sum.rss_kb / n},
             {"workers_pss_kb", sum.pss_kb},
             {"total_pss_kb", host.pss_kb + sum.pss_kb}};
}

Flags::Flags(int argc, char** argv, int first) {
  for (int i = first; i + 1 < argc; i += 2) {
    std::string flag = argv[i];
    if (flag.rfind("--", 0) == 0) {
      pairs_.emplace_back(flag.substr(2), argv[i + 1]);
    }
  }
}

std::string Flags::Get(const std::string& name,
                       const std::string& fallback) const {
  for (const auto& [key, value] : pairs_) {
    if (key == name) {
      return value;
    }
  }
  return fallback;
}

double Flags::Number(const std::string& name, double fallback) const {
  std::string text = Get(name, "");
  return text.empty() ? fallback : std::strtod(text.c_str(), nullptr);
}

std::vector<long> Flags::List(const std::string& name,
                              const std::vector<long>& fallback) const {
  std::string text = Get(name, "");
  if (text.empty()) {
    return fallback;
  }
  std::vector<long> values;
  std::istringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    values.push_back(std::strtol(item.c_str(), nullptr, 10));
  }
  return values;
}

Budget Flags::MakeBudget() const {
  Budget budget;
  budget.calls = static_cast<int>(Number("calls", budget.calls));
  budget.limit_s = Number("limit", budget.limit_s);
  return budget;
}

}  // namespace snakepit::bench
