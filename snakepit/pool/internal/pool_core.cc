#include "snakepit/pool/internal/pool_core.h"

#include <poll.h>
#include <signal.h>
#include <sys/epoll.h>

#include <algorithm>
#include <cerrno>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "snakepit/base/log.h"
#include "snakepit/base/status.h"
#include "snakepit/os/process.h"

namespace snakepit::internal {
namespace {

using protocol::FrameType;

constexpr size_t kStderrTailBytes = 4096;
constexpr int kMaxOutputReadsPerEvent = 16;  // 256 KiB
constexpr size_t kMaxLogLine = 64 * 1024;

// A worker that closed its channel but lives on is killed after this.
constexpr absl::Duration kChannelClosedGrace = absl::Seconds(1);

std::string ShortDuration(absl::Duration d) {
  return absl::FormatDuration(absl::Trunc(d, absl::Milliseconds(1)));
}

std::string StringField(const Value& header, const char* key) {
  auto it = header.find(key);
  return it != header.end() && it->is_string() ? it->get<std::string>()
                                                : std::string();
}

// An integer field of a header; `fallback` when absent or not an
// integer. Worker headers are untrusted: a wrong type is never fatal.
int64_t IntField(const Value& header, const char* key, int64_t fallback) {
  auto it = header.find(key);
  if (it == header.end() || !it->is_number_integer()) {
    return fallback;
  }
  return it->get<int64_t>();
}

// The status an ERROR or FATAL header describes.
absl::Status ErrorFromHeader(const Value& header) {
  std::string why = StringField(header, "reason");
  std::string message = StringField(header, "message");
  PythonDetails details{StringField(header, "type"),
                        StringField(header, "traceback"),
                        StringField(header, "path")};
  if (why.empty()) {
    why = std::string(reason::kProtocolError);
    message = "worker sent an error without a reason: " + message;
  }
  if (why == reason::kPythonException && !details.type.empty()) {
    message = absl::StrCat(details.type, ": ", message);
  }
  absl::Status status = ReasonError(why, message);
  SetPythonDetails(status, details);
  return status;
}

// "(digits: int, seed: int = 0) -> list" from a catalogue entry.
std::string SignatureOf(const Value& entry) {
  std::vector<std::string> params;
  auto it = entry.find("params");
  if (it != entry.end() && it->is_array()) {
    for (const Value& p : *it) {
      std::string kind = StringField(p, "kind");
      std::string text = StringField(p, "name");
      if (kind == "var_positional") {
        text = "*" + text;
      } else if (kind == "var_keyword") {
        text = "**" + text;
      }
      std::string annotation = StringField(p, "annotation");
      if (!annotation.empty()) {
        absl::StrAppend(&text, ": ", annotation);
      }
      if (p.contains("default")) {
        absl::StrAppend(&text, " = ", StringField(p, "default"));
      }
      params.push_back(std::move(text));
    }
  }
  std::string out = absl::StrCat("(", absl::StrJoin(params, ", "), ")");
  std::string returns = StringField(entry, "returns");
  if (!returns.empty()) {
    absl::StrAppend(&out, " -> ", returns);
  }
  return out;
}

bool IsGeneratorKind(const std::string& kind) {
  return kind == "generator" || kind == "async_generator";
}

std::atomic<uint64_t> next_call_id{1};

// The pool whose worker this thread is reading in Drive, if any.
thread_local const PoolCore* driving = nullptr;

}  // namespace

PoolCore::PoolCore(PoolOptions options, worker::WorkerSpec spec,
                   os::Waker waker, os::UniqueFd epoll,
                   std::shared_ptr<worker::RunRegistry> registry)
    : options_(std::move(options)),
      spec_(std::move(spec)),
      waker_(std::move(waker)),
      epoll_(std::move(epoll)),
      registry_(std::move(registry)),
      jitter_state_(static_cast<uint64_t>(absl::ToUnixNanos(absl::Now())) |
                    1) {}

PoolCore::~PoolCore() { Shutdown(absl::ZeroDuration(), absl::Seconds(2)); }

absl::Status PoolCore::Start(bool wait) {
  Watch(waker_.fd(), kWaker);
  // Workers are spawned by the I/O thread only, at start as for
  // replacements: the worker arms a parent-death signal, which Linux ties
  // to the spawning *thread*, so the spawner must live as long as the
  // pool. The caller's thread may not.
  {
    std::lock_guard<std::mutex> lock(mu_);
    missing_ = options_.size;
    respawn_at_ = absl::Now();
  }
  io_thread_ = std::thread([this] { Loop(); });
  if (!wait) {
    return absl::OkStatus();
  }

  std::unique_lock<std::mutex> lock(mu_);
  // Each worker enforces its own ready deadline; this wait only guards
  // against a bug there.
  absl::Time limit = absl::Now() + options_.startup_timeout + absl::Seconds(5);
  auto all_ready = [&] {
    return !start_failure_.ok() || ReadyCountLocked() == options_.size;
  };
  changed_.wait_until(lock, absl::ToChronoTime(limit), all_ready);
  if (!start_failure_.ok()) {
    return start_failure_;
  }
  if (!all_ready()) {
    return ReasonError(reason::kWorkerStartFailed,
                       absl::StrCat("pool ", options_.name,
                                    " did not become ready"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<worker::WorkerProcess>>
PoolCore::NewProcess() {
  if (!options_.zygote) {
    return worker::WorkerProcess::Start(spec_);
  }
  if (zygote_ && !zygote_->alive()) {
    OnZygoteExit();
  }
  if (!zygote_) {
    // Blocks this thread for the modules' import (and each Fork for its
    // reply): deadlines, exits and Shutdown wait meanwhile. TODO(#5):
    // start and fork from a thread of their own.
    absl::StatusOr<std::unique_ptr<worker::Zygote>> zygote =
        worker::Zygote::Start(spec_, absl::Now() + options_.startup_timeout);
    if (!zygote.ok()) {
      return zygote.status();
    }
    zygote_ = std::move(*zygote);
    Watch(zygote_->pidfd(), kZygote);
    if (registry_) {
      (void)registry_->AddWorker(zygote_->pid());
    }
  }
  return zygote_->Fork(absl::Now() + options_.startup_timeout);
}

void PoolCore::OnZygoteExit() {
  if (!zygote_) {
    return;
  }
  // The zygote's own reader has logged its exit; its workers' exits
  // bring replacements, forked from a new zygote.
  Unwatch(zygote_->pidfd());
  pid_t pid = zygote_->pid();
  zygote_.reset();  // ends its workers' groups and reaps it
  if (registry_) {
    registry_->RemoveWorker(pid);
  }
}

absl::Status PoolCore::SpawnWorker() {
  absl::StatusOr<std::unique_ptr<worker::WorkerProcess>> process =
      NewProcess();
  if (!process.ok()) {
    return process.status();
  }
  absl::StatusOr<os::Waker> interrupt = os::Waker::Create();
  if (!interrupt.ok()) {
    (*process)->SignalGroup(SIGKILL);
    return interrupt.status();
  }
  if (registry_) {
    // NOT_FOUND: it died already; its exit is handled like any other.
    (void)registry_->AddWorker((*process)->pid());
  }
  auto w = std::make_shared<Worker>(options_.max_payload_bytes);
  w->interrupt = std::make_shared<const os::Waker>(std::move(*interrupt));
  w->process = std::move(*process);
  w->pid = w->process->pid();
  w->ready_deadline = absl::Now() + options_.startup_timeout;
  {
    std::lock_guard<std::mutex> lock(mu_);
    w->serial = next_serial_++;
    w->retry = start_failures_in_row_ > 0;
    workers_[w->serial] = w;
  }
  uint64_t base = static_cast<uint64_t>(w->serial) << 3;
  Watch(w->process->channel_fd(), base | kChannel, EPOLLIN | EPOLLET);
  Watch(w->process->control_fd(), base | kControl);
  Watch(w->process->stdout_fd(), base | kStdout);
  Watch(w->process->stderr_fd(), base | kStderr);
  Watch(w->process->pidfd(), base | kPidfd);
  waker_.Wake();  // the loop recomputes its timeout for the new deadline
  return absl::OkStatus();
}

void PoolCore::Watch(int fd, uint64_t tag, uint32_t events) {
  struct epoll_event event = {};
  event.events = events;
  event.data.u64 = tag;
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &event) != 0) {
    // Only a bug (a bad or duplicate fd) can get here.
    Log().critical("epoll_ctl add fd {}: {}", fd, std::strerror(errno));
    std::abort();
  }
}

void PoolCore::Unwatch(int fd) {
  if (fd >= 0) {
    ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, fd, nullptr);
  }
}

std::shared_ptr<PoolCore::Worker> PoolCore::Find(uint32_t serial) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = workers_.find(serial);
  return it == workers_.end() ? nullptr : it->second;
}

// ---------------------------------------------------------------------------
// Submitting and cancelling.

Call PoolCore::Submit(std::string_view function, std::string args,
                      const std::string* borrowed,
                      const CallOptions& options, bool reserve) {
  absl::Time deadline = options.timeout == absl::InfiniteDuration()
                            ? absl::InfiniteFuture()
                            : absl::Now() + options.timeout;
  auto call = std::make_shared<CallState>(next_call_id.fetch_add(1),
                                          std::string(function), deadline);
  call->pool = weak_from_this();
  call->max_buffered = options_.max_payload_bytes;
  const size_t size = borrowed != nullptr ? borrowed->size() : args.size();
  if (size > options_.max_payload_bytes) {
    return Call::Failed(ReasonError(
        reason::kPayloadTooLarge,
        absl::StrCat("arguments of ", size, " bytes exceed the ",
                     options_.max_payload_bytes,
                     "-byte payload limit (host→worker)")));
  }
  call->args = std::move(args);
  call->session = options.session;
  call->affinity = options.affinity;
  if (!call->session.empty()) {
    if (!options_.sessions) {
      return Call::Failed(MakeError(
          absl::StatusCode::kFailedPrecondition, "no_session_store",
          absl::StrCat("pool ", options_.name, " has no session store")));
    }
    // A call in a session counts as its use: the session cannot expire
    // under it.
    if (absl::Status s = options_.sessions->Touch(call->session); !s.ok()) {
      return Call::Failed(s);
    }
  }

  std::shared_ptr<Worker> w;
  absl::Status placed = Place(call, /*may_queue=*/borrowed == nullptr, &w);
  if (placed.ok() && w == nullptr && borrowed != nullptr) {
    // No worker is free, so the call waits in the queue beyond this
    // return and needs its own copy of the arguments. The copy is made
    // outside mu_, then the call is placed afresh.
    call->args = *borrowed;
    borrowed = nullptr;
    placed = Place(call, /*may_queue=*/true, &w);
  }
  if (!placed.ok()) {
    return Call::Failed(placed);
  }
  if (w) {
    SendCall(w, call, borrowed, reserve);
  }
  if (deadline != absl::InfiniteFuture() &&
      absl::ToUnixNanos(deadline) < next_wake_ns_.load()) {
    waker_.Wake();
  }
  return Call(call);
}

absl::Status PoolCore::Place(const std::shared_ptr<CallState>& call,
                             bool may_queue, std::shared_ptr<Worker>* w) {
  std::lock_guard<std::mutex> lock(mu_);
  if (closed_) {
    return ReasonError(reason::kPoolClosed, absl::StrCat("pool ",
                                                         options_.name,
                                                         " is shutting down"));
  }
  if (catalogue_known_) {
    auto it = catalogue_.find(call->function);
    if (it == catalogue_.end()) {
      return ReasonError(
          reason::kUnknownFunction,
          absl::StrCat("no function ", call->function, " in pool ",
                       options_.name, " (", catalogue_.size(),
                       " functions; `snakepit fn list` shows them)"));
    }
    call->streams = IsGeneratorKind(it->second.kind);
  }
  if (DegradedLocked()) {
    return DegradedErrorLocked();
  }
  absl::Status refusal;
  *w = TakeIdleLocked(*call, &refusal);
  if (!refusal.ok()) {
    return refusal;
  }
  if (*w) {
    AssignLocked(**w, call);
    return absl::OkStatus();
  }
  if (!may_queue) {
    return absl::OkStatus();
  }
  if (queue_.size() >= options_.max_queue) {
    return ReasonError(
        reason::kQueueFull,
        absl::StrCat("pool ", options_.name, " has ", queue_.size(),
                     " calls waiting, its queue limit"));
  }
  queue_.push_back(call);
  return absl::OkStatus();
}

void PoolCore::Cancel(const std::shared_ptr<CallState>& call) {
  Deferred deferred;
  {
    std::lock_guard<std::mutex> lock(mu_);
    absl::Status cancelled = ReasonError(reason::kCancelled, "call cancelled");
    call->Finish(cancelled, "", &deferred);
    auto queued = std::find(queue_.begin(), queue_.end(), call);
    if (queued != queue_.end()) {
      queue_.erase(queued);
    }
    for (auto& [serial, w] : workers_) {
      if (RunningLocked(*w, call->id) == call) {
        AbandonLocked(*w, call->id);
      }
    }
  }
  RunDeferred(deferred);
}

std::shared_ptr<PoolCore::Worker> PoolCore::TakeIdleLocked(
    const CallState& call, absl::Status* refusal) {
  // Drop entries of workers that no longer have a free slot.
  std::erase_if(idle_, [](const std::shared_ptr<Worker>& w) {
    return !HasFreeSlotLocked(*w);
  });
  std::shared_ptr<Worker> pinned;
  bool pinned_alive = false;
  if (!call.session.empty()) {
    auto it = affinity_.find(call.session);
    if (it != affinity_.end()) {
      auto found = workers_.find(it->second);
      pinned_alive = found != workers_.end();
      if (pinned_alive) {
        pinned = found->second;
      }
    }
  }
  if (pinned && HasFreeSlotLocked(*pinned)) {
    if (static_cast<int>(pinned->running.size()) + 1 >= pinned->slots) {
      std::erase(idle_, pinned);
    }
    return pinned;
  }
  if (call.affinity == Affinity::kStrictFail && pinned) {
    *refusal = MakeError(
        absl::StatusCode::kUnavailable, "session_worker_busy",
        absl::StrCat("worker ", pinned->pid, " that holds session ",
                     call.session, " is busy (affinity strict-fail)"));
    return nullptr;
  }
  if (call.affinity == Affinity::kStrictFail && !call.session.empty() &&
      affinity_.contains(call.session) && !pinned_alive) {
    *refusal = MakeError(
        absl::StatusCode::kFailedPrecondition, "session_worker_lost",
        absl::StrCat("the worker that held session ", call.session,
                     " is gone, and its local objects with it (affinity "
                     "strict-fail)"));
    return nullptr;
  }
  if (call.affinity == Affinity::kStrictQueue && pinned) {
    return nullptr;  // wait in the queue for the pinned worker
  }
  if (idle_.empty()) {
    return nullptr;
  }
  // The least loaded worker; among equals the one freed last, whose
  // memory is warmest. A worker due for recycling comes last: it serves
  // only while the others are busy.
  auto load = [](const Worker& w) {
    return w.running.size() + (w.replaced_for.empty() ? 0 : 1000);
  };
  auto best = idle_.end() - 1;
  for (auto it = idle_.begin(); it != idle_.end(); ++it) {
    if (load(**it) < load(**best)) {
      best = it;
    }
  }
  std::shared_ptr<Worker> w = *best;
  if (static_cast<int>(w->running.size()) + 1 >= w->slots) {
    idle_.erase(best);
  }
  return w;
}

bool PoolCore::HasFreeSlotLocked(const Worker& w) {
  return (w.state == WorkerState::kIdle || w.state == WorkerState::kBusy) &&
         !w.retiring && w.abandoned == 0 &&
         static_cast<int>(w.running.size()) < w.slots;
}

std::shared_ptr<CallState> PoolCore::RunningLocked(const Worker& w,
                                                   uint64_t id) {
  for (const auto& [running_id, call] : w.running) {
    if (running_id == id) {
      return call;
    }
  }
  return nullptr;
}

bool PoolCore::MayRunOnLocked(const CallState& call, const Worker& w) const {
  if (call.affinity != Affinity::kStrictQueue || call.session.empty()) {
    return true;
  }
  auto it = affinity_.find(call.session);
  return it == affinity_.end() || it->second == w.serial ||
         !workers_.contains(it->second);
}

void PoolCore::AssignLocked(Worker& w, const std::shared_ptr<CallState>& call) {
  w.state = WorkerState::kBusy;
  w.running.emplace_back(call->id, call);
  if (!call->session.empty()) {
    affinity_[call->session] = w.serial;
    w.sessions_held.insert(call->session);
  }
  {
    std::lock_guard<std::mutex> lock(call->mu);
    call->dispatched = absl::Now();
  }
  if (catalogue_known_) {
    auto it = catalogue_.find(call->function);
    call->streams = it != catalogue_.end() && IsGeneratorKind(it->second.kind);
  }
}

void PoolCore::DispatchQueuedLocked(const std::shared_ptr<Worker>& w,
                                    Deferred* deferred, CallList* to_send) {
  w->state = w->running.empty() ? WorkerState::kIdle : WorkerState::kBusy;
  absl::Time now = absl::Now();
  for (auto it = queue_.begin();
       it != queue_.end() && HasFreeSlotLocked(*w);) {
    if (!(*it)->done_flag.load() && (*it)->deadline > now &&
        !MayRunOnLocked(**it, *w)) {
      ++it;  // waits for the worker its session is pinned to
      continue;
    }
    std::shared_ptr<CallState> call = std::move(*it);
    it = queue_.erase(it);
    if (call->done_flag.load()) {
      continue;
    }
    if (call->deadline <= now) {
      call->Finish(QueueDeadlineError(*call), "", deferred);
      continue;
    }
    if (catalogue_known_ && !catalogue_.contains(call->function)) {
      call->Finish(ReasonError(reason::kUnknownFunction,
                               absl::StrCat("no function ", call->function,
                                            " in pool ", options_.name)),
                   "", deferred);
      continue;
    }
    AssignLocked(*w, call);
    to_send->push_back(std::move(call));
  }
  if (HasFreeSlotLocked(*w) &&
      std::find(idle_.begin(), idle_.end(), w) == idle_.end()) {
    idle_.push_back(w);
  }
}

void PoolCore::SettleLocked(const std::shared_ptr<Worker>& w,
                            Deferred* deferred, CallList* to_send) {
  if (w->state == WorkerState::kExited ||
      w->state == WorkerState::kStarting) {
    return;
  }
  if (w->retiring) {
    SayGoodbyeIfDoneLocked(*w);
    return;
  }
  if (w->abandoned > 0) {
    w->state = WorkerState::kStopping;  // no new calls until they answer
    return;
  }
  if (closed_) {
    w->state = w->running.empty() ? WorkerState::kIdle : WorkerState::kBusy;
    return;
  }
  if (w->replaced_for.empty()) {
    std::string recycle = RecycleReasonLocked(*w);
    if (recycle == "recycle_memory") {
      // Over its memory budget: it takes no more calls, and its
      // replacement starts as it goes.
      ReplaceLocked(*w, recycle);
      RetireLocked(*w, recycle);
      return;
    }
    if (!recycle.empty()) {
      ReplaceLocked(*w, recycle);  // it serves on until that is ready
    }
  }
  DispatchQueuedLocked(w, deferred, to_send);
}

void PoolCore::SendCalls(const std::shared_ptr<Worker>& w,
                         const CallList& calls) {
  for (const std::shared_ptr<CallState>& call : calls) {
    SendCall(w, call);
  }
}

void PoolCore::SendCall(const std::shared_ptr<Worker>& w,
                        const std::shared_ptr<CallState>& call,
                        const std::string* borrowed, bool reserve) {
  // A worker on this CPU may answer before Submit returns; its reply must
  // not wake the I/O thread when this thread is about to read it anyway.
  if (reserve) {
    bool took = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!w->reader_busy && w->channel_open.load() && !stop_.load()) {
        w->reader_busy = true;
        call->reserved_reader = w->serial;
        took = true;
      }
    }
    if (took) {
      SetChannelInterest(*w, false);
    }
  }

  protocol::HeaderWriter header;
  bool bounded = call->deadline != absl::InfiniteFuture();
  bool in_session = !call->session.empty();
  header.MapHeader(1 + (bounded ? 1 : 0) + (in_session ? 1 : 0));
  header.String("fn");
  header.String(call->function);
  if (in_session) {
    header.String("session");
    header.String(call->session);
  }
  if (bounded) {
    absl::Duration left = call->deadline - absl::Now();
    header.String("timeout_ms");
    header.Uint(std::max<int64_t>(1, absl::ToInt64Milliseconds(left)));
  }
  // Owned arguments leave the call, so that their memory is released
  // once they are sent.
  std::string owned = std::move(call->args);
  std::string_view args = borrowed != nullptr ? *borrowed : owned;
  absl::Status sent = w->process->Send(FrameType::kCall, call->id,
                                       header.data(), args, call->deadline);
  if (sent.ok()) {
    return;
  }

  // Part of the frame may be on the wire, so the channel is no longer
  // trustworthy: the worker is killed and replaced.
  Deferred deferred;
  {
    std::lock_guard<std::mutex> lock(mu_);
    absl::Status failure =
        absl::IsDeadlineExceeded(sent)
            ? ReasonError(reason::kDeadlineExceeded,
                          absl::StrCat("deadline passed while sending the "
                                       "call to worker ", w->pid))
            : ReasonError(reason::kWorkerCrashed,
                          absl::StrCat("cannot send the call to worker ",
                                       w->pid, ": ", sent.message()));
    call->Finish(failure, "", &deferred);
    std::erase_if(w->running,
                  [&](const auto& entry) { return entry.second == call; });
    w->process->SignalGroup(SIGKILL);
  }
  RunDeferred(deferred);
}

