#include "snakepit/base/log_format.h"

#include <time.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <iterator>
#include <memory>
#include <string_view>

#include "spdlog/formatter.h"
#include "spdlog/pattern_formatter.h"

#include "snakepit/base/log.h"

namespace snakepit {
namespace {

constexpr char kTextPattern[] = "%Y-%m-%dT%H:%M:%S.%e %l %v";

void Append(std::string_view s, spdlog::memory_buf_t& out) {
  out.append(s.data(), s.data() + s.size());
}

// The length a UTF-8 sequence announces in its first byte; 0 for a byte
// that cannot start one.
size_t Utf8LengthFromLead(uint8_t lead) {
  if (lead < 0x80) {
    return 1;
  }
  if ((lead >> 5) == 0x6) {
    return 2;
  }
  if ((lead >> 4) == 0xE) {
    return 3;
  }
  return (lead >> 3) == 0x1E ? 4 : 0;
}

// Length of the well-formed UTF-8 sequence that starts at s[i], or 0 when
// the bytes there are not one (stray continuation byte, truncated or
// overlong sequence, surrogate, beyond U+10FFFF).
size_t Utf8Length(std::string_view s, size_t i) {
  const auto byte = [&](size_t k) { return static_cast<uint8_t>(s[i + k]); };
  const size_t n = Utf8LengthFromLead(byte(0));
  if (n <= 1) {
    return n;
  }
  if (i + n > s.size()) {
    return 0;
  }
  uint32_t cp = byte(0) & (0x7F >> n);
  for (size_t k = 1; k < n; ++k) {
    if ((byte(k) & 0xC0) != 0x80) {
      return 0;
    }
    cp = (cp << 6) | (byte(k) & 0x3F);
  }
  constexpr uint32_t kMinForLength[] = {0, 0, 0x80, 0x800, 0x10000};
  const bool valid =
      cp >= kMinForLength[n] && cp <= 0x10FFFF && (cp < 0xD800 || cp > 0xDFFF);
  return valid ? n : 0;
}

// Appends `s` as the inside of a JSON string. Bytes that are not UTF-8
// (a worker may print anything) become U+FFFD, so every line stays valid
// JSON.
void AppendJsonEscaped(std::string_view s, spdlog::memory_buf_t& out) {
  size_t i = 0;
  while (i < s.size()) {
    const char c = s[i];
    const size_t n = Utf8Length(s, i);
    if (n == 0) {
      Append("\\ufffd", out);
      i += 1;
      continue;
    }
    if (c == '"' || c == '\\') {
      out.push_back('\\');
      out.push_back(c);
    } else if (c == '\n') {
      Append("\\n", out);
    } else if (c == '\t') {
      Append("\\t", out);
    } else if (c == '\r') {
      Append("\\r", out);
    } else if (static_cast<uint8_t>(c) < 0x20) {
      fmt::format_to(std::back_inserter(out), "\\u{:04x}",
                     static_cast<unsigned>(c));
    } else {
      Append(s.substr(i, n), out);
    }
    i += n;
  }
}

// "2026-12-04T16:00:00.123Z": UTC, so lines from nodes in different
// zones sort together.
void AppendTimestamp(std::chrono::system_clock::time_point t,
                     spdlog::memory_buf_t& out) {
  using std::chrono::duration_cast;
  const auto since_epoch =
      duration_cast<std::chrono::milliseconds>(t.time_since_epoch());
  const std::time_t secs = static_cast<std::time_t>(since_epoch.count() / 1000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  fmt::format_to(std::back_inserter(out),
                 "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                 tm.tm_min, tm.tm_sec, since_epoch.count() % 1000);
}

// One JSON object per line: {"ts":...,"level":...,"msg":...}.
//
// A custom formatter, not a pattern such as {"msg":"%v"}: spdlog copies
// the message verbatim, and a quote, backslash, newline or stray byte in
// it (a Python traceback, a worker's stderr line) would break the line.
// spdlog calls format() under the sink's lock, so it needs none of its own.
class JsonFormatter final : public spdlog::formatter {
 public:
  void format(const spdlog::details::log_msg& msg,
              spdlog::memory_buf_t& dest) override {
    Append("{\"ts\":\"", dest);
    AppendTimestamp(msg.time, dest);
    Append("\",\"level\":\"", dest);
    const auto level = spdlog::level::to_string_view(msg.level);
    Append(std::string_view(level.data(), level.size()), dest);
    Append("\",\"msg\":\"", dest);
    AppendJsonEscaped(std::string_view(msg.payload.data(), msg.payload.size()),
                      dest);
    Append("\"}\n", dest);
  }

  std::unique_ptr<spdlog::formatter> clone() const override {
    return std::make_unique<JsonFormatter>();
  }
};

spdlog::level::level_enum ParseLevel(const std::string& level) {
  spdlog::level::level_enum parsed = spdlog::level::from_str(level);
  // from_str answers "off" for names it does not know.
  if (parsed == spdlog::level::off && level != "off") {
    return spdlog::level::info;
  }
  return parsed;
}

}  // namespace

// Log() registers the logger on first use, or returns the one the
// embedding program registered, so going through it configures the
// logger whether or not anything has logged yet. set_formatter locks each
// sink, so this is safe while other threads log.
void ConfigureLogging(const std::string& format, const std::string& level) {
  const bool json =
      format == "json" || (format == "auto" && !isatty(STDERR_FILENO));
  spdlog::logger& logger = Log();
  if (json) {
    logger.set_formatter(std::make_unique<JsonFormatter>());
  } else {
    logger.set_formatter(
        std::make_unique<spdlog::pattern_formatter>(kTextPattern));
  }
  logger.set_level(ParseLevel(level));
}

}  // namespace snakepit
