#include "snakepit/base/value.h"

#include <cmath>
#include <cstring>
#include <map>
#include <utility>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "snakepit/base/status.h"

namespace snakepit {
namespace {

// Deepest level of arrays and maps in `value`, counted without recursion
// so that a hostile document cannot exhaust the stack.
int DepthOf(const Value& value) {
  std::vector<std::pair<const Value*, int>> stack{{&value, 0}};
  int deepest = 0;
  while (!stack.empty()) {
    auto [node, depth] = stack.back();
    stack.pop_back();
    if (!node->is_structured()) {
      continue;
    }
    deepest = std::max(deepest, depth + 1);
    for (const Value& child : *node) {
      stack.emplace_back(&child, depth + 1);
    }
  }
  return deepest;
}

absl::Status TooDeep(int max_depth) {
  return ReasonError(reason::kPayloadTooDeep,
                     absl::StrCat("value nested deeper than the limit of ",
                                  max_depth, " levels"));
}

// Reads the big-endian unsigned integer of `n` bytes at `p`.
uint64_t ReadBig(const unsigned char* p, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; ++i) {
    v = (v << 8) | p[i];
  }
  return v;
}

// One msgpack item's shape: how many bytes of header it needs (`head`),
// then either a payload of `skip` bytes or `children` nested items.
struct ItemShape {
  bool valid = true;
  bool is_string = false;
  size_t head = 1;        // bytes of type and length fields
  int len_bytes = 0;      // length field size after the type byte
  uint64_t skip = 0;      // fixed payload bytes, when len_bytes == 0
  int count_kind = 0;     // 0 scalar/blob, 1 array, 2 map
  uint64_t fixed_count = 0;
  bool has_fixed_count = false;
};

ItemShape ShapeOf(unsigned char t) {
  ItemShape s;
  if (t <= 0x7f || t >= 0xe0 || t == 0xc0 || t == 0xc2 || t == 0xc3) {
    return s;
  }
  if ((t & 0xe0) == 0xa0) {
    s.is_string = true;
    s.skip = t & 0x1f;
    return s;
  }
  if ((t & 0xf0) == 0x90 || (t & 0xf0) == 0x80) {
    s.count_kind = (t & 0xf0) == 0x90 ? 1 : 2;
    s.fixed_count = t & 0x0f;
    s.has_fixed_count = true;
    return s;
  }
  switch (t) {
    case 0xcc: case 0xd0: s.skip = 1; return s;
    case 0xcd: case 0xd1: s.skip = 2; return s;
    case 0xca: case 0xce: case 0xd2: s.skip = 4; return s;
    case 0xcb: case 0xcf: case 0xd3: s.skip = 8; return s;
    case 0xd4: s.skip = 2; return s;   // fixext 1: type + 1
    case 0xd5: s.skip = 3; return s;
    case 0xd6: s.skip = 5; return s;
    case 0xd7: s.skip = 9; return s;
    case 0xd8: s.skip = 17; return s;
    case 0xd9: s.is_string = true; s.len_bytes = 1; return s;
    case 0xda: s.is_string = true; s.len_bytes = 2; return s;
    case 0xdb: s.is_string = true; s.len_bytes = 4; return s;
    case 0xc4: s.len_bytes = 1; return s;
    case 0xc5: s.len_bytes = 2; return s;
    case 0xc6: s.len_bytes = 4; return s;
    case 0xc7: s.len_bytes = 1; s.skip = 1; return s;  // ext 8: + type
    case 0xc8: s.len_bytes = 2; s.skip = 1; return s;
    case 0xc9: s.len_bytes = 4; s.skip = 1; return s;
    case 0xdc: s.count_kind = 1; s.len_bytes = 2; return s;
    case 0xdd: s.count_kind = 1; s.len_bytes = 4; return s;
    case 0xde: s.count_kind = 2; s.len_bytes = 2; return s;
    case 0xdf: s.count_kind = 2; s.len_bytes = 4; return s;
    default: s.valid = false; return s;  // 0xc1, never used
  }
}

absl::Status Malformed(size_t offset, std::string_view what) {
  return ReasonError(reason::kSerializationError,
                     absl::StrCat("malformed msgpack at byte ", offset, ": ",
                                  ToAbsl(what)));
}

// An open array or map while scanning: items still to read and, for maps,
// whether the next item is a key.
struct OpenContainer {
  uint64_t remaining;
  bool is_map;
};

}  // namespace