void PoolCore::AbandonLocked(Worker& w, uint64_t id) {
  for (auto& [running_id, call] : w.running) {
    if (running_id == id && call) {
      call = nullptr;
      ++w.abandoned;
    }
  }
  w.state = WorkerState::kStopping;
  w.kill_at = std::min(w.kill_at, absl::Now() + options_.cancel_grace);
  // A failed send means the worker is dying; its exit is handled anyway.
  (void)w.process->SendControl(FrameType::kCancel, id);
  if (!OnIoThread()) {
    waker_.Wake();  // its timer must cover kill_at
  }
}

// ---------------------------------------------------------------------------
// The I/O loop.

void PoolCore::Loop() {
  constexpr int kMaxEvents = 64;
  struct epoll_event events[kMaxEvents];
  while (!stop_.load()) {
    int timeout_ms = NextTimeoutMs();
    int n = ::epoll_wait(epoll_.get(), events, kMaxEvents, timeout_ms);
    if (n < 0 && errno != EINTR) {
      Log().critical("epoll_wait: {}", std::strerror(errno));
      std::abort();
    }
    Deferred deferred;
    for (int i = 0; i < n; ++i) {
      OnEvent(events[i].data.u64, events[i].events, &deferred);
    }
    std::vector<uint32_t> recheck;
    {
      std::lock_guard<std::mutex> lock(mu_);
      recheck.swap(recheck_);
    }
    for (uint32_t serial : recheck) {
      if (std::shared_ptr<Worker> w = Find(serial)) {
        OnChannelEvent(w, &deferred);
      }
    }
    bool respawn = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      absl::Time now = absl::Now();
      ExpireLocked(now, &deferred);
      respawn = missing_ > 0 && now >= respawn_at_ && !closed_;
    }
    RunDeferred(deferred);
    if (respawn) {
      RespawnMissing();
    }
  }
}

