// A thread that runs one function periodically, for the stores' reapers.

#ifndef SNAKEPIT_SESSION_INTERNAL_SWEEPER_H_
#define SNAKEPIT_SESSION_INTERNAL_SWEEPER_H_

#include <functional>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace snakepit::internal {

// Calls `sweep` on its own thread every `interval` until Stop(). A sweep
// returns true when it stopped at its budget with work left; the next one
// then runs after a short pause instead of a full interval, so a backlog
// drains quickly without any one sweep holding locks for long.
//
// Thread-safe. An infinite interval starts no thread.
class Sweeper {
 public:
  Sweeper() = default;
  ~Sweeper() { Stop(); }
  Sweeper(const Sweeper&) = delete;
  Sweeper& operator=(const Sweeper&) = delete;

  // Starts the thread. Call at most once.
  void Start(absl::Duration interval, std::function<bool()> sweep);

  // Wakes the thread and joins it; a sweep under way finishes first.
  // Idempotent. Must not be called from the sweep itself.
  void Stop();

 private:
  void Run(absl::Duration interval, const std::function<bool()>& sweep);

  // Pause between sweeps while a backlog lasts: long enough to let
  // callers take the locks, short enough to drain fast.
  static constexpr absl::Duration kBacklogPause = absl::Milliseconds(1);

  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace snakepit::internal

#endif  // SNAKEPIT_SESSION_INTERNAL_SWEEPER_H_
