#include "snakepit/worker/zygote.h"

#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "snakepit/base/log.h"
#include "snakepit/base/status.h"
#include "snakepit/os/process.h"
#include "snakepit/protocol/frame.h"

namespace snakepit::worker {
namespace {

using protocol::FrameType;

// Once the zygote's socket has closed, its output is read this much
// longer, for the stderr tail of a failed start.
constexpr absl::Duration kOutputDrainLimit = absl::Seconds(2);

// How long the destructor waits for the zygote to exit by itself.
constexpr absl::Duration kExitGrace = absl::Seconds(2);

// A host frame to the zygote is small; one that cannot go out in this
// long means the zygote has stopped reading.
constexpr absl::Duration kSendLimit = absl::Seconds(1);

constexpr size_t kStderrTailBytes = 4096;
constexpr size_t kMaxLogLine = 64 * 1024;

std::string StringField(const Value& header, const char* key) {
  auto it = header.find(key);
  return it != header.end() && it->is_string() ? it->get<std::string>()
                                                : std::string();
}

// The error a FATAL or a failed FORKED describes: the error fields of
// docs/protocol.md.
absl::Status ErrorFromFields(const Value& header) {
  std::string why = StringField(header, "reason");
  std::string message = StringField(header, "message");
  if (why.empty()) {
    why = std::string(reason::kProtocolError);
    message = "zygote sent an error without a reason: " + message;
  }
  absl::Status status = ReasonError(why, message);
  SetPythonDetails(status, {StringField(header, "type"),
                            StringField(header, "traceback"), ""});
  return status;
}

// Waits on `cv` until `done()` or `deadline`; an infinite deadline waits
// without a timeout (the chrono conversion of one would overflow).
template <typename Predicate>
void WaitUntil(std::condition_variable& cv,
               std::unique_lock<std::mutex>& lock, absl::Time deadline,
               Predicate done) {
  if (deadline == absl::InfiniteFuture()) {
    cv.wait(lock, done);
  } else {
    cv.wait_until(lock, absl::ToChronoTime(deadline), done);
  }
}

std::vector<std::string> ZygoteArgv(const WorkerSpec& spec) {
  std::vector<std::string> argv = WorkerArgv(spec);
  argv[2] = "snakepit._zygote";  // takes the worker's options
  return argv;
}

}  // namespace

// The host's end of the zygote's socket and what came over it. Shared by
// the Zygote, its thread and every WorkerProcess it forked (as their
// ExitReports), so that a worker may outlive its Zygote.
//
// Thread-safe.
class ZygoteLink final : public ExitReports {
 public:
  explicit ZygoteLink(std::string pool) : pool_(std::move(pool)) {}

  // Start-up, told by the thread -------------------------------------------

  void Spawned(os::UniqueFd socket, pid_t pid) {
    std::lock_guard<std::mutex> lock(mu_);
    socket_ = std::move(socket);
    pid_ = pid;
    spawned_ = true;
    changed_.notify_all();
  }

  // The thread has ended; `status` is why, if it failed.
  void Finished(absl::Status status) {
    std::lock_guard<std::mutex> lock(mu_);
    if (gone_reason_.ok()) {
      gone_reason_ = std::move(status);
    }
    gone_ = true;
    finished_ = true;
    spawned_ = true;
    released_.clear();
    changed_.notify_all();
  }

  // Waits until the zygote is spawned (or could not be).
  void AwaitSpawned() {
    std::unique_lock<std::mutex> lock(mu_);
    changed_.wait(lock, [&] { return spawned_; });
  }

  // True once READY came; false once the thread has finished (the
  // zygote is gone) or `deadline` passed without it.
  bool AwaitReady(absl::Time deadline) {
    std::unique_lock<std::mutex> lock(mu_);
    WaitUntil(changed_, lock, deadline, [&] { return ready_ || finished_; });
    return ready_;
  }

  bool finished() const {
    std::lock_guard<std::mutex> lock(mu_);
    return finished_;
  }