int PoolCore::NextTimeoutMs() {
  absl::Time next = absl::InfiniteFuture();
  bool busy = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& call : queue_) {
      next = std::min(next, call->deadline);
    }
    for (const auto& [serial, w] : workers_) {
      for (const auto& [id, call] : w->running) {
        if (call) {
          next = std::min(next, call->deadline);
        }
      }
      next = std::min({next, w->kill_at, w->ready_deadline});
      if (w->state == WorkerState::kIdle) {
        next = std::min({next, w->next_ping, w->pong_due});
        if (w->replaced_for.empty() &&
            options_.max_worker_age != absl::InfiniteDuration()) {
          next = std::min(next, w->started + options_.max_worker_age);
        }
      } else if (w->state == WorkerState::kBusy) {
        busy = true;
      }
    }
    if (missing_ > 0) {
      next = std::min(next, respawn_at_);
    }
  }
  // A busy worker is due a ping one interval after its call ends, which
  // a caller reading its own reply (Drive) does not tell this loop. So
  // the loop looks again at least once per interval while any worker is
  // busy; else every such call would have to wake it.
  if (busy) {
    next = std::min(next, absl::Now() + options_.liveness_interval);
  }
  if (next == absl::InfiniteFuture()) {
    next_wake_ns_.store(std::numeric_limits<int64_t>::max());
    return -1;
  }
  next_wake_ns_.store(absl::ToUnixNanos(next));
  absl::Duration left = next - absl::Now();
  if (left <= absl::ZeroDuration()) {
    return 0;
  }
  return static_cast<int>(
      std::min<int64_t>(absl::ToInt64Milliseconds(absl::Ceil(
                            left, absl::Milliseconds(1))),
                        60'000));
}

void PoolCore::OnEvent(uint64_t tag, uint32_t events, Deferred* deferred) {
  if ((tag & 7) == kWaker) {
    waker_.Drain();
    return;
  }
  if ((tag & 7) == kZygote) {
    OnZygoteExit();
    return;
  }
  std::shared_ptr<Worker> w = Find(static_cast<uint32_t>(tag >> 3));
  if (!w) {
    return;  // an event already queued for a worker that has gone
  }
  switch (tag & 7) {
    case kChannel:
      OnChannelEvent(w, deferred);
      break;
    case kControl:
      ReadControl(*w);
      break;
    case kStdout:
      PumpOutput(*w, false);
      break;
    case kStderr:
      PumpOutput(*w, true);
      break;
    case kPidfd:
      OnExit(w, deferred);
      break;
  }
  (void)events;
}

// ---------------------------------------------------------------------------
// Frames from workers.

bool PoolCore::AcquireReader(Worker& w) {
  std::lock_guard<std::mutex> lock(mu_);
  if (w.reader_busy) {
    w.missed_event = true;
    return false;
  }
  w.reader_busy = true;
  return true;
}

void PoolCore::ReleaseReader(const std::shared_ptr<Worker>& w) {
  bool hand_over = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    w->reader_busy = false;
    // An event the I/O thread took while another thread held the reader
    // (see Drive) is handed back to it.
    hand_over = std::exchange(w->missed_event, false);
    if (hand_over) {
      recheck_.push_back(w->serial);
    }
    changed_.notify_all();
  }
  if (hand_over) {
    waker_.Wake();
  }
}

