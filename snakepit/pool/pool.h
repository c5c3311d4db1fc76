// A pool of Python worker processes that runs functions of Python modules.
//
//   snakepit::PoolOptions options;
//   options.modules = {"examples/ml.py"};
//   auto pool = snakepit::Pool::Start(options);
//   absl::StatusOr<snakepit::Value> r =
//       (*pool)->Submit("ml.predict", {{"digits", 5}}).Get();
//
// Each worker runs one call at a time (max_concurrency raises it). Calls
// wait in a bounded FIFO queue for a free worker; one deadline covers the
// wait and the run. A worker
// that dies is reaped and replaced; its call fails with worker_crashed.

#ifndef SNAKEPIT_POOL_POOL_H_
#define SNAKEPIT_POOL_POOL_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "snakepit/base/value.h"
#include "snakepit/pool/call.h"
#include "snakepit/pool/session_backend.h"

namespace snakepit {

// The interpreter a pool runs when its options name none: the
// SNAKEPIT_PYTHON environment variable, else "python3".
std::string DefaultPython();

struct PoolOptions {
  // Name used in logs and errors.
  std::string name = "default";
  // Interpreter; looked up in PATH when it has no slash. Empty: the
  // SNAKEPIT_PYTHON environment variable, else "python3".
  std::string python;
  // Modules the workers import: module names ("mypkg.tools") or paths to
  // .py files ("examples/ml.py"), whose folder joins the search path.
  std::vector<std::string> modules;
  // Folders prepended to the workers' sys.path.
  std::vector<std::string> search_paths;
  // Number of worker processes, started concurrently.
  int size = 2;
  // Calls each worker runs at once: sync functions on a thread pool of
  // this size, `async def` ones as tasks on the worker's event loop. The
  // pool's capacity is size × max_concurrency slots.
  int max_concurrency = 1;
  // Extra environment for the workers, over the host's own.
  std::map<std::string, std::string> env;
  // Time allowed from spawn until a worker is ready (imports and on_start
  // hooks included).
  absl::Duration startup_timeout = absl::Seconds(60);
  // Whether Pool::Start waits until every worker is ready (and fails
  // with why they cannot start). When false it returns at once: calls
  // wait in the queue until a worker is ready, within their deadlines,
  // and start failures show in Stats().
  bool wait_until_ready = true;
  // Largest argument or result body, in bytes, either direction.
  uint32_t max_payload_bytes = 256u << 20;
  // Largest nesting of arrays and maps in a value.
  int max_depth = kDefaultMaxDepth;
  // Calls allowed to wait for a worker; beyond it Submit fails at once
  // with RESOURCE_EXHAUSTED (queue_full).
  size_t max_queue = 1024;
  // How long a worker may take to stop a cancelled or timed-out call
  // before its process group is killed and it is replaced.
  absl::Duration cancel_grace = absl::Seconds(2);

  // Recycling: a worker is replaced after its current calls once it has
  // served this many calls (0: no limit), lived this long, or grown past
  // a memory limit (0: no limit). Memory is that of the worker's whole
  // process tree (its children too), read from /proc after each call:
  // resident (RSS) and proportional (PSS, shared pages divided among
  // their users). One worker at a time is recycled: by calls or age, its
  // replacement starts first and it serves on (last in line) until that
  // is ready; over a memory limit, it stops taking calls at once. A
  // worker that is over a memory limit from its start is reported once,
  // not recycled forever.
  uint64_t max_calls_per_worker = 0;
  absl::Duration max_worker_age = absl::InfiniteDuration();
  uint64_t max_worker_rss_bytes = 0;
  uint64_t max_worker_pss_bytes = 0;

  // Liveness: an idle worker is pinged this often on its control socket
  // and replaced if it does not answer within liveness_timeout (it is
  // stopped or wedged). Busy workers are judged by their calls'
  // deadlines, never by pings: a long call is slow, not dead.
  absl::Duration liveness_interval = absl::Seconds(5);
  absl::Duration liveness_timeout = absl::Seconds(5);

  // Start workers by forking them from a zygote: one process that imports
  // the modules once (docs/architecture.md, "Zygote start"). Start,
  // replacement and recycling all fork; workers start in a few ms each
  // and share the imported modules' memory. Not for modules that start
  // threads or initialise CUDA at import (the zygote refuses the first).
  bool zygote = false;

