#include "snakepit/pool/call.h"

#include <algorithm>
#include <utility>

#include "snakepit/base/status.h"
#include "snakepit/pool/internal/call_state.h"
#include "snakepit/pool/internal/pool_core.h"

namespace snakepit {
namespace internal {

bool CallState::AddChunk(std::string chunk) {
  std::function<void(std::string)> callback;
  {
    std::lock_guard<std::mutex> lock(mu);
    if (done) {
      return true;
    }
    if (!chunk_callback) {
      // TODO(#3): a Next() reader slower than its generator is not
      // bounded; the worker's channel should stop being read instead.
      if (!want_chunk.load() && buffered + chunk.size() > max_buffered) {
        return false;
      }
      buffered += chunk.size();
      chunks.push_back(std::move(chunk));
      cv.notify_all();
      return true;
    }
    callback = chunk_callback;
  }
  // One reader handles a worker's frames at a time, so chunks of a call
  // reach the callback one after another, in order.
  callback(std::move(chunk));
  return true;
}

bool CallState::Finish(absl::Status final_status, std::string final_result,
                       Deferred* deferred) {
  std::vector<std::function<void(const absl::Status&)>> to_run;
  std::shared_ptr<const os::Waker> wake;
  {
    std::lock_guard<std::mutex> lock(mu);
    if (done) {
      return false;
    }
    done = true;
    finished = absl::Now();
    status = std::move(final_status);
    result = std::move(final_result);
    done_flag.store(true, std::memory_order_release);
    to_run.swap(callbacks);
    cv.notify_all();
    if (driver_wake && driver != std::this_thread::get_id()) {
      wake = driver_wake;
    }
  }
  if (wake) {
    wake->Wake();
  }
  for (auto& callback : to_run) {
    deferred->push_back(
        [callback = std::move(callback), s = status] { callback(s); });
  }
  return true;
}

bool CallState::WaiterCanReturn() {
  std::lock_guard<std::mutex> lock(mu);
  return done || (want_chunk.load() && !chunks.empty());
}

void RunDeferred(Deferred& deferred) {
  for (auto& fn : deferred) {
    fn();
  }
  deferred.clear();
}

namespace {

// A msgpack array header for `n` items.
std::string ArrayHeader(size_t n) {
  std::string out;
  if (n < 16) {
    out += static_cast<char>(0x90 | n);
  } else if (n < 65536) {
    out += static_cast<char>(0xdc);
    out += static_cast<char>(n >> 8);
    out += static_cast<char>(n & 0xff);
  } else {
    out += static_cast<char>(0xdd);
    for (int shift = 24; shift >= 0; shift -= 8) {
      out += static_cast<char>((n >> shift) & 0xff);
    }
  }
  return out;
}

}  // namespace
}  // namespace internal

Call Call::Failed(absl::Status status) {
  auto state = std::make_shared<internal::CallState>(0, "", absl::Now());
  internal::Deferred none;
  state->Finish(std::move(status), "", &none);
  return Call(std::move(state));
}

Call::Call(std::shared_ptr<internal::CallState> state)
    : state_(std::move(state)) {}

uint64_t Call::id() const { return state_->id; }

namespace {

// Lets the waiting thread read its worker's reply itself, which saves a
// thread handoff per call; returns when the call is done or the pool
// cannot hand over the reading (see PoolCore::Drive).
void Drive(const std::shared_ptr<internal::CallState>& state,
           absl::Time until) {
  if (state->WaiterCanReturn()) {
    return;
  }
  if (auto pool = state->pool.lock()) {
    pool->Drive(state, until);
  }
}

}  // namespace

absl::StatusOr<std::string> Call::GetRaw() const& {
  Drive(state_, absl::InfiniteFuture());
  std::unique_lock<std::mutex> lock(state_->mu);
  state_->cv.wait(lock, [&] { return state_->done; });
  if (!state_->status.ok()) {
    return state_->status;
  }
  if (!state_->streams) {
    return state_->result;
  }
  // A generator's result is what it yielded that Next() did not take;
  // the chunks are already msgpack, so the array is built without
  // decoding them.
  std::string out = internal::ArrayHeader(state_->chunks.size());
  for (const std::string& chunk : state_->chunks) {
    out += chunk;
  }
  return out;
}

absl::StatusOr<std::string> Call::GetRaw() && {
  Drive(state_, absl::InfiniteFuture());
  std::unique_lock<std::mutex> lock(state_->mu);
  state_->cv.wait(lock, [&] { return state_->done; });
  // Once the call is done the pool lets go of its state, so a count of
  // one means no other handle can read the result after this one.
  if (state_->status.ok() && !state_->streams && state_.use_count() == 1) {
    return std::move(state_->result);
  }
  lock.unlock();
  return static_cast<const Call&>(*this).GetRaw();
}

absl::StatusOr<Value> Call::Get() const& {
  absl::StatusOr<std::string> raw = GetRaw();
  if (!raw.ok()) {
    return raw.status();
  }
  return DecodeValue(*raw);
}

absl::StatusOr<Value> Call::Get() && {
  absl::StatusOr<std::string> raw = std::move(*this).GetRaw();
  if (!raw.ok()) {
    return raw.status();
  }
  return DecodeValue(*raw);
}

bool Call::WaitFor(absl::Duration timeout) const {
  const absl::Time until = absl::Now() + timeout;
  Drive(state_, until);
  std::unique_lock<std::mutex> lock(state_->mu);
  // What Drive used of the timeout is not waited again.
  absl::Duration left = std::max(until - absl::Now(), absl::ZeroDuration());
  return state_->cv.wait_for(lock, absl::ToChronoNanoseconds(left),
                             [&] { return state_->done; });
}

bool Call::Done() const {
  return state_->done_flag.load(std::memory_order_acquire);
}

void Call::Cancel() const {
  if (Done()) {
    return;
  }
  if (auto pool = state_->pool.lock()) {
    pool->Cancel(state_);
    return;
  }
  internal::Deferred deferred;
  state_->Finish(ReasonError(reason::kCancelled, "call cancelled"), "",
                 &deferred);
  internal::RunDeferred(deferred);
}

void Call::OnComplete(
    std::function<void(const absl::Status&)> callback) const {
  absl::Status status;
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    if (!state_->done) {
      state_->callbacks.push_back(std::move(callback));
      return;
    }
    status = state_->status;
  }
  callback(status);
}