void PoolCore::SetChannelInterest(const Worker& w, bool interested) {
  struct epoll_event event = {};
  event.events = interested ? (EPOLLIN | EPOLLET) : 0;
  event.data.u64 = (static_cast<uint64_t>(w.serial) << 3) | kChannel;
  // ENOENT after the channel was closed and removed is fine.
  ::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, w.process->channel_fd(), &event);
}

void PoolCore::OnChannelEvent(const std::shared_ptr<Worker>& w,
                              Deferred* deferred) {
  if (!AcquireReader(*w)) {
    return;  // a driving thread reads it and hands over what it leaves
  }
  ReadChannel(w, deferred);
  ReleaseReader(w);
}

bool PoolCore::DrivingOnThisThread() const { return driving == this; }

std::shared_ptr<PoolCore::Worker> PoolCore::TakeReservation(
    CallState& call) {
  std::lock_guard<std::mutex> lock(mu_);
  uint32_t serial = std::exchange(call.reserved_reader, 0);
  if (serial == 0) {
    return nullptr;
  }
  // A worker whose reader is held is not removed (OnExit waits for it).
  auto it = workers_.find(serial);
  return it == workers_.end() ? nullptr : it->second;
}

void PoolCore::ReleaseReservation(const std::shared_ptr<CallState>& call) {
  std::shared_ptr<Worker> w = TakeReservation(*call);
  if (!w) {
    return;
  }
  ReleaseReader(w);
  if (w->channel_open.load()) {
    SetChannelInterest(*w, true);
  }
}

void PoolCore::Drive(const std::shared_ptr<CallState>& call,
                     absl::Time until) {
  std::shared_ptr<Worker> w = TakeReservation(*call);
  if (!w) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (auto& [serial, candidate] : workers_) {
        if (RunningLocked(*candidate, call->id) == call) {
          w = candidate;
          break;
        }
      }
      if (!w || w->reader_busy || !w->channel_open.load() || stop_.load()) {
        return;
      }
      w->reader_busy = true;
    }
    // While this thread reads the channel, the I/O thread is not woken
    // for it: a wakeup per call on the same CPU would cost more than the
    // two epoll_ctl calls. Re-arming at the end raises an event at once
    // if bytes are left, so nothing is stranded.
    SetChannelInterest(*w, false);
  }
  {
    std::lock_guard<std::mutex> lock(call->mu);
    call->driver_wake = w->interrupt;
    call->driver = std::this_thread::get_id();
  }

  Deferred deferred;
  const PoolCore* outer = std::exchange(driving, this);
  absl::Time limit = std::min(until, call->deadline);
  while (!call->WaiterCanReturn() && w->channel_open.load()) {
    struct pollfd fds[3] = {{w->process->channel_fd(), POLLIN, 0},
                            {w->process->pidfd(), POLLIN, 0},
                            {w->interrupt->fd(), POLLIN, 0}};
    int ms = -1;
    if (limit != absl::InfiniteFuture()) {
      absl::Duration left = limit - absl::Now();
      if (left <= absl::ZeroDuration()) {
        break;  // the I/O thread enforces the deadline
      }
      ms = static_cast<int>(absl::ToInt64Milliseconds(
          absl::Ceil(left, absl::Milliseconds(1))));
    }
    int n = ::poll(fds, 3, ms);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      break;
    }
    if (fds[2].revents != 0) {
      w->interrupt->Drain();
    }
    if (fds[0].revents != 0) {
      ReadChannel(w, &deferred, /*once=*/true);
    }
    if (fds[1].revents != 0) {
      break;  // the worker exited: the I/O thread's OnExit takes over
    }
  }

  {
    std::lock_guard<std::mutex> lock(call->mu);
    call->driver_wake = nullptr;
  }
  driving = outer;
  ReleaseReader(w);
  if (w->channel_open.load()) {
    SetChannelInterest(*w, true);
  }
  RunDeferred(deferred);
}

void PoolCore::ReadChannel(const std::shared_ptr<Worker>& w,
                           Deferred* deferred, bool once) {
  if (!w->channel_open) {
    return;
  }
  bool eof = false;
  absl::Status status =
      w->reader.ReadFrom(w->process->channel_fd(), &eof, once);
  auto& frames = w->reader.frames();
  while (!frames.empty()) {
    protocol::Frame frame = std::move(frames.front());
    frames.pop_front();
    HandleFrame(w, frame, deferred);
  }
  if (!status.ok()) {
    if (ReasonOf(status) != reason::kPayloadTooLarge) {
      status = ReasonError(reason::kProtocolError,
                           absl::StrCat("worker ", w->pid, " sent a "
                                        "malformed frame: ",
                                        status.message()));
    }
    KillBroken(*w, status, deferred);
  }
  if (!status.ok() || eof) {
    Unwatch(w->process->channel_fd());
    w->channel_open = false;
    std::lock_guard<std::mutex> lock(mu_);
    w->kill_at = std::min(w->kill_at, absl::Now() + kChannelClosedGrace);
  }
}

void PoolCore::ReadControl(Worker& w) {
  bool eof = false;
  absl::Status status =
      w.control_reader.ReadFrom(w.process->control_fd(), &eof);
  // PONG is the only frame a worker sends here: the worker is alive.
  if (!w.control_reader.frames().empty()) {
    std::lock_guard<std::mutex> lock(mu_);
    w.pong_due = absl::InfiniteFuture();
  }
  w.control_reader.frames().clear();
  if (!status.ok() || eof) {
    Unwatch(w.process->control_fd());
  }
}

void PoolCore::HandleFrame(const std::shared_ptr<Worker>& w,
                           protocol::Frame& frame, Deferred* deferred) {
  // Headers come from an untrusted process; a value of an unexpected
  // type in any of them is a protocol error of that worker, never the
  // end of the host.
  try {
    HandleFrameUnchecked(w, frame, deferred);
  } catch (const Value::exception& e) {
    KillBroken(*w,
               ReasonError(reason::kProtocolError,
                           absl::StrCat("worker ", w->pid,
                                        " sent a malformed header: ",
                                        e.what())),
               deferred);
  }
}

