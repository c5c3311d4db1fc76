// File descriptors: ownership and the few socket and pipe calls the host
// makes. This folder is the only place that issues raw syscalls.

#ifndef SNAKEPIT_OS_FD_H_
#define SNAKEPIT_OS_FD_H_

#include <sys/uio.h>

#include <cstddef>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace snakepit::os {

// Owns one file descriptor and closes it on destruction. Move-only.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(other.Release()) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    Reset(other.Release());
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { Reset(); }

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int Release() { return std::exchange(fd_, -1); }
  void Reset(int fd = -1);

 private:
  int fd_ = -1;
};

// A connected AF_UNIX stream pair, both ends close-on-exec.
absl::Status MakeSocketPair(UniqueFd* a, UniqueFd* b);

// A pipe, both ends close-on-exec; `read_end` is non-blocking.
absl::Status MakePipe(UniqueFd* read_end, UniqueFd* write_end);

// A duplicate of `fd` numbered at least `min_fd`, close-on-exec.
absl::StatusOr<UniqueFd> DupAtLeast(int fd, int min_fd);

absl::Status SetNonBlocking(int fd);

// Writes all of `iov` to the socket `fd` before `deadline`. Never raises
// SIGPIPE. UNAVAILABLE when the peer is gone, DEADLINE_EXCEEDED when it
// stops reading. `iov` is consumed.
absl::Status SendAll(int fd, struct iovec* iov, int iov_count,
                     absl::Time deadline);

// Like SendAll for the bytes of `iov`, with duplicates of `fds` passed
// along with the first byte (SCM_RIGHTS). The caller's fds stay open.
absl::Status SendWithFds(int fd, struct iovec* iov, int iov_count,
                         const std::vector<int>& fds, absl::Time deadline);

// Reads what is available from the non-blocking `fd` into `buf`, up to
// `size` bytes. Returns the byte count; 0 at end of file; -1 with
// errno == EAGAIN when nothing is waiting; -1 and errno for other faults.
ssize_t ReadSome(int fd, void* buf, size_t size);

// An eventfd that wakes an epoll loop.
class Waker {
 public:
  static absl::StatusOr<Waker> Create();
  int fd() const { return fd_.get(); }
  void Wake() const;
  void Drain() const;

 private:
  explicit Waker(UniqueFd fd) : fd_(std::move(fd)) {}
  UniqueFd fd_;
};

}  // namespace snakepit::os

#endif  // SNAKEPIT_OS_FD_H_
