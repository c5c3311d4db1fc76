#include "snakepit/worker/worker.h"

#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "snakepit/base/status.h"
#include "snakepit/os/process.h"
#include "snakepit/worker/run_registry.h"

extern char** environ;

namespace snakepit::worker {
namespace {

namespace fs = std::filesystem;

bool HasRuntime(const fs::path& dir) {
  std::error_code ec;
  return fs::exists(dir / "snakepit" / "_worker.py", ec);
}

// How long TryReap waits for a zygote's report of an exit it has seen.
constexpr absl::Duration kExitReportWait = absl::Seconds(2);

// Thread-count variables that numeric libraries read at import. One
// thread per worker unless the host or the pool says otherwise, so that
// many workers importing numpy do not start thousands of threads.
constexpr const char* kThreadVariables[] = {
    "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
    "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS"};

}  // namespace

absl::Status ResolveModules(const std::vector<std::string>& modules,
                            std::vector<std::string>* names,
                            std::vector<std::string>* search_paths) {
  for (const std::string& module : modules) {
    fs::path path(module);
    bool looks_like_path = module.find('/') != std::string::npos ||
                           path.extension() == ".py";
    if (!looks_like_path) {
      names->push_back(module);
      continue;
    }
    std::error_code ec;
    fs::path absolute = fs::absolute(path, ec);
    if (ec || !fs::exists(absolute, ec)) {
      return MakeError(absl::StatusCode::kNotFound, "module_not_found",
                       absl::StrCat("module file ", module,
                                    " does not exist"));
    }
    if (fs::is_directory(absolute, ec)) {
      // A package folder: import it by its name from its parent.
      absolute = absolute.lexically_normal();
      if (!absolute.has_filename()) {
        absolute = absolute.parent_path();
      }
      names->push_back(absolute.filename().string());
    } else {
      names->push_back(absolute.stem().string());
    }
    search_paths->push_back(absolute.parent_path().string());
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> FindRuntimeDir(const std::string& configured) {
  // A folder the caller names is used or refused, never passed over.
  std::string named = configured;
  const char* env = std::getenv("SNAKEPIT_RUNTIME_DIR");
  if (named.empty() && env != nullptr && *env) {
    named = env;
  }
  if (!named.empty()) {
    if (HasRuntime(named)) {
      return named;
    }
    return MakeError(
        absl::StatusCode::kFailedPrecondition, "runtime_not_found",
        absl::StrCat("no snakepit Python runtime in ", named, " (from ",
                     configured.empty() ? "SNAKEPIT_RUNTIME_DIR"
                                        : "PoolOptions::runtime_dir",
                     "): it must hold snakepit/_worker.py"));
  }

  // An installed program finds the runtime of its own prefix, wherever
  // the prefix was put; a program of the build tree, the source tree;
  // any other program, the installed runtime first, which a source tree
  // left behind must not shadow.
  std::vector<std::string> candidates;
  std::error_code ec;
  fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    candidates.push_back(
        (exe.parent_path().parent_path() / "share/snakepit/python").string());
  }
  fs::path build = fs::path(SNAKEPIT_NATIVE_BUILD_DIR).parent_path();
  bool in_build_tree =
      !ec && exe.string().rfind(build.string() + "/", 0) == 0;
  if (in_build_tree) {
    candidates.push_back(SNAKEPIT_SOURCE_RUNTIME_DIR);
    candidates.push_back(SNAKEPIT_INSTALLED_RUNTIME_DIR);
  } else {
    candidates.push_back(SNAKEPIT_INSTALLED_RUNTIME_DIR);
    candidates.push_back(SNAKEPIT_SOURCE_RUNTIME_DIR);
  }
  for (const std::string& dir : candidates) {
    if (HasRuntime(dir)) {
      return dir;
    }
  }
  return MakeError(
      absl::StatusCode::kFailedPrecondition, "runtime_not_found",
      absl::StrCat("snakepit Python runtime not found in ",
                   absl::StrJoin(candidates, ", "),
                   "; set SNAKEPIT_RUNTIME_DIR or PoolOptions::runtime_dir "
                   "to the folder that holds snakepit/_worker.py"));
}

std::vector<std::string> WorkerArgv(const WorkerSpec& spec) {
  std::vector<std::string> argv = {spec.python, "-m", "snakepit._worker",
                                   "--pool", spec.pool};
  for (const std::string& module : spec.modules) {
    argv.insert(argv.end(), {"--module", module});
  }
  for (const std::string& path : spec.search_paths) {
    argv.insert(argv.end(), {"--path", path});
  }
  argv.insert(argv.end(), {"--max-payload", std::to_string(spec.max_payload),
                           "--max-depth", std::to_string(spec.max_depth)});
  if (spec.max_concurrency > 1) {
    argv.insert(argv.end(), {"--max-concurrency",
                             std::to_string(spec.max_concurrency)});
  }
  return argv;
}

std::vector<std::string> WorkerEnv(const WorkerSpec& spec) {
  std::map<std::string, std::string> env;
  for (char** e = environ; e && *e; ++e) {
    std::string_view entry(*e);
    size_t eq = entry.find('=');
    if (eq != std::string_view::npos) {
      env[std::string(entry.substr(0, eq))] = std::string(entry.substr(eq + 1));
    }
  }
  for (const char* name : kThreadVariables) {
    env.try_emplace(name, "1");
  }
  for (const auto& [name, value] : spec.env) {
    env[name] = value;
  }
  // A program of the build tree runs the source tree's runtime; its
  // native loop (_snakepit_native) is in the build tree. An installed
  // runtime has it beside the package.
  std::string runtime = spec.runtime_dir;
  if (runtime == SNAKEPIT_SOURCE_RUNTIME_DIR) {
    runtime = absl::StrCat(runtime, ":", SNAKEPIT_NATIVE_BUILD_DIR);
  }
  std::string& pythonpath = env["PYTHONPATH"];
  pythonpath = pythonpath.empty() ? runtime
                                  : absl::StrCat(runtime, ":", pythonpath);
  env["SNAKEPIT_HOST_PID"] = std::to_string(::getpid());
  // The marker by which a later host's reaper finds this worker and its
  // children if this host dies (see run_registry.h).
  if (!spec.run_id.empty()) {
    env[kRunIdVariable] = spec.run_id;
  }
  // The node's secrets are not the workers' business: user code and the
  // processes it starts must not read the bearer token.
  env.erase("SNAKEPIT_TOKEN");

  std::vector<std::string> out;
  out.reserve(env.size());
  for (const auto& [name, value] : env) {
    out.push_back(absl::StrCat(name, "=", value));
  }
  return out;
}

absl::StatusOr<WorkerProcess::Ends> WorkerProcess::MakeEnds() {
  Ends ends;
  for (absl::Status s :
       {os::MakeSocketPair(&ends.channel, &ends.child_channel),
        os::MakeSocketPair(&ends.control, &ends.child_control),
        os::MakePipe(&ends.stdout_read, &ends.stdout_write),
        os::MakePipe(&ends.stderr_read, &ends.stderr_write)}) {
    if (!s.ok()) {
      return s;
    }
  }
  return ends;
}

absl::StatusOr<std::unique_ptr<WorkerProcess>> WorkerProcess::Adopt(
    pid_t pid, os::UniqueFd pidfd, Ends& ends,
    std::shared_ptr<ExitReports> exit_reports) {
  auto worker = std::unique_ptr<WorkerProcess>(new WorkerProcess());
  worker->pid_ = pid;
  worker->pidfd_ = std::move(pidfd);
  worker->exit_reports_ = std::move(exit_reports);
  worker->stdout_ = std::move(ends.stdout_read);
  worker->stderr_ = std::move(ends.stderr_read);
  worker->channel_ = std::move(ends.channel);
  worker->control_ = std::move(ends.control);
  for (int fd : {worker->channel_.get(), worker->control_.get()}) {
    if (absl::Status s = os::SetNonBlocking(fd); !s.ok()) {
      worker->SignalGroup(SIGKILL);
      return s;
    }
  }
  return worker;
}

absl::StatusOr<std::unique_ptr<WorkerProcess>> WorkerProcess::Start(
    const WorkerSpec& spec) {
  absl::StatusOr<Ends> ends = MakeEnds();
  if (!ends.ok()) {
    return ends.status();
  }
  // The child's ends are moved above fd 4, so that every dup2 in the
  // child changes the number and so clears close-on-exec.
  auto high_channel = os::DupAtLeast(ends->child_channel.get(), 10);
  auto high_control = os::DupAtLeast(ends->child_control.get(), 10);
  if (!high_channel.ok() || !high_control.ok()) {
    return high_channel.ok() ? high_control.status() : high_channel.status();
  }

  os::SpawnRequest request;
  request.argv = WorkerArgv(spec);
  request.env = WorkerEnv(spec);
  request.fds = {{ends->stdout_write.get(), 1},
                 {ends->stderr_write.get(), 2},
                 {high_channel->get(), protocol::kChannelFd},
                 {high_control->get(), protocol::kControlFd}};
  absl::StatusOr<os::SpawnedProcess> spawned = os::Spawn(request);
  if (!spawned.ok()) {
    return ReasonError(reason::kWorkerStartFailed,
                       absl::StrCat("cannot start worker for pool ", spec.pool,
                                    ": ", spawned.status().message()));
  }
  return Adopt(spawned->pid, std::move(spawned->pidfd), *ends, nullptr);
}

WorkerProcess::~WorkerProcess() {
  if (exit_reports_ != nullptr && !released_) {
    exit_reports_->Release(pid_);
  }
}

absl::Status WorkerProcess::Send(protocol::FrameType type, uint64_t id,
                                 std::string_view header,
                                 std::string_view body, absl::Time deadline) {
  char prefix[protocol::kPrefixSize];
  protocol::EncodePrefix({type, static_cast<uint32_t>(header.size()),
                          static_cast<uint32_t>(body.size()), id},
                         prefix);
  struct iovec iov[3] = {
      {prefix, sizeof(prefix)},
      {const_cast<char*>(header.data()), header.size()},
      {const_cast<char*>(body.data()), body.size()}};
  std::lock_guard<std::mutex> lock(send_mu_);
  if (!channel_.valid()) {
    return absl::UnavailableError("worker channel is closed");
  }
  return os::SendAll(channel_.get(), iov, 3, deadline);
}

absl::Status WorkerProcess::SendControl(protocol::FrameType type,
                                        uint64_t id) {
  char prefix[protocol::kPrefixSize];
  protocol::EncodePrefix({type, 0, 0, id}, prefix);
  struct iovec iov[1] = {{prefix, sizeof(prefix)}};
  std::lock_guard<std::mutex> lock(control_mu_);
  if (!control_.valid()) {
    return absl::UnavailableError("worker control socket is closed");
  }
  return os::SendAll(control_.get(), iov, 1,
                     absl::Now() + absl::Seconds(1));
}

void WorkerProcess::CloseSockets() {
  {
    std::lock_guard<std::mutex> lock(send_mu_);
    channel_.Reset();
  }
  std::lock_guard<std::mutex> lock(control_mu_);
  control_.Reset();
}

void WorkerProcess::SignalGroup(int signal) const {
  os::SignalGroup(pid_, signal);
}

absl::StatusOr<std::optional<os::ExitInfo>> WorkerProcess::TryReap() {
  if (exit_reports_ == nullptr) {
    return os::TryReap(pidfd_.get());
  }
  std::lock_guard<std::mutex> lock(reap_mu_);
  if (released_) {
    return ErrnoToStatus(ECHILD, absl::StrCat("reap worker ", pid_));
  }
  if (!os::AwaitExit(pidfd_.get(), absl::ZeroDuration())) {
    return std::nullopt;
  }
  // The pidfd turns readable as the worker exits; the zygote's report
  // follows within a moment.
  absl::StatusOr<os::ExitInfo> exit =
      exit_reports_->AwaitExit(pid_, kExitReportWait);
  exit_reports_->Release(pid_);
  released_ = true;
  if (!exit.ok()) {
    return exit.status();
  }
  return *exit;
}

}  // namespace snakepit::worker
