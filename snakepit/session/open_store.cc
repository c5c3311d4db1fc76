#include "snakepit/session/open_store.h"

#include "snakepit/session/memory_store.h"
#include "snakepit/session/sqlite_store.h"

namespace snakepit {

absl::StatusOr<std::unique_ptr<SessionStore>> OpenStore(
    const StoreConfig& config) {
  switch (config.kind) {
    case StoreKind::kMemory:
      return std::make_unique<MemoryStore>(config);
    case StoreKind::kSqlite: {
      absl::StatusOr<std::unique_ptr<SqliteStore>> store =
          SqliteStore::Open(config);
      if (!store.ok()) {
        return store.status();
      }
      return std::unique_ptr<SessionStore>(*std::move(store));
    }
  }
  return absl::InvalidArgumentError("unknown session store kind");
}

}  // namespace snakepit
