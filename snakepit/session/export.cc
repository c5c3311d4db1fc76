#include "snakepit/session/export.h"

#include <map>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

#include "snakepit/base/status.h"
#include "snakepit/base/value.h"
#include "snakepit/session/errors.h"

namespace snakepit {
namespace {

constexpr std::string_view kFormat = "snakepit-sessions";
constexpr int64_t kFormatVersion = 1;
// Records per Scan page while exporting.
constexpr size_t kExportPage = 500;
// Ids quoted in an error before "and N more".
constexpr size_t kIdsShown = 5;

Value MapToJson(const std::map<std::string, std::string>& map, bool binary) {
  Value object = Value::object();
  for (const auto& [key, value] : map) {
    object[key] = binary ? Bytes(value) : Value(value);
  }
  return object;
}

std::string RecordLine(const SessionRecord& record) {
  Value line = {
      {"id", record.id},
      {"version", record.version},
      {"owner", record.owner},
      {"created_us", absl::ToUnixMicros(record.created)},
      {"last_used_us", absl::ToUnixMicros(record.last_used)},
      {"ttl_us", absl::ToInt64Microseconds(record.ttl)},
      {"metadata", MapToJson(record.metadata, false)},
      {"variables", MapToJson(record.variables, true)},
      {"programs", MapToJson(record.programs, true)},
  };
  return ToJson(line);
}

// Reads one JSON line at a time and says where a fault is.
class LineReader {
 public:
  explicit LineReader(std::istream& in) : in_(in) {}

  // False at the end of the stream.
  bool Next(std::string& line) {
    if (!std::getline(in_, line)) {
      return false;
    }
    ++number_;
    return true;
  }

  absl::Status Malformed(std::string_view what) const {
    return MakeError(
        absl::StatusCode::kInvalidArgument, reason::kSerializationError,
        absl::StrCat("session import, line ", number_, ": ", ToAbsl(what)));
  }