void Call::OnChunk(std::function<void(std::string)> callback) const {
  std::deque<std::string> pending;
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    pending.swap(state_->chunks);
    state_->chunk_callback = callback;
  }
  for (std::string& chunk : pending) {
    callback(std::move(chunk));
  }
}

bool Call::Streams() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->streams;
}

absl::Duration Call::QueueWait() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  if (state_->dispatched != absl::InfinitePast()) {
    return state_->dispatched - state_->submitted;
  }
  if (state_->done) {
    return state_->finished - state_->submitted;  // it never left the queue
  }
  return absl::ZeroDuration();
}

absl::StatusOr<std::optional<std::string>> Call::NextRaw() const {
  state_->want_chunk.store(true);
  Drive(state_, absl::InfiniteFuture());
  std::unique_lock<std::mutex> lock(state_->mu);
  state_->cv.wait(lock,
                  [&] { return state_->done || !state_->chunks.empty(); });
  if (!state_->chunks.empty()) {
    std::string chunk = std::move(state_->chunks.front());
    state_->chunks.pop_front();
    state_->buffered -= chunk.size();
    return chunk;
  }
  if (!state_->status.ok()) {
    return state_->status;
  }
  if (!state_->streams && !state_->result_taken) {
    state_->result_taken = true;
    return state_->result;
  }
  return std::nullopt;
}

absl::StatusOr<std::optional<Value>> Call::Next() const {
  absl::StatusOr<std::optional<std::string>> raw = NextRaw();
  if (!raw.ok()) {
    return raw.status();
  }
  if (!raw->has_value()) {
    return std::optional<Value>();
  }
  absl::StatusOr<Value> value = DecodeValue(**raw);
  if (!value.ok()) {
    return value.status();
  }
  return std::optional<Value>(std::move(*value));
}

}  // namespace snakepit
