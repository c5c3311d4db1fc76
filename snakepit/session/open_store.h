// Opens the session store a configuration names.

#ifndef SNAKEPIT_SESSION_OPEN_STORE_H_
#define SNAKEPIT_SESSION_OPEN_STORE_H_

#include <memory>

#include "absl/status/statusor.h"

#include "snakepit/session/store.h"

namespace snakepit {

// A memory or sqlite store per config.kind; the sqlite store's errors
// (see SqliteStore::Open) pass through.
absl::StatusOr<std::unique_ptr<SessionStore>> OpenStore(
    const StoreConfig& config);

}  // namespace snakepit

#endif  // SNAKEPIT_SESSION_OPEN_STORE_H_
