// One Python worker process: how it is started and how the host writes to
// it. The pool owns reading (on its I/O thread) and lifecycle decisions.

#ifndef SNAKEPIT_WORKER_WORKER_H_
#define SNAKEPIT_WORKER_WORKER_H_

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "snakepit/os/fd.h"
#include "snakepit/os/process.h"
#include "snakepit/protocol/frame.h"

namespace snakepit::worker {

// Everything needed to start a worker of one pool.
struct WorkerSpec {
  std::string pool;
  std::string python;
  std::vector<std::string> modules;       // module names
  std::vector<std::string> search_paths;  // absolute folders
  std::map<std::string, std::string> env;
  uint32_t max_payload = 0;
  int max_depth = 0;
  int max_concurrency = 1;  // calls a worker runs at once
  std::string runtime_dir;  // folder holding the snakepit package
  // The host's run (RunRegistry::run_id()), given to the worker as
  // SNAKEPIT_RUN_ID; empty leaves the variable as the host has it.
  std::string run_id;
};

// Splits user-facing module arguments ("examples/ml.py", "pkg.mod") into
// module names and search paths. NOT_FOUND for a path that does not exist.
absl::Status ResolveModules(const std::vector<std::string>& modules,
                            std::vector<std::string>* names,
                            std::vector<std::string>* search_paths);

// The folder holding the snakepit Python package: `configured` when set,
// else $SNAKEPIT_RUNTIME_DIR (either must hold the runtime, or this fails
// with runtime_not_found); else the runtime of the program's own prefix;
// else, for a program of the build tree, the source tree and then the
// installed copy, and for any other program the other way round.
absl::StatusOr<std::string> FindRuntimeDir(const std::string& configured);

// The worker's argv and environment; see docs/protocol.md, "Handshake".
std::vector<std::string> WorkerArgv(const WorkerSpec& spec);
std::vector<std::string> WorkerEnv(const WorkerSpec& spec);

// Where the exit status of a worker comes from when the host is not its
// parent: a zygote's children (zygote.h). Thread-safe.
class ExitReports {
 public:
  virtual ~ExitReports() = default;

  // The exit status of `pid`, which has exited; waits up to `timeout` for
  // it to be reported. UNAVAILABLE when it never will be (the reporter is
  // gone), DEADLINE_EXCEEDED when it is late.
  virtual absl::StatusOr<os::ExitInfo> AwaitExit(pid_t pid,
                                                 absl::Duration timeout) = 0;

  // The host is done with `pid`: its parent may reap it, and the pid may
  // be reused. Called once per pid.
  virtual void Release(pid_t pid) = 0;
};

// A started worker process and the host's ends of its sockets and pipes.
//
// Thread-safe for Send/SendControl; the fds are read by one thread only.
// A worker comes from Start (a child of the host) or from Zygote::Fork (a
// child of the zygote); the two behave alike for their user.
class WorkerProcess {
 public:
  static absl::StatusOr<std::unique_ptr<WorkerProcess>> Start(
      const WorkerSpec& spec);

  // Lets the zygote reap a zygote's child the host has not reaped.
  ~WorkerProcess();

  pid_t pid() const { return pid_; }
  int channel_fd() const { return channel_.get(); }
  int control_fd() const { return control_.get(); }
  int stdout_fd() const { return stdout_.get(); }
  int stderr_fd() const { return stderr_.get(); }
  int pidfd() const { return pidfd_.get(); }

  // Sends one frame on the channel; gives up at `deadline`.
  absl::Status Send(protocol::FrameType type, uint64_t id,
                    std::string_view header, std::string_view body,
                    absl::Time deadline);

  // Sends a header-less frame on the control socket.
  absl::Status SendControl(protocol::FrameType type, uint64_t id);

  // Closes both sockets: the worker reads end of file and exits.
  void CloseSockets();

  // Signals the worker's process group (the worker and its children).
  // Until TryReap has returned the exit, the pid (and so the group id)
  // cannot be reused: the host, or the zygote while it lives, holds the
  // zombie.
  void SignalGroup(int signal) const;

  // Reaps the worker if it has exited: its exit, or nullopt while it
  // runs; an error once reaped. A zygote's child is reaped by the zygote,
  // which reports the exit: once the pidfd is readable this waits up to
  // 2 s for that report. UNAVAILABLE ("status unknown") only if the
  // zygote is gone. Call from one thread at a time.
  absl::StatusOr<std::optional<os::ExitInfo>> TryReap();

 private:
  friend class Zygote;

  // Both ends of a worker's two sockets and two pipes.
  struct Ends {
    os::UniqueFd channel, control, stdout_read, stderr_read;  // the host's
    os::UniqueFd child_channel, child_control, stdout_write, stderr_write;
  };
  static absl::StatusOr<Ends> MakeEnds();

  // Takes the host's ends of `ends` and makes the sockets non-blocking.
  static absl::StatusOr<std::unique_ptr<WorkerProcess>> Adopt(
      pid_t pid, os::UniqueFd pidfd, Ends& ends,
      std::shared_ptr<ExitReports> exit_reports);

  WorkerProcess() = default;

  // Fixed at construction.
  pid_t pid_ = -1;
  os::UniqueFd pidfd_;
  std::shared_ptr<ExitReports> exit_reports_;  // null for a host's child
  os::UniqueFd stdout_;
  os::UniqueFd stderr_;

  // Writers hold the socket's own lock; readers use the fds without it.
  // Two locks, so that a cancel or a ping on the control socket never
  // waits behind a large call being written to a worker that is not
  // reading.
  std::mutex send_mu_;
  os::UniqueFd channel_;  // guarded by send_mu_
  std::mutex control_mu_;
  os::UniqueFd control_;  // guarded by control_mu_

  // Guarded by reap_mu_.
  std::mutex reap_mu_;
  bool released_ = false;  // a zygote's child: Release() was called
};

}  // namespace snakepit::worker

#endif  // SNAKEPIT_WORKER_WORKER_H_
