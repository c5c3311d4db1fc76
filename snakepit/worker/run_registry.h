// The run registry: a record of which worker processes each live host
// started, so that a host started after a crash can kill what the
// crashed one left behind. docs/operations.md, "Run registry", describes
// it for operators.
//
// A *run* is one host process (a snakepitd, or any program that uses
// snakepit::Pool). Its record is the file <dir>/<run id>.run:
//
//   snakepit-run 1
//   run <run id: 32 lowercase hex digits, also the file name>
//   host <pid> <start time> <boot id>
//   worker <pid> <start time>        (one line per live worker)
//
// Start times are field 22 of /proc/<pid>/stat. The host rewrites the
// whole file (temporary file, then rename) on every change, so a reader
// sees one version or the next, never a mix.
//
// The host holds an exclusive flock on its file for its whole life, so a
// run is stale exactly when that lock is free: its host is dead, whatever
// became of its pid. Every worker carries SNAKEPIT_RUN_ID=<run id> in its
// environment, and its children inherit it. The reaper kills only
// processes that carry the marker of a stale run, and spares a recorded
// worker pid whose start time no longer matches the record: a process
// that merely reuses a pid is never signalled.

#ifndef SNAKEPIT_WORKER_RUN_REGISTRY_H_
#define SNAKEPIT_WORKER_RUN_REGISTRY_H_

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "absl/status/statusor.h"

#include "snakepit/os/fd.h"

namespace snakepit::worker {

// The environment variable that marks a worker, and its children, as
// belonging to a run.
inline constexpr char kRunIdVariable[] = "SNAKEPIT_RUN_ID";

// Overrides the default registry directory of RunRegistry::Default().
inline constexpr char kRunDirVariable[] = "SNAKEPIT_RUN_DIR";

// This host's run: its id and the workers it started.
//
// Thread-safe. The run's file lives until the object is destroyed, which
// removes it; if the host dies first, the file stays and a later reaper
// finds the run stale. A child the host forks without exec shares the
// lock, and keeps the run live while it lives. AddWorker and
// RemoveWorker rewrite the file (a handful of syscalls): call them
// outside locks that calls wait on.
class RunRegistry {
 public:
  // Starts a new run in `dir` ("" means DefaultDir()). Creates the
  // directory with mode 0700 if needed; FAILED_PRECONDITION when it is
  // not private to this user (see os::MakePrivateDir). Does not reap.
  static absl::StatusOr<std::shared_ptr<RunRegistry>> Open(
      std::string dir = "");

  // The process-wide run, shared by every pool in this host. The first
  // call reaps the stale runs of its directory ($SNAKEPIT_RUN_DIR when
  // set, else DefaultDir()) and opens the run; later calls return the
  // same run. A failed first call is retried by the next one.
  static absl::StatusOr<std::shared_ptr<RunRegistry>> Default();

  // $XDG_RUNTIME_DIR/snakepit/runs when XDG_RUNTIME_DIR is set, else
  // /tmp/snakepit-<uid>/runs.
  static std::string DefaultDir();

  // Kills what the stale runs in `dir` left: every process whose
  // environment carries SNAKEPIT_RUN_ID=<a stale run's id>, except a
  // recorded worker pid whose start time differs from its record, and
  // nothing at all for a run recorded in another boot. A worker that
  // leads a process group holding only such processes gets the signal
  // as a group. SIGKILL throughout; waits up to about a second for them
  // to exit. Then removes the stale files, including ones it cannot
  // parse (those are not acted on). Runs whose host holds its lock,
  // this process's own included, are left alone.
  //
  // Returns how many processes it signalled. NOT_FOUND when `dir` does
  // not exist.
  static absl::StatusOr<int> ReapStale(const std::string& dir);

  // Removes the run's file.
  ~RunRegistry();

  RunRegistry(const RunRegistry&) = delete;
  RunRegistry& operator=(const RunRegistry&) = delete;

  // 32 lowercase hex digits (128 random bits).
  const std::string& run_id() const { return run_id_; }
  const std::string& dir() const { return dir_; }
  // The run's file, <dir>/<run id>.run.
  std::string path() const;

  // Records a worker this run started; its start time is read now.
  // Call it after spawning the worker with SNAKEPIT_RUN_ID set; a crash
  // in between still leaves the worker to the reaper, by its marker.
  // NOT_FOUND when the process is already gone.
  absl::Status AddWorker(pid_t pid);

  // Forgets a worker once it has exited and been reaped. Failures to
  // rewrite the file are logged: a stale record is harmless, since the
  // reaper checks start times.
  void RemoveWorker(pid_t pid);

 private:
  RunRegistry(std::string dir, std::string run_id, std::string boot_id,
              uint64_t host_start_time);

  // Writes the record to a temporary file, locks it, and renames it over
  // the run's file; then drops the lock on the file it replaced.
  absl::Status RewriteLocked();
  std::string RenderLocked() const;

  // Fixed at construction.
  const std::string dir_;
  const std::string run_id_;
  const std::string boot_id_;
  const uint64_t host_start_time_;

  // Guarded by mu_.
  mutable std::mutex mu_;
  // Holds the lock on path(). Close-on-exec: a worker that inherited it
  // would keep the run looking live after the host died.
  os::UniqueFd file_;
  std::map<pid_t, uint64_t> workers_;  // pid -> start time
};

}  // namespace snakepit::worker

#endif  // SNAKEPIT_WORKER_RUN_REGISTRY_H_
