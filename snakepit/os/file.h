// Files the host keeps for itself: private directories, whole-file reads
// and writes, advisory locks, and randomness from the kernel.

#ifndef SNAKEPIT_OS_FILE_H_
#define SNAKEPIT_OS_FILE_H_

#include <cstddef>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#include "snakepit/os/fd.h"

namespace snakepit::os {

// Creates the directory `path` with mode 0700 unless it exists, then
// checks that it is private: a real directory (not a symlink), owned by
// this process's effective user, with no group or other permissions.
// FAILED_PRECONDITION when it is not. The parent must exist.
absl::Status MakePrivateDir(const std::string& path);

// Creates `path`, which must not exist, for reading and writing; mode
// 0600, close-on-exec. ALREADY_EXISTS when it does.
absl::StatusOr<UniqueFd> CreateNewFile(const std::string& path);

// Opens `path` read-only, close-on-exec.
absl::StatusOr<UniqueFd> OpenReadOnly(const std::string& path);

// Reads `fd` from its current offset to end of file. OUT_OF_RANGE past
// `max_bytes`.
absl::StatusOr<std::string> ReadAll(int fd, size_t max_bytes);

// Reads the whole file `path` (see ReadAll). NOT_FOUND when the file, or
// the process a /proc file belongs to, is gone.
absl::StatusOr<std::string> ReadFile(const std::string& path, size_t max_bytes);

// Writes all of `data` to `fd`, retrying short writes.
absl::Status WriteAll(int fd, std::string_view data);

// Takes an exclusive flock(2) on `fd`, waiting while another open file
// description holds it. The lock lasts until every fd sharing this open
// file description is closed.
absl::Status LockFile(int fd);

// Takes an exclusive flock(2) on `fd` if nobody holds it. Returns false,
// without waiting, when another open file description (in this process
// or any other) holds it.
absl::StatusOr<bool> TryLockFile(int fd);

// Whether the file behind `fd` still has a name in some directory.
absl::StatusOr<bool> IsLinked(int fd);

// Fills `buf` from the kernel's random source. Aborts the process when
// the kernel cannot give randomness: an id that others could guess would
// be worse than stopping.
void ReadRandom(void* buf, size_t size);

// 128 random bits as 32 lowercase hex digits: ids no one can guess.
std::string RandomHexId();

}  // namespace snakepit::os

#endif  // SNAKEPIT_OS_FILE_H_