void PoolCore::HandleFrameUnchecked(const std::shared_ptr<Worker>& w,
                                    protocol::Frame& frame,
                                    Deferred* deferred) {
  switch (frame.type) {
    case FrameType::kHello: {
      absl::StatusOr<Value> header = protocol::DecodeHeader(frame.header);
      if (!header.ok() ||
          IntField(*header, "protocol", -1) != protocol::kProtocolVersion) {
        KillBroken(*w,
                   ReasonError(reason::kProtocolError,
                               absl::StrCat("worker ", w->pid,
                                            " does not speak protocol ",
                                            protocol::kProtocolVersion)),
                   deferred);
        return;
      }
      Log().debug("pool {} worker {}: Python {}, codec {}, small calls by "
                  "the {} loop", options_.name, w->pid,
                  StringField(*header, "python"),
                  StringField(*header, "codec"),
                  StringField(*header, "small_calls"));
      return;
    }
    case FrameType::kReady:
      HandleReady(w, frame, deferred);
      return;
    case FrameType::kFatal: {
      absl::StatusOr<Value> header = protocol::DecodeHeader(frame.header);
      std::lock_guard<std::mutex> lock(mu_);
      w->fatal = header.ok() ? ErrorFromHeader(*header) : header.status();
      return;
    }
    case FrameType::kResult:
    case FrameType::kError:
      HandleFinal(w, frame, deferred);
      return;
    case FrameType::kChunk: {
      std::shared_ptr<CallState> call;
      {
        std::lock_guard<std::mutex> lock(mu_);
        call = RunningLocked(*w, frame.id);
      }
      // Outside mu_: a chunk callback may call back into the pool.
      if (call && !call->AddChunk(std::move(frame.body))) {
        std::lock_guard<std::mutex> lock(mu_);
        call->Finish(
            ReasonError(reason::kPayloadTooLarge,
                        absl::StrCat("a generator's output held for Get() "
                                     "exceeds the ",
                                     options_.max_payload_bytes,
                                     "-byte payload limit; read it with "
                                     "Next() or as a stream")),
            "", deferred);
        if (RunningLocked(*w, frame.id) == call) {
          AbandonLocked(*w, frame.id);
        }
      }
      return;
    }
    case FrameType::kLog:
      HandleLog(*w, frame);
      return;
    case FrameType::kSessionRead:
    case FrameType::kSessionWrite:
      HandleSessionOp(*w, frame);
      return;
    default:
      KillBroken(*w,
                 ReasonError(reason::kProtocolError,
                             absl::StrCat("worker ", w->pid,
                                          " sent frame type ",
                                          static_cast<int>(frame.type),
                                          " on its channel")),
                 deferred);
  }
}

void PoolCore::HandleReady(const std::shared_ptr<Worker>& w,
                           const protocol::Frame& frame, Deferred* deferred) {
  absl::StatusOr<Value> header = protocol::DecodeHeader(frame.header);
  if (!header.ok() || !header->contains("functions") ||
      !(*header)["functions"].is_array()) {
    KillBroken(*w,
               ReasonError(reason::kProtocolError,
                           absl::StrCat("worker ", w->pid,
                                        " sent a READY without a catalogue")),
               deferred);
    return;
  }
  CallList to_send;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (w->state != WorkerState::kStarting) {
      return;
    }
    w->slots = static_cast<int>(std::clamp<int64_t>(
        IntField(*header, "max_concurrency", 1), 1,
        std::max(1, options_.max_concurrency)));
    if (!catalogue_known_) {
      for (const Value& entry : (*header)["functions"]) {
        FunctionInfo info{StringField(entry, "name"),
                          StringField(entry, "kind"),
                          StringField(entry, "doc"), SignatureOf(entry),
                          entry};
        catalogue_[info.name] = std::move(info);
      }
      catalogue_known_ = true;
    }
    w->ready_deadline = absl::InfiniteFuture();
    RetireReplacedLocked();
    if (!last_start_failure_.ok()) {
      Log().info("pool {} is ready again: worker {} started after {} "
                 "failed attempts",
                 options_.name, w->pid, start_failures_in_row_);
    }
    start_failures_in_row_ = 0;
    last_start_failure_ = absl::OkStatus();
    w->over_memory_at_ready = !MemoryOverLimit(w->pid).empty();
    w->next_ping = absl::Now() + options_.liveness_interval;
    if (!closed_) {
      DispatchQueuedLocked(w, deferred, &to_send);
    } else {
      w->state = WorkerState::kIdle;
    }
    changed_.notify_all();
  }
  Log().debug("pool {} worker {} ready", options_.name, w->pid);
  SendCalls(w, to_send);
}

void PoolCore::HandleFinal(const std::shared_ptr<Worker>& w,
                           protocol::Frame& frame, Deferred* deferred) {
  absl::Status status;
  if (frame.type == FrameType::kError) {
    absl::StatusOr<Value> header = protocol::DecodeHeader(frame.header);
    status = header.ok() ? ErrorFromHeader(*header) : header.status();
  }
  CallList to_send;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = std::find_if(w->running.begin(), w->running.end(),
                           [&](const auto& e) { return e.first == frame.id; });
    if (frame.id == 0 || it == w->running.end()) {
      // A late reply to a call that has moved on: never hand it on.
      return;
    }
    std::shared_ptr<CallState> call = std::move(it->second);
    w->running.erase(it);
    if (call) {
      call->Finish(status, std::move(frame.body), deferred);
    } else if (--w->abandoned == 0 && !w->retiring) {
      w->kill_at = absl::InfiniteFuture();  // it stopped in time
    }
    ++w->calls_served;
    SettleLocked(w, deferred, &to_send);
    w->next_ping = absl::Now() + options_.liveness_interval;
    w->pong_due = absl::InfiniteFuture();
    changed_.notify_all();
  }
  // On a driving thread, the I/O thread may be asleep with no timer for
  // this worker's next ping (it was busy): wake it if it would be late
  // by more than an interval, which happens about once per interval.
  if (!OnIoThread() &&
      next_wake_ns_.load() >
          absl::ToUnixNanos(absl::Now() + 2 * options_.liveness_interval)) {
    waker_.Wake();
  }
  FlushSessionEnds(w);
  SendCalls(w, to_send);
}

std::string PoolCore::RecycleReasonLocked(Worker& w) {
  for (const auto& [serial, other] : workers_) {
    if (other->retiring || !other->replaced_for.empty()) {
      return "";  // one at a time: the pool never loses two at once
    }
  }
  if (options_.max_calls_per_worker > 0 &&
      w.calls_served >= options_.max_calls_per_worker) {
    return "recycle_calls";
  }
  if (absl::Now() - w.started >= options_.max_worker_age) {
    return "recycle_age";
  }
  if (std::string over = MemoryOverLimit(w.pid); !over.empty()) {
    if (w.over_memory_at_ready) {
      // A fresh worker is already over the limit: recycling would only
      // churn. Say so once per worker and let it serve.
      if (memory_reported_.insert(w.serial).second) {
        Log().warn("pool {} worker {} was over a memory limit when it "
                   "became ready ({}); not recycling it",
                   options_.name, w.pid, over);
      }
      return "";
    }
    return "recycle_memory";
  }
  return "";
}

std::string PoolCore::MemoryOverLimit(pid_t pid) const {
  if (options_.max_worker_rss_bytes == 0 &&
      options_.max_worker_pss_bytes == 0) {
    return "";
  }
  absl::StatusOr<os::TreeMemory> memory = os::ReadTreeMemory(pid);
  if (!memory.ok()) {
    return "";  // it exited; its exit is handled elsewhere
  }
  auto over = [](uint64_t have, uint64_t limit) {
    return limit > 0 && have > limit;
  };
  if (over(memory->rss_bytes, options_.max_worker_rss_bytes)) {
    return absl::StrCat("RSS ", memory->rss_bytes, " bytes in ",
                        memory->processes, " processes, limit ",
                        options_.max_worker_rss_bytes);
  }
  if (over(memory->pss_bytes, options_.max_worker_pss_bytes)) {
    return absl::StrCat("PSS ", memory->pss_bytes, " bytes in ",
                        memory->processes, " processes, limit ",
                        options_.max_worker_pss_bytes);
  }
  return "";
}

