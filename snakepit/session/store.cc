#include "snakepit/session/store.h"

#include <utility>

#include "absl/strings/str_cat.h"

#include "snakepit/base/status.h"
#include "snakepit/session/session_id.h"

namespace snakepit {
namespace {

// Length of the UTF-8 sequence led by `c`, 0 for a byte that cannot lead.
int SequenceLength(unsigned char c) {
  if (c < 0x80) {
    return 1;
  }
  if (c >= 0xc2 && c <= 0xdf) {
    return 2;
  }
  if (c >= 0xe0 && c <= 0xef) {
    return 3;
  }
  if (c >= 0xf0 && c <= 0xf4) {
    return 4;
  }
  return 0;
}

// Strict UTF-8: no overlong forms, no surrogates, nothing past U+10FFFF.
// Metadata and variable names must be text because the export format
// (JSON) and etcd's JSON gateway carry them as strings.
bool IsValidUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    auto lead = static_cast<unsigned char>(s[i]);
    int len = SequenceLength(lead);
    if (len == 0 || i + len > s.size()) {
      return false;
    }
    auto second = static_cast<unsigned char>(len > 1 ? s[i + 1] : 0x80);
    if ((lead == 0xe0 && second < 0xa0) || (lead == 0xed && second > 0x9f) ||
        (lead == 0xf0 && second < 0x90) || (lead == 0xf4 && second > 0x8f)) {
      return false;
    }
    for (int k = 1; k < len; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) & 0xc0) != 0x80) {
        return false;
      }
    }
    i += len;
  }
  return true;
}

absl::Status NotText(std::string_view what, std::string_view id) {
  return MakeError(absl::StatusCode::kInvalidArgument, reason::kInvalidArgument,
                   absl::StrCat(ToAbsl(what), " of session ",
                                internal::QuoteId(id), " is not valid UTF-8"));
}

}  // namespace

absl::StatusOr<StoreKind> ParseStoreKind(std::string_view name) {
  if (name == "memory") {
    return StoreKind::kMemory;
  }
  if (name == "sqlite") {
    return StoreKind::kSqlite;
  }
  return MakeError(
      absl::StatusCode::kInvalidArgument, reason::kInvalidArgument,
      absl::StrCat("unknown session store \"", internal::QuoteId(name),
                   "\"; expected memory or sqlite"));
}

std::string_view StoreKindName(StoreKind kind) {
  switch (kind) {
    case StoreKind::kMemory:
      return "memory";
    case StoreKind::kSqlite:
      return "sqlite";
  }
  return "unknown";
}

std::string_view DeleteCauseName(DeleteCause cause) {
  return cause == DeleteCause::kExpired ? "expired" : "deleted";
}

absl::Time TruncateToMicros(absl::Time t) {
  return absl::FromUnixMicros(absl::ToUnixMicros(t));
}

SessionStore::SessionStore(StoreKind kind, StoreConfig config)
    : kind_(kind),
      config_(std::move(config)),
      listeners_(std::make_shared<const Listeners>()) {}

SessionStore::~SessionStore() = default;

absl::StatusOr<SessionRef> SessionStore::Update(std::string_view id,
                                                const UpdateFn& fn) {
  absl::Status conflict;
  for (int attempt = 0; attempt <= kUpdateRetries; ++attempt) {
    absl::StatusOr<SessionRef> current = Get(id);
    if (!current.ok()) {
      return current.status();
    }
    SessionRecord draft = **current;
    if (absl::Status s = fn(draft); !s.ok()) {
      return s;
    }
    absl::StatusOr<SessionRef> written =
        CompareAndSwap(id, (*current)->version, std::move(draft));
    if (written.ok() || written.status().code() != absl::StatusCode::kAborted) {
      return written;
    }
    conflict = written.status();
  }
  return MakeError(absl::StatusCode::kAborted, reason::kSessionConflict,
                   absl::StrCat("update gave up after ", kUpdateRetries + 1,
                                " attempts lost to concurrent writers; last: ",
                                conflict.message()));
}

absl::StatusOr<uint64_t> SessionStore::StoreProgram(std::string_view id,
                                                    std::string_view program_id,
                                                    std::string bytes) {
  if (absl::Status s = ValidateProgram(program_id, bytes); !s.ok()) {
    return s;
  }
  absl::StatusOr<SessionRef> written = Update(id, [&](SessionRecord& record) {
    record.programs[std::string(program_id)] = bytes;
    return absl::OkStatus();
  });
  if (!written.ok()) {
    return written.status();
  }
  return (*written)->version;
}

