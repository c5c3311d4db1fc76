// Zygote start (docs/architecture.md, "Zygote start"): one Python process
// imports a pool's modules once and forks workers that are ready to
// handshake, instead of one exec and one import per worker.

#ifndef SNAKEPIT_WORKER_ZYGOTE_H_
#define SNAKEPIT_WORKER_ZYGOTE_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "snakepit/os/fd.h"
#include "snakepit/worker/worker.h"

namespace snakepit::worker {

class ZygoteLink;  // zygote.cc: the socket and what came over it

// A running `python -m snakepit._zygote` for one pool (docs/protocol.md,
// "Zygote").
//
// Thread-safe: Fork() may be called from several threads at once.
//
// Lifetime. A thread of this object starts the zygote, so the zygote's
// parent-death signal is tied to this object, not to the caller's thread.
// The workers are the zygote's children: when the Zygote is destroyed,
// or the zygote process dies, every worker it forked is killed with its
// process group (on a clean exit the zygote does it; when the zygote is
// killed, each worker's own parent-death signal does). Destroy the Zygote
// after its workers are shut down and reaped. A WorkerProcess may outlive
// its Zygote; its TryReap then fails with "status unknown" unless the
// exit was reported before.
class Zygote {
 public:
  // Starts a zygote that imports `spec.modules`, and returns once it is
  // ready to fork. Fails as a worker start does: import_error with the
  // Python type and traceback (and the stderr tail in the message);
  // worker_start_failed when the zygote exits or is not ready by
  // `deadline`, or when importing the modules started a thread (a
  // process with threads cannot be forked safely; use exec start).
  static absl::StatusOr<std::unique_ptr<Zygote>> Start(
      const WorkerSpec& spec, absl::Time deadline);

  // Closes the zygote's socket: the zygote kills its workers and exits.
  // Waits up to 2 s for that, then kills it, and reaps it.
  ~Zygote();

  Zygote(const Zygote&) = delete;
  Zygote& operator=(const Zygote&) = delete;

  // Forks a worker: a drop-in for WorkerProcess::Start(spec). The worker
  // then sends HELLO, runs the on_start hooks and sends READY (or FATAL)
  // on its channel exactly as a spawned one does; its pidfd, process
  // group, sockets and pipes behave alike, and its TryReap returns the
  // exit the zygote reports. `deadline` bounds the fork request only; the
  // handshake's deadline is the caller's. worker_start_failed when the
  // zygote is gone (see alive()), cannot fork, or does not answer in time.
  absl::StatusOr<std::unique_ptr<WorkerProcess>> Fork(absl::Time deadline);

  pid_t pid() const { return pid_; }

  // Readable (POLLIN) once the zygote process has exited, for the
  // caller's poll or epoll set. Reaped by the destructor.
  int pidfd() const { return pidfd_.get(); }

  // False once the zygote has gone away (its socket closed): Fork fails
  // from then on, and the workers it forked are dying. Start a new one.
  bool alive() const;

 private:
  Zygote(std::string pool, os::Waker stop);

  // The body of thread_: spawns the zygote, then reads its socket and
  // logs its output until it goes away or the destructor stops it.
  void Run(const WorkerSpec& spec);
  absl::Status Spawn(const WorkerSpec& spec);
  void Serve();
  void PumpOutput(bool is_stderr, bool* open);
  void FlushLines(bool is_stderr, bool all);

  // Why Start failed once the zygote went away before READY.
  absl::Status StartFailure();

  // Fixed at construction.
  const std::string pool_;
  const os::Waker stop_;
  const std::shared_ptr<ZygoteLink> link_;

  // Set by thread_ before Start returns; fixed after.
  pid_t pid_ = -1;
  os::UniqueFd pidfd_;
  os::UniqueFd stdout_;
  os::UniqueFd stderr_;

  // Used by thread_ only.
  std::string out_line_;
  std::string err_line_;

  std::thread thread_;
};

}  // namespace snakepit::worker

#endif  // SNAKEPIT_WORKER_ZYGOTE_H_