Value Bytes(std::string_view data) {
  return Value::binary(std::vector<uint8_t>(data.begin(), data.end()));
}

absl::StatusOr<std::string> EncodeValue(const Value& value, int max_depth) {
  if (DepthOf(value) > max_depth) {
    return TooDeep(max_depth);
  }
  std::string out;
  Value::to_msgpack(value, nlohmann::detail::output_adapter<char>(out));
  return out;
}

namespace {

// Scans the one item that starts at `pos`; returns where it ends.
absl::StatusOr<size_t> ScanItem(std::string_view data, size_t pos,
                                int max_depth, bool string_keys) {
  const auto* p = reinterpret_cast<const unsigned char*>(data.data());
  const size_t n = data.size();
  std::vector<OpenContainer> open;
  bool done = false;
  while (!done) {
    if (pos >= n) {
      return Malformed(pos, "truncated value");
    }
    bool expect_key = !open.empty() && open.back().is_map &&
                      open.back().remaining % 2 == 0;
    ItemShape shape = ShapeOf(p[pos]);
    if (!shape.valid) {
      return Malformed(pos, "unknown type byte 0xc1");
    }
    if (expect_key && string_keys && !shape.is_string) {
      return ReasonError(
          reason::kSerializationError,
          absl::StrCat("map key at byte ", pos, " is not a string; a C++ "
                       "Value holds string keys only"));
    }
    size_t item = pos;
    pos += 1;
    uint64_t length = 0;
    if (shape.len_bytes > 0) {
      if (n - pos < static_cast<size_t>(shape.len_bytes)) {
        return Malformed(item, "truncated length");
      }
      length = ReadBig(p + pos, shape.len_bytes);
      pos += shape.len_bytes;
    }

    uint64_t children = 0;
    if (shape.count_kind != 0) {
      children = shape.has_fixed_count ? shape.fixed_count : length;
      if (shape.count_kind == 2) {
        children *= 2;
      }
      if (children > n - pos) {  // every child needs at least one byte
        return Malformed(item, "container longer than the data");
      }
    } else {
      uint64_t payload = shape.skip + (shape.len_bytes > 0 ? length : 0);
      if (payload > n - pos) {
        return Malformed(item, "truncated payload");
      }
      pos += payload;
    }

    if (!open.empty()) {
      open.back().remaining -= 1;
    }
    if (children > 0) {
      if (static_cast<int>(open.size()) + 1 > max_depth) {
        return TooDeep(max_depth);
      }
      open.push_back({children, shape.count_kind == 2});
    } else if (shape.count_kind != 0 && static_cast<int>(open.size()) + 1 >
                                            max_depth) {
      return TooDeep(max_depth);
    }
    while (!open.empty() && open.back().remaining == 0) {
      open.pop_back();
    }
    done = open.empty();
  }
  return pos;
}

}  // namespace