  bool alive() const {
    std::lock_guard<std::mutex> lock(mu_);
    return !gone_;
  }

  // True while the zygote should be serving: it was ready and nobody
  // asked it to go.
  bool serving() const {
    std::lock_guard<std::mutex> lock(mu_);
    return ready_ && !gone_ && !closing_;
  }

  // What ended the zygote before READY: FATAL's error, else the thread's.
  absl::Status StartError() const {
    std::lock_guard<std::mutex> lock(mu_);
    return !fatal_.ok() ? fatal_ : gone_reason_;
  }

  std::string StderrTail() const {
    std::lock_guard<std::mutex> lock(mu_);
    return stderr_tail_;
  }

  void AddStderr(std::string_view data) {
    std::lock_guard<std::mutex> lock(mu_);
    stderr_tail_.append(data);
    if (stderr_tail_.size() > kStderrTailBytes) {
      stderr_tail_.erase(0, stderr_tail_.size() - kStderrTailBytes);
    }
  }

  // Frames from the zygote ---------------------------------------------------

  // Handles one frame; an error means the zygote broke the protocol.
  absl::Status OnFrame(const protocol::Frame& frame);

  // The socket reached its end or failed: no more replies or reports.
  void Gone(absl::Status why) {
    std::lock_guard<std::mutex> lock(mu_);
    if (gone_reason_.ok()) {
      gone_reason_ = std::move(why);
    }
    gone_ = true;
    released_.clear();
    changed_.notify_all();
  }

  // Ends the zygote's socket, for the destructor: the zygote reads end of
  // file and exits.
  void Close() {
    std::lock_guard<std::mutex> lock(mu_);
    closing_ = true;
    if (socket_.valid()) {
      ::shutdown(socket_.get(), SHUT_RDWR);
    }
  }

  int socket() const {
    std::lock_guard<std::mutex> lock(mu_);
    return socket_.get();
  }

  // Fork requests ------------------------------------------------------------

  // Sends FORK with the child's four ends; returns the request's id.
  absl::StatusOr<uint64_t> SendFork(const std::vector<int>& fds,
                                    absl::Time deadline);

  // The pid FORKED gave for `request`, waiting until `deadline`.
  absl::StatusOr<pid_t> AwaitForked(uint64_t request, absl::Time deadline);

  // ExitReports --------------------------------------------------------------

  absl::StatusOr<os::ExitInfo> AwaitExit(pid_t pid,
                                         absl::Duration timeout) override;
  void Release(pid_t pid) override;

 private:
  absl::Status OnForked(const protocol::Frame& frame, const Value& header);
  void OnExited(const protocol::Frame& frame, const Value& header);
  absl::Status Send(FrameType type, uint64_t id,
                    const std::vector<int>& fds, absl::Time deadline);

  // Fixed at construction.
  const std::string pool_;

  // Serialises writers, so that frames and the fds they carry stay in
  // order; taken before mu_, never after.
  std::mutex send_mu_;