void PoolCore::ReplaceLocked(Worker& w, const std::string& reason) {
  w.replaced_for = reason;
  ++missing_;
  respawn_at_ = std::min(respawn_at_, absl::Now());
  waker_.Wake();  // this may run on a caller's thread (Drive)
  Log().info("pool {} worker {} is due for recycling ({}) after {} calls; "
             "starting its replacement",
             options_.name, w.pid, reason, w.calls_served);
}

void PoolCore::RetireReplacedLocked() {
  for (auto& [serial, w] : workers_) {
    if (!w->replaced_for.empty() && !w->retiring &&
        w->state != WorkerState::kExited) {
      RetireLocked(*w, w->replaced_for);
      return;
    }
  }
}

void PoolCore::RetireLocked(Worker& w, const std::string& reason) {
  w.retiring = true;
  w.exit_reason = reason;
  w.state = WorkerState::kStopping;
  w.goodbye_due = true;
  SayGoodbyeIfDoneLocked(w);
  Log().info("pool {} worker {} retires ({}) after {} calls",
             options_.name, w.pid, reason, w.calls_served);
}

void PoolCore::SayGoodbyeIfDoneLocked(Worker& w) {
  if (!w.running.empty() || !std::exchange(w.goodbye_due, false)) {
    return;  // its calls finish first; SettleLocked comes back here
  }
  w.kill_at = absl::Now() + options_.cancel_grace + absl::Seconds(5);
  (void)w.process->Send(FrameType::kGoodbye, 0, "", "",
                        absl::Now() + absl::Seconds(1));
}

void PoolCore::HandleLog(Worker& w, const protocol::Frame& frame) {
  absl::StatusOr<Value> header = protocol::DecodeHeader(frame.header);
  if (!header.ok()) {
    return;
  }
  int64_t level = IntField(*header, "level", 20);
  auto spd_level = level >= 40   ? spdlog::level::err
                   : level >= 30 ? spdlog::level::warn
                   : level >= 20 ? spdlog::level::info
                                 : spdlog::level::debug;
  Log().log(spd_level, "pool {} worker {} call {}: {}", options_.name, w.pid,
            frame.id, StringField(*header, "message"));
}

namespace {

std::string SessionReplyHeader(const absl::Status& status, uint64_t version) {
  Value header = {{"ok", status.ok()}, {"version", version}};
  if (!status.ok()) {
    header["reason"] = ReasonOf(status);
    header["message"] = std::string(status.message());
  }
  return *EncodeValue(header);
}

}  // namespace

void PoolCore::HandleSessionOp(Worker& w, const protocol::Frame& frame) {
  absl::StatusOr<Value> header = protocol::DecodeHeader(frame.header);
  std::string op, session;
  std::string call_session;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (std::shared_ptr<CallState> call = RunningLocked(w, frame.id)) {
      call_session = call->session;
    }
  }
  if (header.ok()) {
    op = StringField(*header, "op");
    session = StringField(*header, "session");
  }

  // TODO(#4): store operations run on the reading thread; a slow store
  // (sqlite with fsync) delays other workers' frames meanwhile.
  absl::Status status;
  uint64_t version = 0;
  std::string body;
  if (!header.ok()) {
    status = header.status();
  } else if (!options_.sessions) {
    status = MakeError(absl::StatusCode::kFailedPrecondition,
                       "no_session_store", "the pool has no session store");
  } else if (session.empty() || session != call_session) {
    status = MakeError(absl::StatusCode::kPermissionDenied,
                       "session_mismatch",
                       "a call may use only the session it runs in");
  } else if (op == "get") {
    absl::StatusOr<SessionSnapshot> snap = options_.sessions->Read(session);
    status = snap.status();
    if (snap.ok()) {
      version = snap->version;
      body = JoinMsgpackMap(snap->variables);
    }
  } else if (op == "get_program") {
    absl::StatusOr<std::string> program = options_.sessions->GetProgram(
        session, StringField(*header, "program"));
    status = program.status();
    if (program.ok()) {
      body = *EncodeValue(Bytes(*program));
    }
  } else if (op == "cas") {
    std::map<std::string, std::string> set;
    std::vector<std::string> erase;
    if (!frame.body.empty()) {
      auto pairs = SplitMsgpackMap(frame.body, options_.max_depth);
      status = pairs.status();
      if (pairs.ok()) {
        set.insert(pairs->begin(), pairs->end());
      }
    }
    auto deleted = header->find("delete");
    if (deleted != header->end() && deleted->is_array()) {
      for (const Value& name : *deleted) {
        if (name.is_string()) {
          erase.push_back(name.get<std::string>());
        }
      }
    }
    if (status.ok()) {
      absl::StatusOr<uint64_t> written = options_.sessions->Write(
          session,
          static_cast<uint64_t>(IntField(*header, "expected_version", 0)),
          set,
          erase);
      status = written.status();
      version = written.ok() ? *written : 0;
    }
  } else if (op == "store_program") {
    absl::StatusOr<Value> data = DecodeValue(frame.body);
    if (!data.ok() || !data->is_binary()) {
      status = ReasonError(reason::kInvalidArgument,
                           "a program must be bytes");
    } else {
      const auto& bin = data->get_binary();
      absl::StatusOr<uint64_t> stored = options_.sessions->StoreProgram(
          session, StringField(*header, "program"),
          std::string(bin.begin(), bin.end()));
      status = stored.status();
      version = stored.ok() ? *stored : 0;
    }
  } else {
    status = ReasonError(reason::kInvalidArgument,
                         absl::StrCat("unknown session operation \"", op,
                                      "\""));
  }
  (void)w.process->Send(FrameType::kSessionReply, frame.id,
                        SessionReplyHeader(status, version),
                        status.ok() ? body : std::string(),
                        absl::Now() + absl::Seconds(5));
}

void PoolCore::EndSession(const std::string& id) {
  std::vector<std::shared_ptr<Worker>> idle;
  {
    std::lock_guard<std::mutex> lock(mu_);
    affinity_.erase(id);
    for (auto& [serial, w] : workers_) {
      if (w->sessions_held.erase(id) > 0) {
        w->pending_ends.push_back(id);
        if (w->state == WorkerState::kIdle) {
          idle.push_back(w);
        }
      }
    }
  }
  // Busy workers hear of it when their call ends (HandleFinal).
  for (const std::shared_ptr<Worker>& w : idle) {
    FlushSessionEnds(w);
  }
}

void PoolCore::FlushSessionEnds(const std::shared_ptr<Worker>& w) {
  std::vector<std::string> ends;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ends.swap(w->pending_ends);
  }
  for (const std::string& id : ends) {
    protocol::HeaderWriter header;
    header.MapHeader(1);
    header.String("session");
    header.String(id);
    (void)w->process->Send(FrameType::kSessionEnd, 0, header.data(), "",
                           absl::Now() + absl::Seconds(1));
  }
}

void PoolCore::KillBroken(Worker& w, absl::Status why, Deferred* deferred) {
  Log().error("pool {} worker {}: {}; killing it", options_.name, w.pid,
              std::string(why.message()));
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& [id, call] : w.running) {
    if (call) {
      call->Finish(why, "", deferred);
      call = nullptr;
    }
  }
  if (w.state == WorkerState::kStarting && w.fatal.ok()) {
    w.fatal = why;
  }
  w.exit_reason = "protocol_error";
  w.process->SignalGroup(SIGKILL);
}

// ---------------------------------------------------------------------------
// Worker output: stdout and stderr lines go to the log, tagged.

