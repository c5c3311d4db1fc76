// The machinery behind Pool: workers, the queue, and one I/O thread.
//
// Threads. Callers of Submit and Cancel run on their own threads and
// write a call's frame themselves when a worker is idle. One I/O thread
// per pool waits in epoll on every worker's channel, control socket,
// stdout, stderr and pidfd; it completes calls, hands queued calls to
// workers that free up, logs worker output, enforces deadlines and
// replaces workers that exit.
//
// Locks. mu_ guards the workers' states, the queue and the catalogue. A
// CallState's own mutex nests inside mu_, never the other way round.
// Completion callbacks run with no lock held.

#ifndef SNAKEPIT_POOL_INTERNAL_POOL_CORE_H_
#define SNAKEPIT_POOL_INTERNAL_POOL_CORE_H_

#include <sys/epoll.h>
#include <sys/types.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <unordered_map>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "snakepit/os/fd.h"
#include "snakepit/pool/internal/call_state.h"
#include "snakepit/pool/pool.h"
#include "snakepit/protocol/frame.h"
#include "snakepit/worker/run_registry.h"
#include "snakepit/worker/worker.h"
#include "snakepit/worker/zygote.h"

namespace snakepit::internal {

class PoolCore : public std::enable_shared_from_this<PoolCore> {
 public:
  using CallList = std::vector<std::shared_ptr<CallState>>;

  // `registry` records the workers for reaping after a host crash; null
  // when it could not be opened.
  PoolCore(PoolOptions options, worker::WorkerSpec spec, os::Waker waker,
           os::UniqueFd epoll,
           std::shared_ptr<worker::RunRegistry> registry);
  ~PoolCore();

  // True on the pool's I/O thread (where completion callbacks run).
  bool OnIoThread() const {
    return std::this_thread::get_id() == io_thread_.get_id();
  }

  // True on a caller's thread while it reads a worker's channel in
  // Drive (where chunk and completion callbacks may run too).
  bool DrivingOnThisThread() const;

  // Spawns the workers and starts the I/O thread; with `wait`, waits
  // until every worker is ready or one fails to start.
  absl::Status Start(bool wait);

  // Submits a call with the msgpack arguments `args`, or, when
  // `borrowed` is not null, with `*borrowed`, which is read only before
  // Submit returns: written straight to an idle worker, or copied into
  // the call when it must wait in the queue.
  //
  // With `reserve`, a call written to a worker at once leaves the worker's
  // reply to this thread from that moment: the caller must then Drive the
  // call and, whatever happens, ReleaseReservation it.
  Call Submit(std::string_view function, std::string args,
              const std::string* borrowed, const CallOptions& options,
              bool reserve = false);

  // Gives back the reading a Submit with `reserve` kept and Drive did not
  // take. No-op otherwise.
  void ReleaseReservation(const std::shared_ptr<CallState>& call);

  // Called by a thread about to wait for `call`: if the call runs on a
  // worker whose channel no one is reading, this thread reads it itself
  // until the call is done (or, with want_chunk, has a chunk), `until`
  // passes, or the worker exits. Saves the I/O thread's handoff, the
  // largest host cost of a small call. Returns at once otherwise.
  void Drive(const std::shared_ptr<CallState>& call, absl::Time until);
  void Cancel(const std::shared_ptr<CallState>& call);
  void Shutdown(absl::Duration drain, absl::Duration grace);

  std::vector<FunctionInfo> Functions() const;
  PoolStats Stats() const;
  void EndSession(const std::string& id);

 private:
  enum class WorkerState { kStarting, kIdle, kBusy, kStopping, kExited };

  // One worker process and what the pool knows of it.
  struct Worker {
    explicit Worker(uint32_t max_body) : reader(max_body) {}

    uint32_t serial = 0;
    std::unique_ptr<worker::WorkerProcess> process;
    pid_t pid = -1;

    // Guarded by mu_.
    WorkerState state = WorkerState::kStarting;
    absl::Time ready_deadline = absl::InfiniteFuture();
    // Spawned after a start failure, to retry it.
    bool retry = false;
    // Calls in flight by id, whose final frames are awaited; a null
    // CallState marks a call abandoned (cancelled or past its deadline).
    // A worker runs up to `slots` at once (READY's max_concurrency).
    std::vector<std::pair<uint64_t, std::shared_ptr<CallState>>> running;
    int slots = 1;
    int abandoned = 0;
    bool goodbye_due = false;         // retiring: GOODBYE once running ends
    absl::Time kill_at = absl::InfiniteFuture();
    absl::Status fatal;               // what a FATAL frame said
    absl::Time started = absl::Now();
    uint64_t calls_served = 0;
    bool over_memory_at_ready = false;
    // Why the pool is ending this worker; empty: it was not (a crash).
    std::string exit_reason;
    // Recycling: `replaced_for` is set once the worker is due for
    // recycling; it serves on until its replacement is ready, then it
    // retires (no new calls, GOODBYE once its calls are done).
    std::string replaced_for;
    bool retiring = false;
    absl::Time next_ping = absl::InfiniteFuture();
    absl::Time pong_due = absl::InfiniteFuture();
    // Whoever reads the channel holds this: the I/O thread or a thread
    // in Drive. Frames are read by one thread at a time, in order.
    bool reader_busy = false;
    // The I/O thread had an event for the channel while a driving
    // thread held it; whoever releases it hands the channel back.
    bool missed_event = false;