  mutable std::mutex mu_;
  std::condition_variable changed_;
  // Guarded by mu_.
  os::UniqueFd socket_;  // set once; closed when the last user lets go
  pid_t pid_ = -1;
  bool spawned_ = false;
  bool ready_ = false;
  bool gone_ = false;
  bool finished_ = false;
  bool closing_ = false;
  absl::Status fatal_;
  absl::Status gone_reason_;
  std::string stderr_tail_;
  uint64_t next_request_ = 1;
  std::set<uint64_t> pending_;  // FORKs whose caller still waits
  std::map<uint64_t, absl::StatusOr<pid_t>> forked_;
  std::map<pid_t, os::ExitInfo> exits_;  // reported, not yet released
  std::set<pid_t> released_;             // released, exit not yet reported
};

absl::Status ZygoteLink::OnFrame(const protocol::Frame& frame) {
  absl::StatusOr<Value> header = protocol::DecodeHeader(frame.header);
  if (!header.ok()) {
    return header.status();
  }
  switch (frame.type) {
    case FrameType::kHello: {
      auto it = header->find("protocol");
      if (it == header->end() || !it->is_number_integer() ||
          it->get<int64_t>() != protocol::kProtocolVersion) {
        return ReasonError(reason::kProtocolError,
                           absl::StrCat("zygote does not speak protocol ",
                                        protocol::kProtocolVersion));
      }
      return absl::OkStatus();
    }
    case FrameType::kReady: {
      std::lock_guard<std::mutex> lock(mu_);
      ready_ = true;
      changed_.notify_all();
      return absl::OkStatus();
    }
    case FrameType::kFatal: {
      std::lock_guard<std::mutex> lock(mu_);
      fatal_ = ErrorFromFields(*header);
      if (ready_) {
        Log().error("pool {} zygote {} failed: {}", pool_, pid_,
                    std::string(fatal_.message()));
      }
      return absl::OkStatus();
    }
    case FrameType::kForked:
      return OnForked(frame, *header);
    case FrameType::kExited:
      OnExited(frame, *header);
      return absl::OkStatus();
    default:
      return ReasonError(reason::kProtocolError,
                         absl::StrCat("zygote sent frame type ",
                                      static_cast<int>(frame.type)));
  }
}

absl::Status ZygoteLink::OnForked(const protocol::Frame& frame,
                                  const Value& header) {
  auto it = header.find("pid");
  bool has_pid = it != header.end() && it->is_number_integer() &&
                 it->get<int64_t>() > 0;
  pid_t pid = has_pid ? static_cast<pid_t>(it->get<int64_t>()) : -1;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (pending_.count(frame.id) != 0) {
      if (has_pid) {
        forked_.emplace(frame.id, pid);
      } else {
        forked_.emplace(frame.id, ErrorFromFields(header));
      }
      changed_.notify_all();
      return absl::OkStatus();
    }
  }
  // Its caller gave up waiting and closed the child's sockets, so the
  // child exits by itself; nobody will hold its pid.
  if (has_pid) {
    Release(pid);
  }
  return absl::OkStatus();
}

void ZygoteLink::OnExited(const protocol::Frame& frame,
                          const Value& header) {
  pid_t pid = static_cast<pid_t>(frame.id);
  os::ExitInfo exit;
  auto signalled = header.find("signalled");
  auto code = header.find("code");
  exit.signalled = signalled != header.end() && signalled->is_boolean() &&
                   signalled->get<bool>();
  exit.code = code != header.end() && code->is_number_integer()
                  ? static_cast<int>(code->get<int64_t>())
                  : -1;
  std::lock_guard<std::mutex> lock(mu_);
  if (released_.erase(pid) == 0) {
    exits_[pid] = exit;
    changed_.notify_all();
  }
}

absl::Status ZygoteLink::Send(FrameType type, uint64_t id,
                              const std::vector<int>& fds,
                              absl::Time deadline) {
  char prefix[protocol::kPrefixSize];
  protocol::EncodePrefix({type, 0, 0, id}, prefix);
  struct iovec iov[1] = {{prefix, sizeof(prefix)}};
  std::lock_guard<std::mutex> lock(send_mu_);
  int fd = socket();
  if (!alive() || fd < 0) {
    return ReasonError(reason::kWorkerStartFailed,
                       absl::StrCat("the zygote of pool ", pool_,
                                    " is gone"));
  }
  return os::SendWithFds(fd, iov, 1, fds, deadline);
}

absl::StatusOr<uint64_t> ZygoteLink::SendFork(const std::vector<int>& fds,
                                              absl::Time deadline) {
  uint64_t request;
  {
    std::lock_guard<std::mutex> lock(mu_);
    request = next_request_++;
    pending_.insert(request);
  }
  absl::Status sent = Send(FrameType::kFork, request, fds, deadline);
  if (!sent.ok()) {
    std::lock_guard<std::mutex> lock(mu_);
    pending_.erase(request);
    return sent;
  }
  return request;
}