  // Where the snakepit Python runtime lives. Empty: found automatically.
  std::string runtime_dir;
  // Serves ctx.session; calls with a session fail FAILED_PRECONDITION
  // without one.
  std::shared_ptr<SessionBackend> sessions;
};

// Where a call in a session may run, relative to the worker that served
// the session last (and so holds its ctx.session.local objects).
enum class Affinity {
  kHint,         // that worker when it is free, else any
  kStrictQueue,  // wait for that worker (any, if it is gone)
  kStrictFail,   // that worker or fail at once (busy or gone)
};

struct CallOptions {
  // The whole time the call may take, queue wait included.
  absl::Duration timeout = absl::InfiniteDuration();
  // Run in this session (ctx.session); empty: none.
  std::string session;
  Affinity affinity = Affinity::kHint;
};

// One function of the pool's catalogue, as the worker describes it.
struct FunctionInfo {
  std::string name;
  std::string kind;  // function, async, generator, async_generator
  std::string doc;
  std::string signature;  // "(digits: int, seed: int = 0) -> list"
  Value raw;              // the whole catalogue entry
};

// Where a pool stands, as health checks and metrics report it.
enum class PoolState {
  kStarting,  // no worker has been ready yet, none has failed to start
  kReady,     // workers start as they should
  kDegraded,  // the last attempt to start a worker failed; with no ready
              // worker, calls fail at once with that failure
  kClosed,    // shut down
};

// "starting", "ready", "degraded", "closed".
const char* PoolStateName(PoolState state);

struct PoolStats {
  PoolState state = PoolState::kStarting;
  // Why the last worker failed to start (reason, message and the tail of
  // its stderr); OK unless degraded.
  absl::Status start_failure;
  int size = 0;
  int ready = 0;     // idle and busy workers
  int busy = 0;
  int starting = 0;
  size_t queued = 0;
  uint64_t restarts = 0;  // workers replaced since start
  // Replacements by cause: crash, start_failure, recycle_calls,
  // recycle_age, recycle_memory, unresponsive, hung_call, protocol_error.
  std::map<std::string, uint64_t> restarts_by_reason;
};

namespace internal {
class PoolCore;
}  // namespace internal

// Thread-safe. Destroying the pool shuts it down (see Shutdown).
class Pool {
 public:
  // Starts the workers and, with options.wait_until_ready, waits until
  // every one is ready. Fails with import_error, start_hook_failed or
  // worker_start_failed (with the worker's traceback or stderr) when they
  // cannot start.
  static absl::StatusOr<std::unique_ptr<Pool>> Start(PoolOptions options);

  ~Pool();
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;

  // Submits a call of `function` with `args`: a map (keyword arguments),
  // an array (positional) or null (none). Never waits for a worker to be
  // free; when one is, this thread writes the call to it, which for large
  // arguments to a worker that is not reading can take until the call's
  // deadline (the call then fails and the worker is replaced).
  Call Submit(std::string_view function, const Value& args,
              const CallOptions& options = {});

  // As Submit, with the arguments already encoded as msgpack: a map, an
  // array, or nil or nothing for none.
  Call SubmitRaw(std::string_view function, std::string&& args_msgpack,
                 const CallOptions& options = {});

  // As above, for arguments the caller keeps: they are read only before
  // this returns. When a worker is free they are written to it straight
  // from `args_msgpack`, with no copy, which for large arguments saves
  // as much time as the write itself; when the call must wait in the
  // queue, they are copied.
  Call SubmitRaw(std::string_view function, const std::string& args_msgpack,
                 const CallOptions& options = {});

  // SubmitRaw for a caller that waits for the call on this thread at
  // once. `on_submitted` (if set) runs with the call as soon as it is
  // submitted, to publish it (for a cancel from another thread, say); it
  // runs while the reply is kept for this thread, so it must return
  // promptly and must not wait on the pool (Get, Shutdown). Then, when
  // the call went to a worker at once, this thread waits for up to `wait`
  // for it to end (a queued call has a wait ahead, and is not waited
  // for). The worker's reply is this thread's to read from the
  // moment the call is written, so a worker that answers before the wait
  // begins does not wake the pool's I/O thread first: a thread handoff
  // less per call where they share a CPU. Returns the call; Done() tells
  // whether it has ended.
  Call SubmitRawAndWait(
      std::string_view function, std::string&& args_msgpack,
      const CallOptions& options, absl::Duration wait,
      const std::function<void(const Call&)>& on_submitted = nullptr);
  // As above, for arguments the caller keeps (read as SubmitRaw reads
  // them: no copy when a worker is free).
  Call SubmitRawAndWait(
      std::string_view function, const std::string& args_msgpack,
      const CallOptions& options, absl::Duration wait,
      const std::function<void(const Call&)>& on_submitted = nullptr);

  // Submit(...).Get(), with the reply read as SubmitRawAndWait reads it.
  absl::StatusOr<Value> Invoke(std::string_view function, const Value& args,
                               const CallOptions& options = {});

  // The functions the workers offer, sorted by name.
  std::vector<FunctionInfo> Functions() const;

  PoolStats Stats() const;

  // Tells the workers that hold local objects of session `id` that it
  // ended: they run their on_session_end hooks and drop the objects.
  // Called when the session is deleted or expires.
  void EndSession(const std::string& id);

  // Refuses new calls (pool_closed), fails queued ones, lets running
  // calls finish for up to `drain`, then ends the workers: each is told
  // to exit, and after `grace` its process group is killed. Returns when
  // every worker has been reaped. Idempotent.
  void Shutdown(absl::Duration drain = absl::ZeroDuration(),
                absl::Duration grace = absl::Seconds(2));

 private:
  explicit Pool(std::shared_ptr<internal::PoolCore> core);

  // SubmitRawAndWait after the check of the arguments: `args_msgpack`,
  // or `*borrowed` when not null.
  Call SubmitAndWait(std::string_view function, std::string args_msgpack,
                     const std::string* borrowed, const CallOptions& options,
                     absl::Duration wait,
                     const std::function<void(const Call&)>& on_submitted);

  std::shared_ptr<internal::PoolCore> core_;
};

}  // namespace snakepit

#endif  // SNAKEPIT_POOL_POOL_H_