    // I/O thread only.
    protocol::FrameReader reader;
    protocol::FrameReader control_reader{1024};
    std::string out_line;
    std::string err_line;
    std::string stderr_tail;
    std::atomic<bool> channel_open{true};

    // Sessions whose calls ran here (so this worker may hold their
    // ctx.session.local objects), and ended ones still to announce.
    // Guarded by mu_.
    std::set<std::string> sessions_held;
    std::vector<std::string> pending_ends;

    // Fixed at construction: wakes a thread driving this worker.
    std::shared_ptr<const os::Waker> interrupt;
  };

  // epoll tags: worker serial << 3 | kind.
  enum FdKind : uint64_t {
    kChannel = 0, kControl = 1, kStdout = 2, kStderr = 3, kPidfd = 4,
    kZygote = 5, kWaker = 7
  };

  // Spawning and the I/O loop.
  absl::Status SpawnWorker();
  // A new worker process: forked by the zygote (started first if needed)
  // or spawned. I/O thread only.
  absl::StatusOr<std::unique_ptr<worker::WorkerProcess>> NewProcess();
  // The zygote exited: workers are forked from a new one from now on.
  void OnZygoteExit();
  void Watch(int fd, uint64_t tag, uint32_t events = EPOLLIN);
  void Unwatch(int fd);
  void Loop();
  int NextTimeoutMs();
  void OnEvent(uint64_t tag, uint32_t events, Deferred* deferred);

  // Frames from a worker. The channel is edge-triggered in epoll, and a
  // reader drains it to EAGAIN; AcquireReader/ReleaseReader pass the
  // right to read between the I/O thread and driving threads.
  bool AcquireReader(Worker& w);
  void ReleaseReader(const std::shared_ptr<Worker>& w);
  void OnChannelEvent(const std::shared_ptr<Worker>& w, Deferred* deferred);
  void SetChannelInterest(const Worker& w, bool interested);
  // With `once`, one read only (a driving thread; see ReleaseReader).
  void ReadChannel(const std::shared_ptr<Worker>& w, Deferred* deferred,
                   bool once = false);
  void ReadControl(Worker& w);
  void HandleFrame(const std::shared_ptr<Worker>& w, protocol::Frame& frame,
                   Deferred* deferred);
  void HandleFrameUnchecked(const std::shared_ptr<Worker>& w,
                            protocol::Frame& frame, Deferred* deferred);
  void HandleReady(const std::shared_ptr<Worker>& w,
                   const protocol::Frame& frame,
                   Deferred* deferred);
  void HandleFinal(const std::shared_ptr<Worker>& w, protocol::Frame& frame,
                   Deferred* deferred);
  void HandleLog(Worker& w, const protocol::Frame& frame);
  void KillBroken(Worker& w, absl::Status why, Deferred* deferred);

  // Worker output.
  void PumpOutput(Worker& w, bool is_stderr);
  void FlushLines(Worker& w, bool is_stderr, bool all);

  // Exits and replacements.
  void OnExit(const std::shared_ptr<Worker>& w, Deferred* deferred);
  void ScheduleRespawnLocked();
  void RespawnMissing();

  // Start failures. REQUIRES: mu_ held. A pool whose last worker start
  // failed, with no ready worker and none starting but retries, is
  // degraded: its calls fail at once with DegradedErrorLocked() instead
  // of waiting for a worker that cannot come.
  int ReadyCountLocked() const;
  bool DegradedLocked() const;
  absl::Status DegradedErrorLocked() const;
  void RecordStartFailureLocked(absl::Status failure, Deferred* deferred);