absl::StatusOr<pid_t> ZygoteLink::AwaitForked(uint64_t request,
                                              absl::Time deadline) {
  std::unique_lock<std::mutex> lock(mu_);
  WaitUntil(changed_, lock, deadline,
            [&] { return gone_ || forked_.count(request) != 0; });
  pending_.erase(request);
  auto it = forked_.find(request);
  if (it != forked_.end()) {
    absl::StatusOr<pid_t> pid = std::move(it->second);
    forked_.erase(it);
    return pid;
  }
  return ReasonError(reason::kWorkerStartFailed,
                     gone_ ? absl::StrCat("the zygote of pool ", pool_,
                                          " is gone")
                           : absl::StrCat("the zygote of pool ", pool_,
                                          " did not fork in time"));
}

absl::StatusOr<os::ExitInfo> ZygoteLink::AwaitExit(pid_t pid,
                                                   absl::Duration timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  WaitUntil(changed_, lock, absl::Now() + timeout,
            [&] { return gone_ || exits_.count(pid) != 0; });
  auto it = exits_.find(pid);
  if (it != exits_.end()) {
    return it->second;
  }
  std::string what = absl::StrCat("worker ", pid, " ended (status unknown)");
  if (gone_) {
    return absl::UnavailableError(
        absl::StrCat(what, ": the zygote of pool ", pool_, " is gone"));
  }
  return absl::DeadlineExceededError(
      absl::StrCat(what, ": the zygote of pool ", pool_,
                   " did not report it"));
}

void ZygoteLink::Release(pid_t pid) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (gone_) {
      exits_.erase(pid);
      return;
    }
    if (exits_.erase(pid) == 0) {
      released_.insert(pid);  // its EXITED is still to come
    }
  }
  // A failure means the zygote is gone, and its zombies with it.
  (void)Send(FrameType::kRelease, static_cast<uint64_t>(pid), {},
             absl::Now() + kSendLimit);
}

// ---------------------------------------------------------------------------

Zygote::Zygote(std::string pool, os::Waker stop)
    : pool_(std::move(pool)),
      stop_(std::move(stop)),
      link_(std::make_shared<ZygoteLink>(pool_)) {}

absl::StatusOr<std::unique_ptr<Zygote>> Zygote::Start(const WorkerSpec& spec,
                                                      absl::Time deadline) {
  absl::StatusOr<os::Waker> stop = os::Waker::Create();
  if (!stop.ok()) {
    return stop.status();
  }
  auto zygote =
      std::unique_ptr<Zygote>(new Zygote(spec.pool, std::move(*stop)));
  zygote->thread_ = std::thread([z = zygote.get(), spec] { z->Run(spec); });
  zygote->link_->AwaitSpawned();
  if (zygote->link_->AwaitReady(deadline)) {
    Log().info("pool {} zygote {} ready", spec.pool, zygote->pid_);
    return zygote;
  }
  if (!zygote->link_->finished()) {
    return ReasonError(reason::kWorkerStartFailed,
                       absl::StrCat("the zygote of pool ", spec.pool,
                                    " was not ready in time"));
  }
  return zygote->StartFailure();
}

absl::Status Zygote::StartFailure() {
  absl::Status error = link_->StartError();
  std::string tail = link_->StderrTail();
  std::string stderr_part = tail.empty() ? "" : "; stderr:\n" + tail;
  if (!error.ok()) {
    // FATAL (import_error...), a protocol error or a failed spawn.
    absl::Status out = ReasonError(
        ReasonOf(error), absl::StrCat(error.message(), stderr_part));
    SetPythonDetails(out, PythonDetailsOf(error));
    return out;
  }
  std::string how = "ended";
  if (pidfd_.valid() && os::AwaitExit(pidfd_.get(), absl::Seconds(1))) {
    absl::StatusOr<std::optional<os::ExitInfo>> exit =
        os::TryReap(pidfd_.get());
    if (exit.ok() && exit->has_value()) {
      how = (*exit)->Describe();
    }
  }
  return ReasonError(reason::kWorkerStartFailed,
                     absl::StrCat("the zygote ", pid_, " of pool ", pool_,
                                  " ", how, " before it was ready",
                                  stderr_part));
}

