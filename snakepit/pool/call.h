// The handle of one call submitted to a Pool.

#ifndef SNAKEPIT_POOL_CALL_H_
#define SNAKEPIT_POOL_CALL_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "snakepit/base/value.h"

namespace snakepit {

namespace internal {
struct CallState;
}  // namespace internal

// A call in flight: wait for it, cancel it, or read its stream.
//
// Copies share the same call. Thread-safe. Destroying every copy does not
// cancel the call; it runs to completion and its result is dropped.
class Call {
 public:
  // A call that has already failed with `status`.
  static Call Failed(absl::Status status);

  explicit Call(std::shared_ptr<internal::CallState> state);

  // The call's id, unique within the process.
  uint64_t id() const;

  // Waits for the end and decodes the result. A generator's result is the
  // array of everything it yielded that Next() did not take.
  absl::StatusOr<Value> Get() const&;
  absl::StatusOr<Value> Get() &&;

  // Waits for the end; the result as msgpack bytes, undecoded. On the
  // last handle of a call (`pool.SubmitRaw(...).GetRaw()`, or after
  // std::move) the result is moved out rather than copied, which for big
  // results saves a copy and its page faults.
  absl::StatusOr<std::string> GetRaw() const&;
  absl::StatusOr<std::string> GetRaw() &&;

  // Waits up to `timeout` for the end; true when it has ended.
  bool WaitFor(absl::Duration timeout) const;

  // True once the call has ended.
  bool Done() const;

  // Ends the call with CANCELLED unless it has already ended. A queued
  // call never runs; a running one is asked to stop, and its worker is
  // replaced if it does not stop within the pool's cancel grace. Safe to
  // call more than once and from any thread.
  void Cancel() const;

  // Runs `callback` once with the call's final status (OK on success),
  // at once if the call has ended. It runs on a pool thread and must
  // not block.
  void OnComplete(std::function<void(const absl::Status&)> callback) const;

  // Delivers every chunk not yet taken, then each new one as it comes,
  // to `callback` instead of Next(). Chunks arrive in order, one at a
  // time, on a pool thread; the callback must not block. Set it once.
  void OnChunk(std::function<void(std::string msgpack)> callback) const;

  // True when the function is a generator: its chunks are its output
  // (Next, OnChunk). A plain function's output is its result.
  bool Streams() const;

  // How long the call waited for a worker: until one took it, or its
  // whole life when it ended in the queue (cancelled, deadline, pool
  // closed); zero while it is still queued.
  absl::Duration QueueWait() const;

  // Streams: waits for the next chunk a generator yields. nullopt once
  // the stream has ended well; the call's error if it failed. A plain
  // function's result comes as one chunk.
  absl::StatusOr<std::optional<Value>> Next() const;

  // As Next(), undecoded msgpack bytes.
  absl::StatusOr<std::optional<std::string>> NextRaw() const;

 private:
  friend class Pool;  // hands a call's reading back (SubmitRawAndWait)

  std::shared_ptr<internal::CallState> state_;
};

}  // namespace snakepit

#endif  // SNAKEPIT_POOL_CALL_H_
