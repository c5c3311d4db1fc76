// Values passed to and returned from Python functions.
//
// A Value is an nlohmann::json document. It keeps what msgpack carries:
// bytes (Value::binary), signed and unsigned 64-bit ints, float64 bit for
// bit (NaN, ±inf and -0.0 included), bools, strings, arrays and maps with
// string keys. On the wire every value is msgpack (docs/protocol.md).
//
// JSON text, used at the edges (CLI), cannot spell everything a Value
// holds, so ToJson and ParseJson agree on two extensions: bytes are
// {"$bytes": "<base64>"}, and non-finite floats are NaN, Infinity and
// -Infinity, as Python's json module writes them.

#ifndef SNAKEPIT_BASE_VALUE_H_
#define SNAKEPIT_BASE_VALUE_H_

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace snakepit {

using Value = nlohmann::json;

// Nesting limit for arrays and maps, shared with the worker.
inline constexpr int kDefaultMaxDepth = 128;

// Makes a bytes Value.
Value Bytes(std::string_view data);

// Encodes `value` as msgpack. payload_too_deep past `max_depth`.
absl::StatusOr<std::string> EncodeValue(const Value& value,
                                        int max_depth = kDefaultMaxDepth);

// Decodes one msgpack value that fills `data` exactly.
// serialization_error for malformed input or a map key that is not a
// string; payload_too_deep past `max_depth`.
absl::StatusOr<Value> DecodeValue(std::string_view data,
                                  int max_depth = kDefaultMaxDepth);

// Checks that `data` is exactly one well-formed msgpack value no deeper
// than `max_depth`, without building it. Iterative: safe on any input.
// With `string_keys`, map keys must be strings.
absl::Status CheckMsgpack(std::string_view data, int max_depth,
                          bool string_keys);

// Splits a msgpack map with string keys into (key, raw msgpack value)
// pairs, without decoding the values.
absl::StatusOr<std::vector<std::pair<std::string, std::string>>>
SplitMsgpackMap(std::string_view data, int max_depth = kDefaultMaxDepth);

// The msgpack map of `entries`, whose values are raw msgpack already.
std::string JoinMsgpackMap(const std::map<std::string, std::string>& entries);

// Parses JSON text with the extensions above. serialization_error with
// the line and column of the first fault.
absl::StatusOr<Value> ParseJson(std::string_view text,
                                int max_depth = kDefaultMaxDepth);

// Writes `value` as JSON text with the extensions above; `indent` < 0
// writes one line.
std::string ToJson(const Value& value, int indent = -1);

}  // namespace snakepit

#endif  // SNAKEPIT_BASE_VALUE_H_