Zygote::~Zygote() {
  link_->Close();
  stop_.Wake();
  if (thread_.joinable()) {
    thread_.join();
  }
  if (!pidfd_.valid()) {
    return;
  }
  if (!os::AwaitExit(pidfd_.get(), kExitGrace)) {
    Log().warn("pool {} zygote {} did not exit within {} s; killing it",
               pool_, pid_, absl::ToInt64Seconds(kExitGrace));
  }
  // Its own group, exited or not (the zombie holds the group id until
  // reaped): processes the modules started at import live there, and
  // would outlive the pool. Workers have groups of their own.
  os::SignalGroup(pid_, SIGKILL);
  os::AwaitExit(pidfd_.get(), absl::Seconds(5));
  (void)os::TryReap(pidfd_.get());
}

bool Zygote::alive() const { return link_->alive(); }

absl::StatusOr<std::unique_ptr<WorkerProcess>> Zygote::Fork(
    absl::Time deadline) {
  absl::StatusOr<WorkerProcess::Ends> ends = WorkerProcess::MakeEnds();
  if (!ends.ok()) {
    return ends.status();
  }
  absl::StatusOr<uint64_t> request = link_->SendFork(
      {ends->child_channel.get(), ends->child_control.get(),
       ends->stdout_write.get(), ends->stderr_write.get()},
      deadline);
  // The zygote holds its copies now; the host must not keep these, or
  // it would never see the worker's end of file.
  ends->child_channel.Reset();
  ends->child_control.Reset();
  ends->stdout_write.Reset();
  ends->stderr_write.Reset();
  if (!request.ok()) {
    return request.status();
  }
  absl::StatusOr<pid_t> pid = link_->AwaitForked(*request, deadline);
  if (!pid.ok()) {
    return pid.status();
  }

  // The zygote keeps the child's zombie until Release, so the pid is
  // still this child's, whatever it has done since.
  absl::StatusOr<os::UniqueFd> pidfd = os::OpenPidfd(*pid);
  if (!pidfd.ok()) {
    os::SignalGroup(*pid, SIGKILL);
    link_->Release(*pid);
    return ReasonError(reason::kWorkerStartFailed,
                       absl::StrCat("cannot watch worker ", *pid, ": ",
                                    pidfd.status().message()));
  }
  return WorkerProcess::Adopt(*pid, std::move(*pidfd), *ends, link_);
}

// The thread -----------------------------------------------------------------

void Zygote::Run(const WorkerSpec& spec) {
  absl::Status spawned = Spawn(spec);
  if (!spawned.ok()) {
    link_->Finished(spawned);
    return;
  }
  Serve();
  link_->Finished(absl::OkStatus());
}

absl::Status Zygote::Spawn(const WorkerSpec& spec) {
  os::UniqueFd host_end, zygote_end, out_write, err_write;
  for (absl::Status s : {os::MakeSocketPair(&host_end, &zygote_end),
                         os::MakePipe(&stdout_, &out_write),
                         os::MakePipe(&stderr_, &err_write)}) {
    if (!s.ok()) {
      return s;
    }
  }
  // Above fd 3, so that the dup2 in the child clears close-on-exec.
  absl::StatusOr<os::UniqueFd> high = os::DupAtLeast(zygote_end.get(), 10);
  if (!high.ok()) {
    return high.status();
  }
  os::SpawnRequest request;
  request.argv = ZygoteArgv(spec);
  request.env = WorkerEnv(spec);
  request.fds = {{out_write.get(), 1},
                 {err_write.get(), 2},
                 {high->get(), protocol::kChannelFd}};
  absl::StatusOr<os::SpawnedProcess> spawned = os::Spawn(request);
  if (!spawned.ok()) {
    return ReasonError(reason::kWorkerStartFailed,
                       absl::StrCat("cannot start the zygote of pool ",
                                    spec.pool, ": ",
                                    spawned.status().message()));
  }
  pid_ = spawned->pid;
  pidfd_ = std::move(spawned->pidfd);
  if (absl::Status s = os::SetNonBlocking(host_end.get()); !s.ok()) {
    os::SignalGroup(pid_, SIGKILL);
    return s;
  }
  link_->Spawned(std::move(host_end), pid_);
  return absl::OkStatus();
}