absl::StatusOr<std::string> SessionStore::GetProgram(
    std::string_view id, std::string_view program_id) {
  if (absl::Status s = ValidateProgramId(program_id); !s.ok()) {
    return s;
  }
  absl::StatusOr<SessionRef> session = Get(id);
  if (!session.ok()) {
    return session.status();
  }
  auto it = (*session)->programs.find(std::string(program_id));
  if (it == (*session)->programs.end()) {
    return internal::ProgramNotFound(id, program_id);
  }
  return it->second;
}

int SessionStore::AddDeleteListener(DeleteListener listener) {
  absl::MutexLock lock(&listeners_mu_);
  auto next = std::make_shared<Listeners>(*listeners_);
  int handle = next_listener_++;
  next->emplace_back(handle, std::move(listener));
  listeners_ = std::move(next);
  return handle;
}

void SessionStore::RemoveDeleteListener(int handle) {
  absl::MutexLock lock(&listeners_mu_);
  auto next = std::make_shared<Listeners>(*listeners_);
  std::erase_if(*next,
                [&](const auto& entry) { return entry.first == handle; });
  listeners_ = std::move(next);
}

absl::Time SessionStore::Now() const {
  return TruncateToMicros(config_.clock ? config_.clock() : absl::Now());
}

absl::StatusOr<SessionRecord> SessionStore::RecordFor(
    const CreateOptions& options) const {
  SessionRecord record;
  record.id = options.id.empty() ? NewSessionId() : options.id;
  record.metadata = options.metadata;
  record.owner = options.owner;
  absl::StatusOr<absl::Duration> ttl = TtlFor(options.ttl);
  if (!ttl.ok()) {
    return ttl.status();
  }
  record.ttl = *ttl;
  if (absl::Status s = ValidateRecord(record); !s.ok()) {
    return s;
  }
  return record;
}

absl::StatusOr<absl::Duration> SessionStore::TtlFor(
    absl::Duration requested) const {
  absl::Duration ttl =
      requested == absl::ZeroDuration() ? config_.default_ttl : requested;
  ttl = absl::Trunc(ttl, absl::Microseconds(1));
  // The upper bound keeps last_used + ttl far from int64 overflow.
  constexpr absl::Duration kMaxTtl = absl::Hours(24 * 3650);
  if (ttl <= absl::ZeroDuration() || ttl > kMaxTtl) {
    return MakeError(absl::StatusCode::kInvalidArgument,
                     reason::kInvalidArgument,
                     absl::StrCat("session ttl must be between 1us and 3650 "
                                  "days, got ",
                                  absl::FormatDuration(ttl)));
  }
  return ttl;
}

absl::Status SessionStore::ValidateRecord(const SessionRecord& record) const {
  if (absl::Status s = ValidateSessionId(record.id); !s.ok()) {
    return s;
  }
  if (absl::StatusOr<absl::Duration> ttl = TtlFor(record.ttl); !ttl.ok()) {
    return ttl.status();
  }
  for (const auto& [key, value] : record.metadata) {
    if (!IsValidUtf8(key) || !IsValidUtf8(value)) {
      return NotText("a metadata entry", record.id);
    }
  }
  for (const auto& [name, value] : record.variables) {
    if (!IsValidUtf8(name)) {
      return NotText("a variable name", record.id);
    }
  }
  for (const auto& [program_id, bytes] : record.programs) {
    if (absl::Status s = ValidateProgram(program_id, bytes); !s.ok()) {
      return s;
    }
  }
  return IsValidUtf8(record.owner) ? absl::OkStatus()
                                   : NotText("the owner", record.id);
}

absl::Status SessionStore::ValidateProgram(std::string_view program_id,
                                           std::string_view bytes) const {
  if (absl::Status s = ValidateProgramId(program_id); !s.ok()) {
    return s;
  }
  if (bytes.size() > config_.max_program_bytes) {
    return MakeError(
        absl::StatusCode::kResourceExhausted, reason::kProgramTooLarge,
        absl::StrCat("program ", internal::QuoteId(program_id), " is ",
                     bytes.size(), " bytes, over the limit of ",
                     config_.max_program_bytes,
                     " (sessions.max_program_bytes)"));
  }
  return absl::OkStatus();
}

void SessionStore::NotifyDeleted(const std::string& id,
                                 DeleteCause cause) const {
  std::shared_ptr<const Listeners> listeners;
  {
    absl::MutexLock lock(&listeners_mu_);
    listeners = listeners_;
  }
  for (const auto& [handle, listener] : *listeners) {
    listener(id, cause);
  }
}

}  // namespace snakepit