 private:
  std::istream& in_;
  size_t number_ = 0;
};

absl::Status ReadInt(const LineReader& reader, const Value& line,
                     const char* field, int64_t& out) {
  auto it = line.find(field);
  if (it == line.end() || !it->is_number_integer()) {
    return reader.Malformed(
        absl::StrCat(field, " is missing or not an integer"));
  }
  out = it->get<int64_t>();
  return absl::OkStatus();
}

absl::Status ReadMap(const LineReader& reader, const Value& line,
                     const char* field, bool binary,
                     std::map<std::string, std::string>& out) {
  auto it = line.find(field);
  if (it == line.end() || !it->is_object()) {
    return reader.Malformed(absl::StrCat(field, " is missing or not a map"));
  }
  for (const auto& [key, value] : it->items()) {
    if (binary && value.is_binary()) {
      const auto& bin = value.get_binary();
      out[key] = std::string(bin.begin(), bin.end());
    } else if (!binary && value.is_string()) {
      out[key] = value.get<std::string>();
    } else {
      return reader.Malformed(absl::StrCat(
          field, ".", key,
          binary ? " is not {\"$bytes\": ...}" : " is not a string"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<SessionRecord> ParseRecord(const LineReader& reader,
                                          const Value& line) {
  SessionRecord record;
  auto id = line.find("id");
  auto owner = line.find("owner");
  if (id == line.end() || !id->is_string() || owner == line.end() ||
      !owner->is_string()) {
    return reader.Malformed("id or owner is missing or not a string");
  }
  record.id = id->get<std::string>();
  record.owner = owner->get<std::string>();
  int64_t version = 0, created_us = 0, last_used_us = 0, ttl_us = 0;
  for (auto [field, out] : {std::pair{"version", &version},
                            {"created_us", &created_us},
                            {"last_used_us", &last_used_us},
                            {"ttl_us", &ttl_us}}) {
    if (absl::Status s = ReadInt(reader, line, field, *out); !s.ok()) {
      return s;
    }
  }
  if (version < 1) {
    return reader.Malformed("version must be at least 1");
  }
  record.version = static_cast<uint64_t>(version);
  record.created = absl::FromUnixMicros(created_us);
  record.last_used = absl::FromUnixMicros(last_used_us);
  record.ttl = absl::Microseconds(ttl_us);
  for (auto [field, binary, out] :
       {std::tuple{"metadata", false, &record.metadata},
        {"variables", true, &record.variables},
        {"programs", true, &record.programs}}) {
    if (absl::Status s = ReadMap(reader, line, field, binary, *out); !s.ok()) {
      return s;
    }
  }
  return record;
}

std::string ShowIds(const std::vector<std::string>& ids) {
  std::vector<std::string> shown;
  for (size_t i = 0; i < ids.size() && i < kIdsShown; ++i) {
    shown.push_back(internal::QuoteId(ids[i]));
  }
  std::string text = absl::StrJoin(shown, ", ");
  if (ids.size() > kIdsShown) {
    absl::StrAppend(&text, " and ", ids.size() - kIdsShown, " more");
  }
  return text;
}

absl::Status Mismatch(absl::StatusCode code, std::string_view message) {
  return MakeError(code, reason::kImportMismatch, message);
}

// Reads the header line; INVALID_ARGUMENT unless it names our format at a
// version this build reads.
absl::Status ReadHeader(LineReader& reader) {
  std::string text;
  if (!reader.Next(text)) {
    return Mismatch(absl::StatusCode::kDataLoss,
                    "session import: the input is empty");
  }
  absl::StatusOr<Value> header = ParseJson(text);
  if (!header.ok() || !header->is_object() || !header->contains("format") ||
      (*header)["format"] != std::string(kFormat)) {
    return reader.Malformed(
        absl::StrCat("not a session export (no \"format\": \"", ToAbsl(kFormat),
                     "\" header)"));
  }
  int64_t version = 0;
  if (absl::Status s = ReadInt(reader, *header, "version", version); !s.ok()) {
    return s;
  }
  if (version != kFormatVersion) {
    return reader.Malformed(absl::StrCat("export format version ", version,
                                         " is not ", kFormatVersion));
  }
  return absl::OkStatus();
}

// What an import has done so far.
struct ImportState {
  ImportResult result;
  std::vector<std::string> existing;  // ids the store already had
  std::vector<std::string> imported;
};

// The count the end line declares; nothing may follow it.
absl::StatusOr<size_t> ReadEndLine(LineReader& reader, const Value& line) {
  int64_t count = 0;
  if (absl::Status s = ReadInt(reader, line, "count", count); !s.ok()) {
    return s;
  }
  std::string text;
  if (reader.Next(text)) {
    return reader.Malformed("data after the end line");
  }
  return static_cast<size_t>(count);
}

// Restores one record unless it expired meanwhile. Only an existing id is
// not an error here; the caller reports those at the end.
absl::Status ImportOne(SessionStore& store, const ImportOptions& options,
                       absl::Time now, const SessionRecord& record,
                       ImportState& state) {
  ++state.result.read;
  if (record.last_used + record.ttl <= now) {
    ++state.result.skipped_expired;
    return absl::OkStatus();
  }
  absl::Status s = store.Restore(record);
  if (s.ok()) {
    ++state.result.imported;
    state.imported.push_back(record.id);
    return s;
  }
  if (ReasonOf(s) == reason::kSessionExists) {
    state.existing.push_back(record.id);
    state.result.skipped_existing += options.on_existing == OnExisting::kSkip;
    return absl::OkStatus();
  }
  return MakeError(
      s.code(), ReasonOf(s),
      absl::StrCat("session import stopped after ", state.result.imported,
                   " sessions: ", s.message()));
}

// Imports the records up to the end line, whose count it returns.
absl::StatusOr<size_t> ImportRecords(LineReader& reader, SessionStore& store,
                                     const ImportOptions& options,
                                     ImportState& state) {
  const absl::Time now =
      store.config().clock ? store.config().clock() : absl::Now();
  std::string text;
  while (reader.Next(text)) {
    absl::StatusOr<Value> line = ParseJson(text);
    if (!line.ok() || !line->is_object()) {
      return reader.Malformed("not a JSON object");
    }
    if (line->contains("end")) {
      return ReadEndLine(reader, *line);
    }
    absl::StatusOr<SessionRecord> record = ParseRecord(reader, *line);
    if (!record.ok()) {
      return record.status();
    }
    if (absl::Status s = ImportOne(store, options, now, *record, state);
        !s.ok()) {
      return s;
    }
  }
  return Mismatch(
      absl::StatusCode::kDataLoss,
      absl::StrCat("session import: the input ends after ", state.result.read,
                   " sessions without its end line; truncated?"));
}

// Every imported session that has not expired since must be in the store.
absl::Status VerifyImported(SessionStore& store,
                            const std::vector<std::string>& imported) {
  std::vector<std::string> missing;
  for (const std::string& id : imported) {
    absl::StatusOr<bool> exists = store.Exists(id);
    if (!exists.ok()) {
      return exists.status();
    }
    if (!*exists) {
      missing.push_back(id);
    }
  }
  if (missing.empty()) {
    return absl::OkStatus();
  }
  // A session can expire between its write and this check only if it was
  // within a hair of its TTL; report it all the same, it did not survive.
  return Mismatch(
      absl::StatusCode::kDataLoss,
      absl::StrCat(
          "session import: ", missing.size(), " of ", imported.size(),
          " imported sessions are not in the store: ", ShowIds(missing)));
}

}  // namespace

absl::StatusOr<size_t> ExportSessions(SessionStore& store, std::ostream& out) {
  out << ToJson({{"format", std::string(kFormat)}, {"version", kFormatVersion}})
      << '\n';
  size_t count = 0;
  PageRequest page;
  page.limit = kExportPage;
  do {
    absl::StatusOr<RecordPage> records = store.Scan(page);
    if (!records.ok()) {
      return records.status();
    }
    for (const SessionRef& record : records->sessions) {
      out << RecordLine(*record) << '\n';
      ++count;
    }
    page.start_after = records->next_start_after;
  } while (!page.start_after.empty() && out.good());
  out << ToJson({{"end", true}, {"count", count}}) << '\n';
  out.flush();
  if (!out.good()) {
    return MakeError(absl::StatusCode::kUnavailable, reason::kInternal,
                     absl::StrCat("session export: the output failed after ",
                                  count, " sessions"));
  }
  return count;
}

absl::StatusOr<ImportResult> ImportSessions(std::istream& in,
                                            SessionStore& store,
                                            const ImportOptions& options) {
  LineReader reader(in);
  if (absl::Status s = ReadHeader(reader); !s.ok()) {
    return s;
  }
  ImportState state;
  absl::StatusOr<size_t> declared =
      ImportRecords(reader, store, options, state);
  if (!declared.ok()) {
    return declared.status();
  }
  const ImportResult& result = state.result;
  if (*declared != result.read) {
    return Mismatch(
        absl::StatusCode::kDataLoss,
        absl::StrCat("session import: the end line says ", *declared,
                     " sessions, the input holds ", result.read));
  }
  if (absl::Status s = VerifyImported(store, state.imported); !s.ok()) {
    return s;
  }
  if (!state.existing.empty() && options.on_existing == OnExisting::kFail) {
    return Mismatch(
        absl::StatusCode::kFailedPrecondition,
        absl::StrCat("session import: imported ", result.imported, " of ",
                     result.read, " sessions; ", state.existing.size(),
                     " already existed: ", ShowIds(state.existing)));
  }
  return result;
}

}  // namespace snakepit
