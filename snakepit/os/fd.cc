#include "snakepit/os/fd.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "snakepit/base/status.h"

namespace snakepit::os {

void UniqueFd::Reset(int fd) {
  if (fd_ >= 0) {
    // close() may fail with EINTR; on Linux the fd is released anyway.
    ::close(fd_);
  }
  fd_ = fd;
}

absl::Status MakeSocketPair(UniqueFd* a, UniqueFd* b) {
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) {
    return ErrnoToStatus(errno, "socketpair");
  }
  a->Reset(fds[0]);
  b->Reset(fds[1]);
  return absl::OkStatus();
}

absl::Status MakePipe(UniqueFd* read_end, UniqueFd* write_end) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) {
    return ErrnoToStatus(errno, "pipe2");
  }
  read_end->Reset(fds[0]);
  write_end->Reset(fds[1]);
  return SetNonBlocking(read_end->get());
}

absl::StatusOr<UniqueFd> DupAtLeast(int fd, int min_fd) {
  int dup = ::fcntl(fd, F_DUPFD_CLOEXEC, min_fd);
  if (dup < 0) {
    return ErrnoToStatus(errno, "fcntl(F_DUPFD_CLOEXEC)");
  }
  return UniqueFd(dup);
}

absl::Status SetNonBlocking(int fd) {
  int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0) {
    return ErrnoToStatus(errno, "fcntl(O_NONBLOCK)");
  }
  return absl::OkStatus();
}

namespace {

// Drops `n` written bytes from the front of `iov`.
void Advance(struct iovec*& iov, int& count, size_t n) {
  while (count > 0 && n >= iov->iov_len) {
    n -= iov->iov_len;
    ++iov;
    --count;
  }
  if (count > 0) {
    iov->iov_base = static_cast<char*>(iov->iov_base) + n;
    iov->iov_len -= n;
  }
}

// Waits until `fd` can take more bytes or `deadline` passes.
absl::Status AwaitWritable(int fd, absl::Time deadline) {
  while (true) {
    absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) {
      return absl::DeadlineExceededError("peer stopped reading");
    }
    int ms = left == absl::InfiniteDuration()
                 ? -1
                 : static_cast<int>(absl::ToInt64Milliseconds(left) + 1);
    struct pollfd pfd = {fd, POLLOUT, 0};
    int n = ::poll(&pfd, 1, ms);
    if (n > 0) {
      return absl::OkStatus();
    }
    if (n < 0 && errno != EINTR) {
      return ErrnoToStatus(errno, "poll");
    }
  }
}

}  // namespace

absl::Status SendAll(int fd, struct iovec* iov, int iov_count,
                     absl::Time deadline) {
  while (iov_count > 0) {
    struct msghdr msg = {};
    msg.msg_iov = iov;
    msg.msg_iovlen = static_cast<size_t>(iov_count);
    ssize_t n = ::sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n >= 0) {
      Advance(iov, iov_count, static_cast<size_t>(n));
      continue;
    }
    if (errno == EINTR) {
      continue;
    }
    if (errno == EAGAIN) {
      if (absl::Status s = AwaitWritable(fd, deadline); !s.ok()) {
        return s;
      }
      continue;
    }
    return ErrnoToStatus(errno, "send to worker");
  }
  return absl::OkStatus();
}

absl::Status SendWithFds(int fd, struct iovec* iov, int iov_count,
                         const std::vector<int>& fds, absl::Time deadline) {
  if (fds.empty()) {
    return SendAll(fd, iov, iov_count, deadline);
  }
  std::vector<char> control(CMSG_SPACE(sizeof(int) * fds.size()));
  struct msghdr msg = {};
  msg.msg_iov = iov;
  msg.msg_iovlen = static_cast<size_t>(iov_count);
  msg.msg_control = control.data();
  msg.msg_controllen = control.size();
  struct cmsghdr* header = CMSG_FIRSTHDR(&msg);
  header->cmsg_level = SOL_SOCKET;
  header->cmsg_type = SCM_RIGHTS;
  header->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
  std::memcpy(CMSG_DATA(header), fds.data(), sizeof(int) * fds.size());
  while (true) {
    ssize_t n = ::sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n >= 0) {
      // The fds went with the first byte; the rest is plain bytes.
      Advance(iov, iov_count, static_cast<size_t>(n));
      return SendAll(fd, iov, iov_count, deadline);
    }
    if (errno == EINTR) {
      continue;
    }
    if (errno != EAGAIN) {
      return ErrnoToStatus(errno, "send fds");
    }
    if (absl::Status s = AwaitWritable(fd, deadline); !s.ok()) {
      return s;
    }
  }
}

ssize_t ReadSome(int fd, void* buf, size_t size) {
  while (true) {
    ssize_t n = ::read(fd, buf, size);
    if (n >= 0 || errno != EINTR) {
      return n;
    }
  }
}

absl::StatusOr<Waker> Waker::Create() {
  int fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (fd < 0) {
    return ErrnoToStatus(errno, "eventfd");
  }
  return Waker(UniqueFd(fd));
}

void Waker::Wake() const {
  uint64_t one = 1;
  // A full counter already means "wake up"; nothing else can fail here.
  (void)!::write(fd_.get(), &one, sizeof(one));
}

void Waker::Drain() const {
  uint64_t value;
  (void)!::read(fd_.get(), &value, sizeof(value));
}

}  // namespace snakepit::os