absl::Status CheckMsgpack(std::string_view data, int max_depth,
                          bool string_keys) {
  absl::StatusOr<size_t> end = ScanItem(data, 0, max_depth, string_keys);
  if (!end.ok()) {
    return end.status();
  }
  if (*end != data.size()) {
    return Malformed(*end, "trailing bytes after the value");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::pair<std::string, std::string>>>
SplitMsgpackMap(std::string_view data, int max_depth) {
  if (absl::Status s = CheckMsgpack(data, max_depth, true); !s.ok()) {
    return s;
  }
  const auto* p = reinterpret_cast<const unsigned char*>(data.data());
  uint64_t count = 0;
  size_t pos = 1;
  if ((p[0] & 0xf0) == 0x80) {
    count = p[0] & 0x0f;
  } else if (p[0] == 0xde) {
    count = ReadBig(p + 1, 2);
    pos = 3;
  } else if (p[0] == 0xdf) {
    count = ReadBig(p + 1, 4);
    pos = 5;
  } else {
    return ReasonError(reason::kSerializationError, "expected a msgpack map");
  }
  std::vector<std::pair<std::string, std::string>> out;
  for (uint64_t i = 0; i < count; ++i) {
    size_t key_end = *ScanItem(data, pos, max_depth, true);
    absl::StatusOr<Value> key = DecodeValue(data.substr(pos, key_end - pos));
    size_t value_end = *ScanItem(data, key_end, max_depth, true);
    out.emplace_back(key->get<std::string>(),
                     std::string(data.substr(key_end, value_end - key_end)));
    pos = value_end;
  }
  return out;
}

std::string JoinMsgpackMap(
    const std::map<std::string, std::string>& entries) {
  std::string out;
  size_t n = entries.size();
  if (n < 16) {
    out += static_cast<char>(0x80 | n);
  } else {
    out += static_cast<char>(0xdf);
    for (int shift = 24; shift >= 0; shift -= 8) {
      out += static_cast<char>((n >> shift) & 0xff);
    }
  }
  for (const auto& [key, raw] : entries) {
    out += *EncodeValue(Value(key));
    out += raw;
  }
  return out;
}

absl::StatusOr<Value> DecodeValue(std::string_view data, int max_depth) {
  if (absl::Status s = CheckMsgpack(data, max_depth, true); !s.ok()) {
    return s;
  }
  Value value = Value::from_msgpack(data.begin(), data.end(), true, false);
  if (value.is_discarded()) {
    return ReasonError(reason::kSerializationError,
                       "msgpack value could not be decoded");
  }
  return value;
}

namespace {

bool IsNumberChar(char c) {
  return (c >= '0' && c <= '9') || c == '-' || c == '+' || c == '.' ||
         c == 'e' || c == 'E';
}

// An integer literal that no 64-bit int holds would silently become a
// float in the parser; it is an error instead.
absl::Status CheckIntegerLiteral(std::string_view token) {
  if (token.find_first_of(".eE") != std::string_view::npos) {
    return absl::OkStatus();
  }
  int64_t as_signed;
  uint64_t as_unsigned;
  if (absl::SimpleAtoi(ToAbsl(token), &as_signed) ||
      absl::SimpleAtoi(ToAbsl(token), &as_unsigned)) {
    return absl::OkStatus();
  }
  return ReasonError(
      reason::kSerializationError,
      absl::StrCat("integer ", ToAbsl(token.substr(0, 40)),
                   token.size() > 40 ? "..." : "",
                   " does not fit in 64 bits; send it as a string"));
}

// Replaces the bare tokens NaN, Infinity and -Infinity outside strings
// with marker objects that plain JSON can hold; ConvertMarkers turns them
// back into floats after parsing. Also checks integer literals.
absl::StatusOr<std::string> MarkNonFinite(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (!in_string && ((c >= '0' && c <= '9') ||
                       (c == '-' && i + 1 < text.size() &&
                        text[i + 1] >= '0' && text[i + 1] <= '9'))) {
      size_t end = i;
      while (end < text.size() && IsNumberChar(text[end])) {
        ++end;
      }
      std::string_view token = text.substr(i, end - i);
      if (absl::Status s = CheckIntegerLiteral(token); !s.ok()) {
        return s;
      }
      out.append(token);
      i = end - 1;
      continue;
    }
    if (in_string) {
      out += c;
      if (c == '\\' && i + 1 < text.size()) {
        out += text[++i];
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
    }
    std::string_view rest = text.substr(i);
    if (rest.starts_with("NaN")) {
      out += R"({"$float":"nan"})";
      i += 2;
    } else if (rest.starts_with("Infinity")) {
      out += R"({"$float":"inf"})";
      i += 7;
    } else if (rest.starts_with("-Infinity")) {
      out += R"({"$float":"-inf"})";
      i += 8;
    } else {
      out += c;
    }
  }
  return out;
}

// Turns {"$bytes": b64} into bytes and {"$float": ...} into floats.
absl::Status ConvertMarkers(Value& root) {
  std::vector<Value*> stack{&root};
  while (!stack.empty()) {
    Value* node = stack.back();
    stack.pop_back();
    if (node->is_object() && node->size() == 1) {
      auto it = node->begin();
      if (it.key() == "$bytes" && it->is_string()) {
        std::string raw;
        if (!absl::Base64Unescape(it->get<std::string>(), &raw)) {
          return ReasonError(reason::kSerializationError,
                             "$bytes holds invalid base64");
        }
        *node = Bytes(raw);
        continue;
      }
      if (it.key() == "$float" && it->is_string()) {
        std::string f = it->get<std::string>();
        double inf = std::numeric_limits<double>::infinity();
        if (f == "nan" || f == "inf" || f == "-inf") {
          *node = f == "nan" ? std::nan("") : (f == "inf" ? inf : -inf);
          continue;
        }
      }
    }
    if (node->is_structured()) {
      for (Value& child : *node) {
        stack.push_back(&child);
      }
    }
  }
  return absl::OkStatus();
}

std::string LineAndColumn(std::string_view text, size_t byte) {
  size_t line = 1;
  size_t column = 1;
  for (size_t i = 0; i + 1 < byte && i < text.size(); ++i) {
    if (text[i] == '\n') {
      ++line;
      column = 1;
    } else {
      ++column;
    }
  }
  return absl::StrCat("line ", line, ", column ", column);
}

}  // namespace

absl::StatusOr<Value> ParseJson(std::string_view text, int max_depth) {
  absl::StatusOr<std::string> marked_or = MarkNonFinite(text);
  if (!marked_or.ok()) {
    return marked_or.status();
  }
  const std::string& marked = *marked_or;
  bool too_deep = false;
  Value::parser_callback_t depth_guard =
      [&](int depth, Value::parse_event_t, Value&) {
        if (depth > max_depth) {
          too_deep = true;
        }
        return true;
      };
  Value value;
  try {
    value = Value::parse(marked, depth_guard);
  } catch (const Value::parse_error& e) {
    // Offsets point into the marked text; markers only ever add bytes, so
    // the position is at or past the fault and close enough to find it.
    size_t byte = std::min<size_t>(e.byte, text.size());
    std::string what = e.what();
    size_t cut = what.find("syntax error");
    return ReasonError(
        reason::kSerializationError,
        absl::StrCat("invalid JSON at ", LineAndColumn(text, byte), ": ",
                     cut == std::string::npos ? what : what.substr(cut)));
  } catch (const Value::exception& e) {
    // Numbers out of range (1e400) and the like.
    std::string what = e.what();
    size_t cut = what.find("] ");
    return ReasonError(reason::kSerializationError,
                       absl::StrCat("invalid JSON: ",
                                    cut == std::string::npos
                                        ? what
                                        : what.substr(cut + 2)));
  }
  if (too_deep) {
    return TooDeep(max_depth);
  }
  if (absl::Status s = ConvertMarkers(value); !s.ok()) {
    return s;
  }
  return value;
}

namespace {

void WriteJson(const Value& value, int indent, int level, std::string& out);

void NewLine(int indent, int level, std::string& out) {
  if (indent >= 0) {
    out += '\n';
    out.append(static_cast<size_t>(indent * level), ' ');
  }
}

void WriteScalar(const Value& value, std::string& out) {
  if (value.is_number_float()) {
    double d = value.get<double>();
    if (std::isnan(d)) {
      out += "NaN";
      return;
    }
    if (std::isinf(d)) {
      out += d > 0 ? "Infinity" : "-Infinity";
      return;
    }
  }
  if (value.is_binary()) {
    const auto& bin = value.get_binary();
    std::string_view raw(reinterpret_cast<const char*>(bin.data()),
                         bin.size());
    out += R"({"$bytes":")" + absl::Base64Escape(ToAbsl(raw)) + "\"}";
    return;
  }
  out += value.dump(-1, ' ', false, Value::error_handler_t::replace);
}

void WriteJson(const Value& value, int indent, int level, std::string& out) {
  if (!value.is_structured()) {
    WriteScalar(value, out);
    return;
  }
  const bool is_object = value.is_object();
  out += is_object ? '{' : '[';
  if (value.empty()) {
    out += is_object ? '}' : ']';
    return;
  }
  bool first = true;
  for (auto it = value.begin(); it != value.end(); ++it) {
    if (!first) {
      out += ',';
    }
    first = false;
    NewLine(indent, level + 1, out);
    if (is_object) {
      WriteScalar(Value(it.key()), out);
      out += indent >= 0 ? ": " : ":";
    }
    WriteJson(*it, indent, level + 1, out);
  }
  NewLine(indent, level, out);
  out += is_object ? '}' : ']';
}

}  // namespace

std::string ToJson(const Value& value, int indent) {
  std::string out;
  WriteJson(value, indent, 0, out);
  return out;
}

}  // namespace snakepit
