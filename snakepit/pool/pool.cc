#include "snakepit/pool/pool.h"

#include <sys/epoll.h>

#include <cerrno>
#include <cstdlib>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "snakepit/base/log.h"
#include "snakepit/base/status.h"
#include "snakepit/os/process.h"
#include "snakepit/pool/internal/pool_core.h"

namespace snakepit {

std::string DefaultPython() {
  const char* env = std::getenv("SNAKEPIT_PYTHON");
  return env != nullptr && *env != '\0' ? env : "python3";
}
namespace {

absl::StatusOr<worker::WorkerSpec> MakeSpec(const PoolOptions& options) {
  if (options.size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("pool ", options.name, " needs at least one worker"));
  }
  if (options.modules.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("pool ", options.name, " has no modules to import"));
  }
  if (options.max_concurrency < 1 || options.max_concurrency > 256) {
    return ReasonError(
        reason::kInvalidArgument,
        absl::StrCat("pool ", options.name, ": max_concurrency must be "
                     "between 1 and 256, not ", options.max_concurrency));
  }
  worker::WorkerSpec spec;
  spec.pool = options.name;
  spec.python = options.python;
  if (spec.python.empty()) {
    spec.python = DefaultPython();
  }
  if (absl::Status s = worker::ResolveModules(options.modules, &spec.modules,
                                              &spec.search_paths);
      !s.ok()) {
    return s;
  }
  spec.search_paths.insert(spec.search_paths.end(),
                           options.search_paths.begin(),
                           options.search_paths.end());
  absl::StatusOr<std::string> runtime =
      worker::FindRuntimeDir(options.runtime_dir);
  if (!runtime.ok()) {
    return runtime.status();
  }
  spec.runtime_dir = *runtime;
  spec.env = options.env;
  spec.max_payload = options.max_payload_bytes;
  spec.max_depth = options.max_depth;
  spec.max_concurrency = options.max_concurrency;
  return spec;
}

// msgpack nil: no arguments, as Submit with a null Value.
constexpr std::string_view kNil = "\xc0";

