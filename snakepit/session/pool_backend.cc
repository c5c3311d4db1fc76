#include "snakepit/session/pool_backend.h"

#include <utility>

namespace snakepit {
namespace {

class StoreBackend : public SessionBackend {
 public:
  explicit StoreBackend(std::shared_ptr<SessionStore> store)
      : store_(std::move(store)) {}

  absl::Status Touch(const std::string& id) override {
    return store_->Get(id).status();
  }

  absl::StatusOr<SessionSnapshot> Read(const std::string& id) override {
    absl::StatusOr<SessionRef> record = store_->Get(id);
    if (!record.ok()) {
      return record.status();
    }
    return SessionSnapshot{(*record)->version, (*record)->variables};
  }

  absl::StatusOr<uint64_t> Write(
      const std::string& id, uint64_t expected_version,
      const std::map<std::string, std::string>& set,
      const std::vector<std::string>& erase) override {
    absl::StatusOr<SessionRef> current = store_->Get(id);
    if (!current.ok()) {
      return current.status();
    }
    SessionRecord next = **current;
    for (const auto& [name, value] : set) {
      next.variables[name] = value;
    }
    for (const std::string& name : erase) {
      next.variables.erase(name);
    }
    absl::StatusOr<SessionRef> written =
        store_->CompareAndSwap(id, expected_version, std::move(next));
    if (!written.ok()) {
      return written.status();
    }
    return (*written)->version;
  }

  absl::StatusOr<uint64_t> StoreProgram(const std::string& id,
                                        const std::string& program,
                                        std::string bytes) override {
    return store_->StoreProgram(id, program, std::move(bytes));
  }

  absl::StatusOr<std::string> GetProgram(
      const std::string& id, const std::string& program) override {
    return store_->GetProgram(id, program);
  }

 private:
  const std::shared_ptr<SessionStore> store_;
};

}  // namespace

std::shared_ptr<SessionBackend> MakePoolBackend(
    std::shared_ptr<SessionStore> store) {
  return std::make_shared<StoreBackend>(std::move(store));
}

}  // namespace snakepit