  // Dispatch. REQUIRES: mu_ held; returns the worker to send to, if any.
  std::shared_ptr<Worker> TakeIdleLocked(const CallState& call,
                                         absl::Status* refusal);
  // Whether queued `call` may go to `w` now (strict affinity).
  bool MayRunOnLocked(const CallState& call, const Worker& w) const;
  void AssignLocked(Worker& w, const std::shared_ptr<CallState>& call);
  // Whether `w` takes another call now. REQUIRES: mu_ held.
  static bool HasFreeSlotLocked(const Worker& w);
  // Gives `call` to an idle worker, returned in `*w`, or else, with
  // `may_queue`, to the queue; without it `*w` is left null. Fails as
  // Submit does: pool closed, unknown function, degraded, queue full.
  absl::Status Place(const std::shared_ptr<CallState>& call, bool may_queue,
                     std::shared_ptr<Worker>* w);
  // Fills `w`'s free slots from the queue (calls to send go to
  // `to_send`) and sets its state; idle workers join idle_.
  void DispatchQueuedLocked(const std::shared_ptr<Worker>& w,
                            Deferred* deferred, CallList* to_send);
  // After a call left `w`: retires, recycles or refills it.
  void SettleLocked(const std::shared_ptr<Worker>& w, Deferred* deferred,
                    CallList* to_send);
  void SendCalls(const std::shared_ptr<Worker>& w, const CallList& calls);
  // Writes `call` to `w`, with `*borrowed` as its arguments when not
  // null, else the call's own.
  // With `reserve`, this thread keeps the reading of `w`'s channel for
  // the reply (see Submit).
  void SendCall(const std::shared_ptr<Worker>& w,
                const std::shared_ptr<CallState>& call,
                const std::string* borrowed = nullptr, bool reserve = false);
  // Takes the worker whose reading `call` reserved, or null.
  std::shared_ptr<Worker> TakeReservation(CallState& call);
  // Gives up on call `id` of `w`: asks the worker to cancel it, and kills
  // the worker if it has not answered within cancel_grace.
  void AbandonLocked(Worker& w, uint64_t id);
  // The call `id` runs as on `w`; null if it is not running or abandoned.
  static std::shared_ptr<CallState> RunningLocked(const Worker& w,
                                                  uint64_t id);

  // Sessions: ctx.session requests from a worker, and SESSION_END.
  void HandleSessionOp(Worker& w, const protocol::Frame& frame);
  void FlushSessionEnds(const std::shared_ptr<Worker>& w);

  // Recycling. REQUIRES: mu_ held. Returns the reason to retire `w`
  // after the call it just finished, or "".
  std::string RecycleReasonLocked(Worker& w);
  // Starts `w`'s replacement; `w` retires when it is ready.
  void ReplaceLocked(Worker& w, const std::string& reason);
  // Retires the worker waiting for a replacement, if any: one is ready.
  void RetireReplacedLocked();
  // Which memory limit the process tree of `pid` exceeds ("RSS ... bytes
  // in N processes, limit L"), or "" when none (or none is set).
  std::string MemoryOverLimit(pid_t pid) const;
  void RetireLocked(Worker& w, const std::string& reason);
  // Sends a retiring worker GOODBYE once it runs no call.
  void SayGoodbyeIfDoneLocked(Worker& w);

  // Deadlines and timers. REQUIRES: mu_ held.
  void ExpireLocked(absl::Time now, Deferred* deferred);
  void CheckLivenessLocked(Worker& w, absl::Time now);
  absl::Status QueueDeadlineError(const CallState& call) const;

  std::shared_ptr<Worker> Find(uint32_t serial);

  // The end of Shutdown: SIGTERM to every worker's group, up to `grace`
  // for them to exit, then SIGKILL; returns once all are reaped.
  void StopWorkers(absl::Duration grace);

  // Fixed at construction.
  const PoolOptions options_;
  const worker::WorkerSpec spec_;
  const os::Waker waker_;
  const os::UniqueFd epoll_;
  const std::shared_ptr<worker::RunRegistry> registry_;

  mutable std::mutex mu_;
  std::condition_variable changed_;  // a worker changed state
  std::map<uint32_t, std::shared_ptr<Worker>> workers_;  // guarded by mu_
  std::vector<std::shared_ptr<Worker>> idle_;            // guarded by mu_
  std::deque<std::shared_ptr<CallState>> queue_;         // guarded by mu_
  std::map<std::string, FunctionInfo> catalogue_;        // guarded by mu_
  bool catalogue_known_ = false;                         // guarded by mu_
  bool closed_ = false;                                  // guarded by mu_
  absl::Status start_failure_;  // the first; fails Start; guarded by mu_
  absl::Status last_start_failure_;  // OK once a worker is ready; mu_
  int missing_ = 0;                // workers to respawn; guarded by mu_
  absl::Time respawn_at_ = absl::InfiniteFuture();       // guarded by mu_
  int start_failures_in_row_ = 0;                        // guarded by mu_
  uint64_t restarts_ = 0;                                // guarded by mu_
  uint32_t next_serial_ = 1;                             // guarded by mu_
  // Workers whose channel may hold frames no reader has seen.
  std::vector<uint32_t> recheck_;                        // guarded by mu_
  // Session id → serial of the worker that served it last.
  std::unordered_map<std::string, uint32_t> affinity_;   // guarded by mu_
  std::map<std::string, uint64_t> restarts_by_reason_;   // guarded by mu_
  std::set<uint32_t> memory_reported_;                   // guarded by mu_
  uint64_t ping_seq_ = 0;                                // guarded by mu_
  uint64_t jitter_state_;  // backoff jitter's generator; guarded by mu_

  // Forks workers when options_.zygote; null until first needed and after
  // it dies. I/O thread only (and Shutdown once that thread is gone).
  std::unique_ptr<worker::Zygote> zygote_;

  std::atomic<bool> stop_{false};
  std::atomic<int64_t> next_wake_ns_{0};  // when the loop will wake
  std::thread io_thread_;
  std::once_flag shutdown_once_;
};

}  // namespace snakepit::internal

#endif  // SNAKEPIT_POOL_INTERNAL_POOL_CORE_H_
