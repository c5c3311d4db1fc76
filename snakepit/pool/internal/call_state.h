// The shared state behind a Call handle. Not part of the public API.

#ifndef SNAKEPIT_POOL_INTERNAL_CALL_STATE_H_
#define SNAKEPIT_POOL_INTERNAL_CALL_STATE_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "snakepit/os/fd.h"
#include "snakepit/pool/pool.h"

namespace snakepit::internal {

class PoolCore;

using Deferred = std::vector<std::function<void()>>;

struct CallState {
  CallState(uint64_t id, std::string function, absl::Time deadline)
      : id(id), function(std::move(function)), deadline(deadline) {}

  // Fixed at construction.
  const uint64_t id;
  const std::string function;
  const absl::Time deadline;
  const absl::Time submitted = absl::Now();

  // Set when the call is handed to a worker; guarded by the pool's mu_,
  // stable once done.
  absl::Time dispatched = absl::InfinitePast();

  // Set by the pool before the call is visible to other threads.
  std::weak_ptr<PoolCore> pool;
  bool streams = false;  // the function is a generator
  std::string args;      // msgpack; owned by the pool until sent
  std::string session;   // empty: none
  Affinity affinity = Affinity::kHint;
  // The serial of the worker whose channel the submitting thread holds
  // for this call's reply (PoolCore::Submit with `reserve`); 0: none.
  // Guarded by the pool's mu_.
  uint32_t reserved_reader = 0;

  // Guarded by mu.
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  absl::Time finished = absl::InfinitePast();  // when done was set
  absl::Status status;
  std::string result;               // msgpack, when done and OK
  bool result_taken = false;        // Next() returned the result
  std::deque<std::string> chunks;   // streamed, not yet taken
  std::vector<std::function<void(const absl::Status&)>> callbacks;
  std::function<void(std::string)> chunk_callback;
  // Set while a waiting thread reads the worker's channel itself (see
  // PoolCore::Drive); Finish from any other thread wakes it through this.
  std::shared_ptr<const os::Waker> driver_wake;
  std::thread::id driver;

  // Mirrors `done` for lock-free checks.
  std::atomic<bool> done_flag{false};
  // A Next() waits: a thread driving the call stops at the next chunk.
  std::atomic<bool> want_chunk{false};

  // True when a waiting thread has what it waits for.
  bool WaiterCanReturn();

  // Chunks held for Get() are bounded by this many bytes (the pool's
  // payload limit), like a result; fixed before the call is visible.
  size_t max_buffered = SIZE_MAX;
  size_t buffered = 0;  // guarded by mu

  // Appends a streamed chunk unless the call has ended. False when the
  // chunks waiting to be taken would pass max_buffered: the caller is not
  // keeping up, and the pool ends the call.
  bool AddChunk(std::string chunk);

  // Ends the call once; later calls are ignored and return false. The
  // completion callbacks are appended to `deferred`, to run once the
  // caller holds no lock.
  bool Finish(absl::Status final_status, std::string final_result,
              Deferred* deferred);
};

// Runs deferred callbacks.
void RunDeferred(Deferred& deferred);

}  // namespace snakepit::internal

#endif  // SNAKEPIT_POOL_INTERNAL_CALL_STATE_H_