// Checks raw arguments: empty or nil (none), or one msgpack map or
// array.
absl::Status CheckRawArgs(const std::string& args_msgpack) {
  if (args_msgpack.empty() || args_msgpack == kNil) {
    return absl::OkStatus();
  }
  absl::Status ok = CheckMsgpack(args_msgpack, kDefaultMaxDepth, false);
  if (!ok.ok()) {
    return ok;
  }
  auto first = static_cast<unsigned char>(args_msgpack[0]);
  bool is_map = (first & 0xf0) == 0x80 || first == 0xde || first == 0xdf;
  bool is_array = (first & 0xf0) == 0x90 || first == 0xdc || first == 0xdd;
  if (!is_map && !is_array) {
    return ReasonError(reason::kInvalidArgument,
                       "arguments must be a msgpack map (keywords) or array "
                       "(positional)");
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Pool>> Pool::Start(PoolOptions options) {
  os::IgnoreSigpipe();
  absl::StatusOr<worker::WorkerSpec> spec = MakeSpec(options);
  if (!spec.ok()) {
    return spec.status();
  }
  absl::StatusOr<os::Waker> waker = os::Waker::Create();
  if (!waker.ok()) {
    return waker.status();
  }
  int epoll = ::epoll_create1(EPOLL_CLOEXEC);
  if (epoll < 0) {
    return ErrnoToStatus(errno, "epoll_create1");
  }
  // The host's run: lets a later host reap what this one leaves if it
  // crashes. Pools work without it.
  absl::StatusOr<std::shared_ptr<worker::RunRegistry>> registry =
      worker::RunRegistry::Default();
  std::shared_ptr<worker::RunRegistry> run;
  if (registry.ok()) {
    run = *registry;
    spec->run_id = run->run_id();
  } else {
    Log().warn("pool {}: no run registry ({}); workers left by a crash "
               "will not be reaped at the next start",
               options.name, std::string(registry.status().message()));
  }
  bool wait = options.wait_until_ready;
  auto core = std::make_shared<internal::PoolCore>(
      std::move(options), std::move(*spec), std::move(*waker),
      os::UniqueFd(epoll), std::move(run));
  if (absl::Status s = core->Start(wait); !s.ok()) {
    core->Shutdown(absl::ZeroDuration(), absl::Seconds(1));
    return s;
  }
  return std::unique_ptr<Pool>(new Pool(std::move(core)));
}

const char* PoolStateName(PoolState state) {
  switch (state) {
    case PoolState::kStarting:
      return "starting";
    case PoolState::kReady:
      return "ready";
    case PoolState::kDegraded:
      return "degraded";
    case PoolState::kClosed:
      return "closed";
  }
  return "unknown";
}

Pool::Pool(std::shared_ptr<internal::PoolCore> core)
    : core_(std::move(core)) {}

Pool::~Pool() { Shutdown(absl::ZeroDuration(), absl::Seconds(2)); }

namespace {

// The msgpack of call arguments: a map, an array, or null (none: empty).
absl::StatusOr<std::string> EncodeArgs(const Value& args) {
  if (!args.is_null() && !args.is_object() && !args.is_array()) {
    return ReasonError(
        reason::kInvalidArgument,
        "arguments must be a map (keywords), an array (positional) or null");
  }
  if (args.is_null()) {
    return std::string();
  }
  return EncodeValue(args);
}

}  // namespace

Call Pool::Submit(std::string_view function, const Value& args,
                  const CallOptions& options) {
  absl::StatusOr<std::string> encoded = EncodeArgs(args);
  if (!encoded.ok()) {
    return Call::Failed(encoded.status());
  }
  return core_->Submit(function, std::move(*encoded), nullptr, options);
}

Call Pool::SubmitAndWait(
    std::string_view function, std::string args_msgpack,
    const std::string* borrowed, const CallOptions& options,
    absl::Duration wait,
    const std::function<void(const Call&)>& on_submitted) {
  Call call = core_->Submit(function, std::move(args_msgpack), borrowed,
                            options, /*reserve=*/true);
  if (on_submitted) {
    on_submitted(call);
  }
  // QueueWait is zero until the call is sent: a queued call is not
  // waited for.
  if (wait > absl::ZeroDuration() && call.QueueWait() > absl::ZeroDuration()) {
    call.WaitFor(wait);
  }
  core_->ReleaseReservation(call.state_);
  return call;
}

Call Pool::SubmitRaw(std::string_view function, std::string&& args_msgpack,
                     const CallOptions& options) {
  if (absl::Status ok = CheckRawArgs(args_msgpack); !ok.ok()) {
    return Call::Failed(ok);
  }
  if (args_msgpack == kNil) {
    args_msgpack.clear();
  }
  return core_->Submit(function, std::move(args_msgpack), nullptr, options);
}

Call Pool::SubmitRaw(std::string_view function,
                     const std::string& args_msgpack,
                     const CallOptions& options) {
  if (absl::Status ok = CheckRawArgs(args_msgpack); !ok.ok()) {
    return Call::Failed(ok);
  }
  if (args_msgpack == kNil) {
    return core_->Submit(function, "", nullptr, options);
  }
  return core_->Submit(function, "", &args_msgpack, options);
}

Call Pool::SubmitRawAndWait(
    std::string_view function, std::string&& args_msgpack,
    const CallOptions& options, absl::Duration wait,
    const std::function<void(const Call&)>& on_submitted) {
  if (absl::Status ok = CheckRawArgs(args_msgpack); !ok.ok()) {
    return Call::Failed(ok);
  }
  if (args_msgpack == kNil) {
    args_msgpack.clear();
  }
  return SubmitAndWait(function, std::move(args_msgpack), nullptr, options,
                       wait, on_submitted);
}

Call Pool::SubmitRawAndWait(
    std::string_view function, const std::string& args_msgpack,
    const CallOptions& options, absl::Duration wait,
    const std::function<void(const Call&)>& on_submitted) {
  if (absl::Status ok = CheckRawArgs(args_msgpack); !ok.ok()) {
    return Call::Failed(ok);
  }
  bool none = args_msgpack == kNil;
  return SubmitAndWait(function, "", none ? nullptr : &args_msgpack, options,
                       wait, on_submitted);
}

absl::StatusOr<Value> Pool::Invoke(std::string_view function,
                                   const Value& args,
                                   const CallOptions& options) {
  absl::StatusOr<std::string> encoded = EncodeArgs(args);
  if (!encoded.ok()) {
    return encoded.status();
  }
  return SubmitAndWait(function, std::move(*encoded), nullptr, options,
                       absl::InfiniteDuration(), nullptr)
      .Get();
}

std::vector<FunctionInfo> Pool::Functions() const {
  return core_->Functions();
}

PoolStats Pool::Stats() const { return core_->Stats(); }

void Pool::EndSession(const std::string& id) { core_->EndSession(id); }

void Pool::Shutdown(absl::Duration drain, absl::Duration grace) {
  if (core_->OnIoThread() || core_->DrivingOnThisThread()) {
    // Called from a completion or chunk callback, on a thread that
    // Shutdown must wait for (the I/O thread, or a caller reading its
    // worker's channel): hand the work to a thread of its own, which
    // keeps the machinery alive until it is done.
    std::thread([core = core_, drain, grace] {
      core->Shutdown(drain, grace);
    }).detach();
    return;
  }
  core_->Shutdown(drain, grace);
}

}  // namespace snakepit
