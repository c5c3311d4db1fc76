// What a pool needs of a session store to serve ctx.session in its
// workers. The pool sits below the session layer, so it names only this
// interface; snakepit/session/pool_backend.h implements it over a
// SessionStore.

#ifndef SNAKEPIT_POOL_SESSION_BACKEND_H_
#define SNAKEPIT_POOL_SESSION_BACKEND_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace snakepit {

// Variables as the store holds them: name → one msgpack value.
struct SessionSnapshot {
  uint64_t version = 0;
  std::map<std::string, std::string> variables;
};

// Thread-safe. Errors carry the store's reasons (session_not_found,
// session_conflict, program_not_found, ...).
class SessionBackend {
 public:
  virtual ~SessionBackend() = default;

  // OK when the session exists; refreshes it (a call in it counts as use).
  virtual absl::Status Touch(const std::string& id) = 0;

  virtual absl::StatusOr<SessionSnapshot> Read(const std::string& id) = 0;

  // Compare-and-swap: sets and erases variables if the session is still
  // at `expected_version`; returns the new version. ABORTED otherwise.
  virtual absl::StatusOr<uint64_t> Write(
      const std::string& id, uint64_t expected_version,
      const std::map<std::string, std::string>& set,
      const std::vector<std::string>& erase) = 0;

  virtual absl::StatusOr<uint64_t> StoreProgram(const std::string& id,
                                                const std::string& program,
                                                std::string bytes) = 0;
  virtual absl::StatusOr<std::string> GetProgram(
      const std::string& id, const std::string& program) = 0;
};

}  // namespace snakepit

#endif  // SNAKEPIT_POOL_SESSION_BACKEND_H_