void Zygote::Serve() {
  protocol::FrameReader reader(/*max_body=*/0);
  bool socket_open = true, out_open = true, err_open = true;
  absl::Time drain_until = absl::InfiniteFuture();
  while (out_open || err_open || socket_open) {
    int ms = -1;
    if (drain_until != absl::InfiniteFuture()) {
      absl::Duration left = drain_until - absl::Now();
      if (left <= absl::ZeroDuration()) {
        break;
      }
      ms = static_cast<int>(absl::ToInt64Milliseconds(left)) + 1;
    }
    // A negative fd is ignored by poll.
    struct pollfd fds[4] = {{socket_open ? link_->socket() : -1, POLLIN, 0},
                            {out_open ? stdout_.get() : -1, POLLIN, 0},
                            {err_open ? stderr_.get() : -1, POLLIN, 0},
                            {stop_.fd(), POLLIN, 0}};
    if (::poll(fds, 4, ms) < 0 && errno != EINTR) {
      Log().critical("pool {} zygote poll: {}", pool_, std::strerror(errno));
      break;
    }
    if (fds[3].revents != 0) {
      break;  // the destructor
    }
    if (fds[1].revents != 0) {
      PumpOutput(false, &out_open);
    }
    if (fds[2].revents != 0) {
      PumpOutput(true, &err_open);
    }
    if (fds[0].revents == 0) {
      continue;
    }
    bool eof = false;
    absl::Status read = reader.ReadFrom(fds[0].fd, &eof);
    for (; read.ok() && !reader.frames().empty(); reader.frames().pop_front()) {
      read = link_->OnFrame(reader.frames().front());
    }
    if (!read.ok() || eof) {
      if (!read.ok()) {
        Log().error("pool {} zygote {}: {}; killing it", pool_, pid_,
                    std::string(read.message()));
        os::SignalGroup(pid_, SIGKILL);
      } else if (link_->serving()) {
        Log().error("pool {} zygote {} exited; its workers exit with it",
                    pool_, pid_);
      }
      link_->Gone(read);
      socket_open = false;
      drain_until = absl::Now() + kOutputDrainLimit;
    }
  }
  FlushLines(false, true);
  FlushLines(true, true);
}

void Zygote::PumpOutput(bool is_stderr, bool* open) {
  int fd = is_stderr ? stderr_.get() : stdout_.get();
  std::string& line = is_stderr ? err_line_ : out_line_;
  char buf[16 * 1024];
  while (true) {
    ssize_t n = os::ReadSome(fd, buf, sizeof(buf));
    if (n > 0) {
      line.append(buf, static_cast<size_t>(n));
      if (is_stderr) {
        link_->AddStderr(std::string_view(buf, static_cast<size_t>(n)));
      }
      FlushLines(is_stderr, false);
      continue;
    }
    if (n < 0 && errno == EAGAIN) {
      return;
    }
    *open = false;  // end of file, or a broken pipe
    return;
  }
}

void Zygote::FlushLines(bool is_stderr, bool all) {
  std::string& buffer = is_stderr ? err_line_ : out_line_;
  const char* stream = is_stderr ? "stderr" : "stdout";
  size_t start = 0;
  for (size_t end; (end = buffer.find('\n', start)) != std::string::npos;
       start = end + 1) {
    Log().info("pool {} zygote {} {}: {}", pool_, pid_, stream,
               std::string_view(buffer).substr(start, end - start));
  }
  buffer.erase(0, start);
  if (!buffer.empty() && (all || buffer.size() > kMaxLogLine)) {
    Log().info("pool {} zygote {} {}: {}", pool_, pid_, stream, buffer);
    buffer.clear();
  }
}

}  // namespace snakepit::worker