void PoolCore::PumpOutput(Worker& w, bool is_stderr) {
  int fd = is_stderr ? w.process->stderr_fd() : w.process->stdout_fd();
  std::string& line = is_stderr ? w.err_line : w.out_line;
  char buf[16384];
  // A worker that floods its output must not starve every other worker
  // of this thread: read a bounded amount per event (the pipe is
  // level-triggered, so the rest comes on the next turn of the loop).
  for (int reads = 0; reads < kMaxOutputReadsPerEvent; ++reads) {
    ssize_t n = os::ReadSome(fd, buf, sizeof(buf));
    if (n > 0) {
      line.append(buf, static_cast<size_t>(n));
      if (is_stderr) {
        w.stderr_tail.append(buf, static_cast<size_t>(n));
        if (w.stderr_tail.size() > 2 * kStderrTailBytes) {
          w.stderr_tail.erase(0, w.stderr_tail.size() - kStderrTailBytes);
        }
      }
      FlushLines(w, is_stderr, false);
      continue;
    }
    if (n < 0 && errno == EAGAIN) {
      return;
    }
    FlushLines(w, is_stderr, true);
    Unwatch(fd);
    return;
  }
}

void PoolCore::FlushLines(Worker& w, bool is_stderr, bool all) {
  std::string& buffer = is_stderr ? w.err_line : w.out_line;
  const char* stream = is_stderr ? "stderr" : "stdout";
  size_t start = 0;
  while (true) {
    size_t end = buffer.find('\n', start);
    if (end == std::string::npos) {
      break;
    }
    Log().info("pool {} worker {} {}: {}", options_.name, w.pid, stream,
               std::string_view(buffer).substr(start, end - start));
    start = end + 1;
  }
  buffer.erase(0, start);
  if (!buffer.empty() && (all || buffer.size() > kMaxLogLine)) {
    Log().info("pool {} worker {} {}: {}", options_.name, w.pid, stream,
               buffer);
    buffer.clear();
  }
}

// ---------------------------------------------------------------------------
// Exits, deadlines and replacements.

void PoolCore::OnExit(const std::shared_ptr<Worker>& w, Deferred* deferred) {
  // Frames and output written just before the exit are handled first: a
  // result sent before exiting is a result, not a crash. A thread driving
  // this worker also watches its pidfd, so it lets go promptly.
  {
    std::unique_lock<std::mutex> lock(mu_);
    changed_.wait(lock, [&] { return !w->reader_busy; });
    w->reader_busy = true;
  }
  // The zombie still holds the group id, so this cannot reach an
  // unrelated group: it ends the worker's own children (one of which may
  // be flooding the pipes below).
  w->process->SignalGroup(SIGKILL);
  ReadChannel(w, deferred);
  PumpOutput(*w, false);
  PumpOutput(*w, true);
  absl::StatusOr<std::optional<os::ExitInfo>> exit =
      w->process->TryReap();
  if (registry_) {
    registry_->RemoveWorker(w->pid);
  }
  std::string how = exit.ok() && exit->has_value()
                        ? (*exit)->Describe()
                        : std::string("ended (status unknown)");
  for (int fd : {w->process->channel_fd(), w->process->control_fd(),
                 w->process->stdout_fd(), w->process->stderr_fd(),
                 w->process->pidfd()}) {
    Unwatch(fd);
  }

  std::lock_guard<std::mutex> lock(mu_);
  WorkerState was = w->state;
  w->state = WorkerState::kExited;
  // When the pool itself ended the worker, say why: a call that shared
  // it with a hung one should not look like the victim of a crash.
  std::string cause =
      w->exit_reason.empty()
          ? std::string()
          : absl::StrCat(" (the pool ended it: ", w->exit_reason, ")");
  for (auto& [id, call] : w->running) {
    if (call) {
      call->Finish(ReasonError(reason::kWorkerCrashed,
                               absl::StrCat("worker ", w->pid, " ", how,
                                            " during the call", cause)),
                   "", deferred);
    }
  }
  w->running.clear();
  if (was == WorkerState::kStarting && !closed_) {
    absl::Status failure = w->fatal;
    std::string tail = w->stderr_tail.size() > kStderrTailBytes
                           ? w->stderr_tail.substr(w->stderr_tail.size() -
                                                   kStderrTailBytes)
                           : w->stderr_tail;
    if (failure.ok()) {
      failure = ReasonError(reason::kWorkerStartFailed,
                            absl::StrCat("worker ", w->pid, " ", how,
                                         " before it was ready"));
    }
    if (!tail.empty()) {
      failure = WithMessage(failure, absl::StrCat(failure.message(),
                                                  "; stderr:\n", tail));
    }
    Log().error("pool {} worker {} failed to start: {}", options_.name,
                w->pid, std::string(failure.message()));
    RecordStartFailureLocked(std::move(failure), deferred);
  } else if (!closed_ && !w->retiring) {
    Log().warn("pool {} worker {} {}", options_.name, w->pid, how);
  }
  workers_.erase(w->serial);
  std::erase(idle_, w);  // its fds go with the last reference
  memory_reported_.erase(w->serial);
  if (!closed_) {
    std::string why = !w->exit_reason.empty() ? w->exit_reason
                      : was == WorkerState::kStarting ? "start_failure"
                                                      : "crash";
    ++restarts_by_reason_[why];
    ++restarts_;
    // A recycled worker's replacement is already on its way.
    if (!w->retiring && w->replaced_for.empty()) {
      ++missing_;
      ScheduleRespawnLocked();
    }
  }
  changed_.notify_all();
}

void PoolCore::ScheduleRespawnLocked() {
  // A worker that was ready is replaced at once. Repeated start failures
  // back off, doubling from 100 ms to 30 s, each delay drawn between half
  // and all of that so that pools failing together do not retry in step.
  absl::Duration delay = absl::ZeroDuration();
  if (start_failures_in_row_ > 0) {
    int shift = std::min(start_failures_in_row_ - 1, 9);
    delay = std::min(absl::Milliseconds(100) * (1 << shift),
                     absl::Seconds(30));
    // xorshift64: a weak generator is enough to spread retries.
    jitter_state_ ^= jitter_state_ << 13;
    jitter_state_ ^= jitter_state_ >> 7;
    jitter_state_ ^= jitter_state_ << 17;
    double fraction = 0.5 + 0.5 * static_cast<double>(jitter_state_ % 1024) /
                                1024.0;
    delay *= fraction;
  }
  respawn_at_ = std::min(respawn_at_, absl::Now() + delay);
}

int PoolCore::ReadyCountLocked() const {
  int ready = 0;
  for (const auto& [serial, w] : workers_) {
    ready += w->state == WorkerState::kIdle || w->state == WorkerState::kBusy;
  }
  return ready;
}

bool PoolCore::DegradedLocked() const {
  if (last_start_failure_.ok()) {
    return false;
  }
  for (const auto& [serial, w] : workers_) {
    if (w->state == WorkerState::kIdle || w->state == WorkerState::kBusy ||
        (w->state == WorkerState::kStarting && !w->retry)) {
      return false;  // a worker serves, or one may yet start
    }
  }
  return true;
}

absl::Status PoolCore::DegradedErrorLocked() const {
  return WithMessage(
      last_start_failure_,
      absl::StrCat("pool ", options_.name, " is degraded: its workers "
                   "cannot start (", start_failures_in_row_,
                   " attempts in a row; retrying with backoff): ",
                   last_start_failure_.message()));
}

void PoolCore::RecordStartFailureLocked(absl::Status failure,
                                        Deferred* deferred) {
  if (start_failure_.ok()) {
    start_failure_ = failure;
  }
  last_start_failure_ = std::move(failure);
  ++start_failures_in_row_;
  if (!DegradedLocked()) {
    return;  // the queue waits for the workers that serve or may start
  }
  absl::Status error = DegradedErrorLocked();
  for (auto& call : queue_) {
    call->Finish(error, "", deferred);
  }
  queue_.clear();
}

void PoolCore::RespawnMissing() {
  int count = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    count = std::exchange(missing_, 0);
    respawn_at_ = absl::InfiniteFuture();
  }
  for (int i = 0; i < count; ++i) {
    absl::Status s = SpawnWorker();
    if (!s.ok() && zygote_ && !zygote_->alive()) {
      // The zygote died under the fork: not the workers' fault. Once
      // more, from a new zygote; a second failure counts.
      OnZygoteExit();
      s = SpawnWorker();
    }
    if (!s.ok()) {
      Log().error("pool {}: cannot start a worker: {}", options_.name,
                  std::string(s.message()));
      Deferred deferred;
      {
        std::lock_guard<std::mutex> lock(mu_);
        RecordStartFailureLocked(s, &deferred);
        changed_.notify_all();
        // The rest would fail alike (no interpreter, no zygote): they
        // wait for the retry, after the backoff.
        missing_ += count - i;
        ScheduleRespawnLocked();
      }
      RunDeferred(deferred);
      return;
    }
  }
}

