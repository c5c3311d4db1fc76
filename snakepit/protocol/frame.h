// Host↔worker frames. docs/protocol.md is the specification; this file
// mirrors its layout and constants and must change with it.

#ifndef SNAKEPIT_PROTOCOL_FRAME_H_
#define SNAKEPIT_PROTOCOL_FRAME_H_

#include <cstddef>
#include <cstdint>
#include <deque>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "snakepit/base/value.h"

namespace snakepit::protocol {

inline constexpr int kProtocolVersion = 1;
inline constexpr size_t kPrefixSize = 20;
inline constexpr uint32_t kMaxHeaderBytes = 1u << 20;

// Fds of the worker's two sockets (docs/protocol.md, "fd" table).
inline constexpr int kChannelFd = 3;
inline constexpr int kControlFd = 4;

enum class FrameType : uint8_t {
  kHello = 1,
  kReady = 2,
  kFatal = 3,
  kCall = 10,
  kResult = 11,
  kError = 12,
  kChunk = 13,
  kLog = 14,
  kCancel = 20,
  kPing = 21,
  kPong = 22,
  kGoodbye = 30,
  kSessionRead = 40,
  kSessionWrite = 41,
  kSessionReply = 42,
  kSessionEnd = 43,
  // Host <-> zygote (docs/protocol.md, "Zygote").
  kFork = 60,
  kForked = 61,
  kExited = 62,
  kRelease = 63,
};

// True for the numbers the table in docs/protocol.md lists.
bool IsKnownFrameType(uint8_t type);

// The fixed 20-byte prefix, decoded.
struct FramePrefix {
  FrameType type = FrameType::kCall;
  uint32_t header_len = 0;
  uint32_t body_len = 0;
  uint64_t id = 0;
};

void EncodePrefix(const FramePrefix& prefix, char out[kPrefixSize]);

// Decodes and validates a prefix: known type, zero flags and reserved
// bits, header and body within the limits. protocol_error otherwise.
absl::StatusOr<FramePrefix> DecodePrefix(const char in[kPrefixSize],
                                         uint32_t max_body);

// One whole frame as received. The header is still msgpack.
struct Frame {
  FrameType type = FrameType::kCall;
  uint64_t id = 0;
  std::string header;
  std::string body;
};

// Decodes a header: a msgpack map with string keys, or empty.
absl::StatusOr<Value> DecodeHeader(std::string_view header);

// Cuts a byte stream into frames. Not thread-safe; one per connection.
//
// After an error the stream cannot be trusted and the reader stays
// failed.
class FrameReader {
 public:
  explicit FrameReader(uint32_t max_body) : max_body_(max_body) {}

  // Takes `size` more bytes of the stream.
  absl::Status Feed(const char* data, size_t size);

  // Reads everything waiting on the non-blocking `fd`, until EAGAIN, or
  // with `once` makes a single successful read. Sets `*eof` at end of
  // file. A large body is read straight into its frame, not copied.
  absl::Status ReadFrom(int fd, bool* eof, bool once = false);

  // Frames completed so far, oldest first.
  std::deque<Frame>& frames() { return frames_; }

 private:
  // Moves bytes from `data` into the frame being built; returns how many
  // it used.
  absl::StatusOr<size_t> Consume(const char* data, size_t size);

  const uint32_t max_body_;
  absl::Status failed_;
  char prefix_[kPrefixSize];
  size_t prefix_have_ = 0;
  bool in_frame_ = false;
  FramePrefix current_;
  Frame building_;
  size_t header_have_ = 0;
  size_t body_have_ = 0;
  std::deque<Frame> frames_;
  std::string scratch_;
};

// Writes a msgpack map header by hand. The host writes one small header
// per call, so it avoids building a Value for it.
class HeaderWriter {
 public:
  void MapHeader(uint32_t entries);
  void String(std::string_view s);
  void Uint(uint64_t v);
  void Bool(bool v);
  const std::string& data() const { return out_; }

 private:
  std::string out_;
};

}  // namespace snakepit::protocol

#endif  // SNAKEPIT_PROTOCOL_FRAME_H_
