#include "snakepit/testing/processes.h"

#include <poll.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <thread>

namespace snakepit::testing {

absl::StatusOr<std::string> ReadLine(int fd, absl::Time deadline) {
  std::string line;
  while (true) {
    char c;
    ssize_t n = ::read(fd, &c, 1);
    if (n == 1) {
      if (c == '\n') {
        return line;
      }
      line.push_back(c);
      continue;
    }
    if (n == 0) {
      return absl::OutOfRangeError("end of file after '" + line + "'");
    }
    if (errno == EINTR) {
      continue;
    }
    if (errno != EAGAIN) {
      return absl::InternalError("read failed");
    }
    absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) {
      return absl::DeadlineExceededError("no line before deadline after '" +
                                         line + "'");
    }
    struct pollfd pfd = {fd, POLLIN, 0};
    ::poll(&pfd, 1, static_cast<int>(absl::ToInt64Milliseconds(left)) + 1);
  }
}

bool HasExited(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(stat)),
                   std::istreambuf_iterator<char>());
  size_t paren = text.rfind(')');
  if (!stat || paren == std::string::npos || paren + 2 >= text.size()) {
    return true;
  }
  char state = text[paren + 2];
  return state == 'Z' || state == 'X';
}

bool AwaitExited(pid_t pid, absl::Duration timeout) {
  absl::Time deadline = absl::Now() + timeout;
  while (!HasExited(pid)) {
    if (absl::Now() >= deadline) {
      return false;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return true;
}

TempDir::TempDir() {
  char pattern[] = "/tmp/snakepit_test.XXXXXX";
  if (::mkdtemp(pattern) == nullptr) {
    std::perror("mkdtemp");
    std::abort();
  }
  path_ = pattern;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

}  // namespace snakepit::testing