absl::Status PoolCore::QueueDeadlineError(const CallState& call) const {
  bool starting = !catalogue_known_;
  return ReasonError(
      reason::kDeadlineExceeded,
      absl::StrCat("deadline of ",
                   ShortDuration(call.deadline - call.submitted),
                   " passed while the call waited in the queue (",
                   starting ? "the pool was starting"
                            : "every worker was busy",
                   ")"));
}

void PoolCore::ExpireLocked(absl::Time now, Deferred* deferred) {
  for (auto it = queue_.begin(); it != queue_.end();) {
    CallState& call = **it;
    if (call.done_flag.load()) {
      it = queue_.erase(it);
    } else if (call.deadline <= now) {
      call.Finish(QueueDeadlineError(call), "", deferred);
      it = queue_.erase(it);
    } else {
      ++it;
    }
  }
  for (auto& [serial, w] : workers_) {
    for (auto& [id, call] : w->running) {
      if (call && call->deadline <= now) {
        call->Finish(
            ReasonError(reason::kDeadlineExceeded,
                        absl::StrCat("deadline of ",
                                     ShortDuration(call->deadline -
                                                   call->submitted),
                                     " passed while the call ran on worker ",
                                     w->pid)),
            "", deferred);
        AbandonLocked(*w, id);
      }
    }
    if (w->ready_deadline <= now) {
      w->ready_deadline = absl::InfiniteFuture();
      w->exit_reason = "start_failure";
      w->fatal = ReasonError(
          reason::kWorkerStartFailed,
          absl::StrCat("worker ", w->pid, " was not ready within ",
                       ShortDuration(options_.startup_timeout),
                       " (startup timeout)"));
      w->process->SignalGroup(SIGKILL);
    }
    if (w->kill_at <= now) {
      w->kill_at = absl::InfiniteFuture();
      if (w->exit_reason.empty()) {
        w->exit_reason = "hung_call";
      }
      Log().warn("pool {} worker {} did not stop within {}; killing it",
                 options_.name, w->pid, ShortDuration(options_.cancel_grace));
      w->process->SignalGroup(SIGKILL);
    }
    CheckLivenessLocked(*w, now);
  }
}

void PoolCore::CheckLivenessLocked(Worker& w, absl::Time now) {
  if (w.state != WorkerState::kIdle) {
    return;
  }
  if (w.pong_due <= now) {
    w.pong_due = absl::InfiniteFuture();
    w.exit_reason = "unresponsive";
    Log().warn("pool {} worker {} did not answer a ping within {} while "
               "idle; replacing it",
               options_.name, w.pid, ShortDuration(options_.liveness_timeout));
    w.process->SignalGroup(SIGKILL);
    return;
  }
  if (w.next_ping <= now && w.pong_due == absl::InfiniteFuture()) {
    w.next_ping = now + options_.liveness_interval;
    w.pong_due = now + options_.liveness_timeout;
    (void)w.process->SendControl(FrameType::kPing, ++ping_seq_);
  }
  if (now - w.started >= options_.max_worker_age && w.replaced_for.empty() &&
      RecycleReasonLocked(w) == "recycle_age") {
    ReplaceLocked(w, "recycle_age");
  }
}

// ---------------------------------------------------------------------------
// Shutdown and introspection.

void PoolCore::Shutdown(absl::Duration drain, absl::Duration grace) {
  std::call_once(shutdown_once_, [&] {
    // Queued calls fail at once, and their callers hear so before the
    // drain: they can go elsewhere rather than wait for running calls.
    Deferred queued;
    {
      std::lock_guard<std::mutex> lock(mu_);
      closed_ = true;
      absl::Status closed = ReasonError(
          reason::kPoolClosed,
          absl::StrCat("pool ", options_.name, " shut down before the call "
                                               "ran"));
      for (auto& call : queue_) {
        call->Finish(closed, "", &queued);
      }
      queue_.clear();
    }
    RunDeferred(queued);

    Deferred deferred;
    {
      std::unique_lock<std::mutex> lock(mu_);
      // Drained once no worker runs a call anyone waits for (abandoned
      // calls and recycling workers included).
      auto idle = [&] {
        return std::none_of(workers_.begin(), workers_.end(), [](auto& e) {
          return std::any_of(e.second->running.begin(),
                             e.second->running.end(),
                             [](auto& r) { return r.second != nullptr; });
        });
      };
      changed_.wait_until(lock, absl::ToChronoTime(absl::Now() + drain),
                          idle);
      for (auto& [serial, w] : workers_) {
        for (auto& [id, call] : w->running) {
          if (call) {
            call->Finish(
                ReasonError(reason::kPoolClosed,
                            absl::StrCat("pool ", options_.name,
                                         " shut down during the call")),
                "", &deferred);
            call = nullptr;
          }
        }
      }
    }
    RunDeferred(deferred);
    StopWorkers(grace);
  });
}

void PoolCore::StopWorkers(absl::Duration grace) {
  // SIGTERM first, with the I/O thread still running: the workers'
  // parent-death signal is tied to that thread, and their sockets'
  // end of file also makes them end at once, so either would cut the
  // grace short. A worker may spend the grace in its SIGTERM handler.
  std::vector<std::shared_ptr<Worker>> all;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [serial, w] : workers_) {
      all.push_back(w);
    }
  }
  for (const std::shared_ptr<Worker>& w : all) {
    w->process->SignalGroup(SIGTERM);
  }
  absl::Time limit = absl::Now() + grace;
  for (const std::shared_ptr<Worker>& w : all) {
    if (!os::AwaitExit(w->process->pidfd(), limit - absl::Now())) {
      Log().warn("pool {} worker {} did not exit within {}; killing it",
                 options_.name, w->pid, ShortDuration(grace));
    }
  }

  stop_.store(true);
  waker_.Wake();
  if (io_thread_.joinable()) {
    io_thread_.join();
  }

  // The I/O thread is gone: this thread owns what is left.
  std::map<uint32_t, std::shared_ptr<Worker>> workers;
  {
    // Threads driving a call were woken when it failed; the sockets stay
    // open until they have let go.
    std::unique_lock<std::mutex> lock(mu_);
    changed_.wait(lock, [&] {
      return std::none_of(workers_.begin(), workers_.end(),
                          [](auto& e) { return e.second->reader_busy; });
    });
    workers.swap(workers_);
    idle_.clear();
  }
  for (auto& [serial, w] : workers) {
    w->process->CloseSockets();
    w->process->SignalGroup(SIGKILL);
  }
  for (auto& [serial, w] : workers) {
    os::AwaitExit(w->process->pidfd(), absl::Seconds(5));
    PumpOutput(*w, false);
    PumpOutput(*w, true);
    (void)w->process->TryReap();
    if (registry_) {
      registry_->RemoveWorker(w->pid);
    }
  }
  if (zygote_) {
    pid_t pid = zygote_->pid();
    zygote_.reset();  // after its workers: ending it would end them
    if (registry_) {
      registry_->RemoveWorker(pid);
    }
  }
}

std::vector<FunctionInfo> PoolCore::Functions() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<FunctionInfo> out;
  for (const auto& [name, info] : catalogue_) {
    out.push_back(info);
  }
  return out;
}

PoolStats PoolCore::Stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  PoolStats stats;
  stats.size = options_.size;
  stats.start_failure = last_start_failure_;
  stats.state = closed_                       ? PoolState::kClosed
                : !last_start_failure_.ok()   ? PoolState::kDegraded
                : catalogue_known_            ? PoolState::kReady
                                              : PoolState::kStarting;
  for (const auto& [serial, w] : workers_) {
    switch (w->state) {
      case WorkerState::kStarting:
        ++stats.starting;
        break;
      case WorkerState::kIdle:
        ++stats.ready;
        break;
      case WorkerState::kBusy:
      case WorkerState::kStopping:
        ++stats.ready;
        ++stats.busy;
        break;
      case WorkerState::kExited:
        break;
    }
  }
  stats.starting += missing_;  // about to be spawned
  stats.queued = queue_.size();
  stats.restarts = restarts_;
  stats.restarts_by_reason = restarts_by_reason_;
  return stats;
}

}  // namespace snakepit::internal
