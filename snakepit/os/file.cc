#include "snakepit/os/file.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

#include "snakepit/base/status.h"

namespace snakepit::os {

absl::Status MakePrivateDir(const std::string& path) {
  if (::mkdir(path.c_str(), 0700) != 0 && errno != EEXIST) {
    return ErrnoToStatus(errno, absl::StrCat("mkdir ", path));
  }
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) {
    return ErrnoToStatus(errno, absl::StrCat("stat ", path));
  }

  // Whoever can write here could plant records that steer what a later
  // reaper signals, so only this user may.
  if (!S_ISDIR(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat(path, " is not a directory"));
  }
  if (st.st_uid != ::geteuid() || (st.st_mode & 077) != 0) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "%s is owned by uid %d with mode %04o; it must belong to uid %d "
        "with mode 0700",
        path, st.st_uid, st.st_mode & 07777, ::geteuid()));
  }
  return absl::OkStatus();
}

absl::StatusOr<UniqueFd> CreateNewFile(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) {
    if (errno == EEXIST) {
      return absl::AlreadyExistsError(absl::StrCat(path, " exists"));
    }
    return ErrnoToStatus(errno, absl::StrCat("create ", path));
  }
  return UniqueFd(fd);
}

absl::StatusOr<UniqueFd> OpenReadOnly(const std::string& path) {
  // Non-blocking and no links: a FIFO or a link planted in a shared
  // folder must neither hang the opener nor lead it elsewhere.
  int fd = ::open(path.c_str(),
                  O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOFOLLOW);
  if (fd < 0) {
    return ErrnoToStatus(errno, absl::StrCat("open ", path));
  }
  UniqueFd owned(fd);
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    return ErrnoToStatus(errno, absl::StrCat("stat ", path));
  }
  if (!S_ISREG(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat(path, " is not a regular file"));
  }
  return owned;
}

absl::StatusOr<std::string> ReadAll(int fd, size_t max_bytes) {
  std::string out;
  char buf[8192];
  while (true) {
    ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n < 0) {
      return ErrnoToStatus(errno == ESRCH ? ENOENT : errno, "read");
    }
    if (n == 0) {
      return out;
    }
    if (out.size() + n > max_bytes) {
      return absl::OutOfRangeError(
          absl::StrCat("file is over ", max_bytes, " bytes"));
    }
    out.append(buf, n);
  }
}

absl::StatusOr<std::string> ReadFile(const std::string& path,
                                     size_t max_bytes) {
  absl::StatusOr<UniqueFd> fd = OpenReadOnly(path);
  if (!fd.ok()) {
    return fd.status();
  }
  absl::StatusOr<std::string> data = ReadAll(fd->get(), max_bytes);
  if (!data.ok()) {
    return absl::Status(data.status().code(),
                        absl::StrCat(path, ": ", data.status().message()));
  }
  return data;
}

absl::Status WriteAll(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n < 0) {
      return ErrnoToStatus(errno, "write");
    }
    data.remove_prefix(n);
  }
  return absl::OkStatus();
}

absl::Status LockFile(int fd) {
  while (::flock(fd, LOCK_EX) != 0) {
    if (errno != EINTR) {
      return ErrnoToStatus(errno, "flock");
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<bool> TryLockFile(int fd) {
  while (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK) {
      return false;
    }
    if (errno != EINTR) {
      return ErrnoToStatus(errno, "flock");
    }
  }
  return true;
}

absl::StatusOr<bool> IsLinked(int fd) {
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    return ErrnoToStatus(errno, "fstat");
  }
  return st.st_nlink > 0;
}

void ReadRandom(void* buf, size_t size) {
  // getrandom blocks until the kernel's pool is ready and never returns
  // short for requests up to 256 bytes; the loop covers larger ones.
  auto* out = static_cast<char*>(buf);
  size_t done = 0;
  for (int attempt = 0; attempt < 64 && done < size; ++attempt) {
    ssize_t n = ::getrandom(out + done, size - done, 0);
    if (n > 0) {
      done += n;
    } else if (n < 0 && errno != EINTR) {
      break;
    }
  }
  if (done != size) {
    std::fprintf(stderr, "snakepit: getrandom failed: errno %d\n", errno);
    std::abort();
  }
}

std::string RandomHexId() {
  uint8_t raw[16];
  ReadRandom(raw, sizeof(raw));
  static constexpr char kHex[] = "0123456789abcdef";
  std::string id(2 * sizeof(raw), '0');
  for (size_t i = 0; i < sizeof(raw); ++i) {
    id[2 * i] = kHex[raw[i] >> 4];
    id[2 * i + 1] = kHex[raw[i] & 0xf];
  }
  return id;
}

}  // namespace snakepit::os
