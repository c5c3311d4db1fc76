#include "snakepit/protocol/frame.h"

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "snakepit/base/status.h"
#include "snakepit/os/fd.h"
#include "snakepit/os/memory.h"

namespace snakepit::protocol {
namespace {

void PutLittle(char* out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) {
    out[i] = static_cast<char>((v >> (8 * i)) & 0xff);
  }
}

uint64_t GetLittle(const char* in, int bytes) {
  uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) {
    v = (v << 8) | static_cast<unsigned char>(in[i]);
  }
  return v;
}

absl::Status ProtocolError(std::string_view message) {
  return ReasonError(reason::kProtocolError, message);
}

// Bytes read per read() when no large body is pending.
constexpr size_t kReadChunk = 64 * 1024;

// Bodies from this size up are allocated on huge pages where the system
// offers them (os::AdviseHugePages). A body is a fresh string that is
// moved on to the caller, so its memory cannot be reused; with 4 KiB
// pages, faulting it in costs about twice what reading into it does.
constexpr size_t kHugePageBody = 4u << 20;

// Sizes `body` to `size` bytes for the frame's body to be read into.
void SizeBody(std::string* body, size_t size) {
  if (size >= kHugePageBody) {
    body->reserve(size);
    os::AdviseHugePages(body->data(), size);
  }
  body->resize(size);
}

}  // namespace

bool IsKnownFrameType(uint8_t type) {
  switch (static_cast<FrameType>(type)) {
    case FrameType::kHello:
    case FrameType::kReady:
    case FrameType::kFatal:
    case FrameType::kCall:
    case FrameType::kResult:
    case FrameType::kError:
    case FrameType::kChunk:
    case FrameType::kLog:
    case FrameType::kCancel:
    case FrameType::kPing:
    case FrameType::kPong:
    case FrameType::kGoodbye:
    case FrameType::kSessionRead:
    case FrameType::kSessionWrite:
    case FrameType::kSessionReply:
    case FrameType::kSessionEnd:
    case FrameType::kFork:
    case FrameType::kForked:
    case FrameType::kExited:
    case FrameType::kRelease:
      return true;
  }
  return false;
}

void EncodePrefix(const FramePrefix& prefix, char out[kPrefixSize]) {
  out[0] = static_cast<char>(prefix.type);
  out[1] = 0;
  out[2] = 0;
  out[3] = 0;
  PutLittle(out + 4, prefix.header_len, 4);
  PutLittle(out + 8, prefix.body_len, 4);
  PutLittle(out + 12, prefix.id, 8);
}

absl::StatusOr<FramePrefix> DecodePrefix(const char in[kPrefixSize],
                                         uint32_t max_body) {
  auto type = static_cast<uint8_t>(in[0]);
  if (!IsKnownFrameType(type)) {
    return ProtocolError(absl::StrCat("unknown frame type ", type));
  }
  if (in[1] != 0 || in[2] != 0 || in[3] != 0) {
    return ProtocolError("frame flags or reserved bits set");
  }
  FramePrefix prefix;
  prefix.type = static_cast<FrameType>(type);
  prefix.header_len = static_cast<uint32_t>(GetLittle(in + 4, 4));
  prefix.body_len = static_cast<uint32_t>(GetLittle(in + 8, 4));
  prefix.id = GetLittle(in + 12, 8);
  if (prefix.header_len > kMaxHeaderBytes) {
    return ProtocolError(absl::StrCat("frame header of ", prefix.header_len,
                                      " bytes exceeds the limit of ",
                                      kMaxHeaderBytes));
  }
  if (prefix.body_len > max_body) {
    return ReasonError(reason::kPayloadTooLarge,
                       absl::StrCat("frame body of ", prefix.body_len,
                                    " bytes exceeds the ", max_body,
                                    "-byte payload limit (worker→host)"));
  }
  return prefix;
}

absl::StatusOr<Value> DecodeHeader(std::string_view header) {
  if (header.empty()) {
    return Value::object();
  }
  absl::StatusOr<Value> value = DecodeValue(header, 8);
  if (!value.ok()) {
    return ProtocolError(absl::StrCat("frame header: ",
                                      value.status().message()));
  }
  if (!value->is_object()) {
    return ProtocolError("frame header is not a map");
  }
  return value;
}

absl::StatusOr<size_t> FrameReader::Consume(const char* data, size_t size) {
  size_t used = 0;
  if (!in_frame_) {
    size_t take = std::min(size, kPrefixSize - prefix_have_);
    std::memcpy(prefix_ + prefix_have_, data, take);
    prefix_have_ += take;
    used = take;
    if (prefix_have_ < kPrefixSize) {
      return used;
    }
    absl::StatusOr<FramePrefix> prefix = DecodePrefix(prefix_, max_body_);
    if (!prefix.ok()) {
      return prefix.status();
    }
    current_ = *prefix;
    building_ = Frame{current_.type, current_.id, {}, {}};
    building_.header.resize(current_.header_len);
    SizeBody(&building_.body, current_.body_len);
    header_have_ = 0;
    body_have_ = 0;
    in_frame_ = true;
  }

  size_t take = std::min(size - used, current_.header_len - header_have_);
  std::memcpy(building_.header.data() + header_have_, data + used, take);
  header_have_ += take;
  used += take;
  take = std::min(size - used, current_.body_len - body_have_);
  std::memcpy(building_.body.data() + body_have_, data + used, take);
  body_have_ += take;
  used += take;

  if (header_have_ == current_.header_len &&
      body_have_ == current_.body_len) {
    frames_.push_back(std::move(building_));
    in_frame_ = false;
    prefix_have_ = 0;
  }
  return used;
}

absl::Status FrameReader::Feed(const char* data, size_t size) {
  while (failed_.ok() && size > 0) {
    absl::StatusOr<size_t> used = Consume(data, size);
    if (!used.ok()) {
      failed_ = used.status();
      break;
    }
    data += *used;
    size -= *used;
  }
  return failed_;
}

absl::Status FrameReader::ReadFrom(int fd, bool* eof, bool once) {
  *eof = false;
  bool read_any = false;
  while (failed_.ok() && !(once && read_any)) {
    read_any = true;
    // A body still to come in full is read in place.
    size_t body_left = in_frame_ && header_have_ == current_.header_len
                           ? current_.body_len - body_have_
                           : 0;
    if (body_left > kReadChunk) {
      ssize_t n = os::ReadSome(fd, building_.body.data() + body_have_,
                               body_left);
      if (n > 0) {
        body_have_ += static_cast<size_t>(n);
        if (body_have_ == current_.body_len) {
          frames_.push_back(std::move(building_));
          in_frame_ = false;
          prefix_have_ = 0;
        }
        continue;
      }
      if (n == 0) {
        *eof = true;
        return failed_;
      }
      if (errno == EAGAIN) {
        return failed_;
      }
      if (errno == ECONNRESET) {  // the peer died with unread input
        *eof = true;
        return failed_;
      }
      return ErrnoToStatus(errno, "read from worker");
    }

    scratch_.resize(kReadChunk);
    ssize_t n = os::ReadSome(fd, scratch_.data(), kReadChunk);
    if (n == 0) {
      *eof = true;
      return failed_;
    }
    if (n < 0 && errno == ECONNRESET) {  // the peer died with unread input
      *eof = true;
      return failed_;
    }
    if (n < 0) {
      return errno == EAGAIN ? failed_
                             : ErrnoToStatus(errno, "read from worker");
    }
    if (absl::Status s = Feed(scratch_.data(), static_cast<size_t>(n));
        !s.ok()) {
      return s;
    }
  }
  return failed_;
}

void HeaderWriter::MapHeader(uint32_t entries) {
  if (entries < 16) {
    out_ += static_cast<char>(0x80 | entries);
  } else {
    out_ += static_cast<char>(0xde);
    out_ += static_cast<char>(entries >> 8);
    out_ += static_cast<char>(entries & 0xff);
  }
}

void HeaderWriter::String(std::string_view s) {
  size_t n = s.size();
  if (n < 32) {
    out_ += static_cast<char>(0xa0 | n);
  } else if (n < 256) {
    out_ += static_cast<char>(0xd9);
    out_ += static_cast<char>(n);
  } else if (n < 65536) {
    out_ += static_cast<char>(0xda);
    out_ += static_cast<char>(n >> 8);
    out_ += static_cast<char>(n & 0xff);
  } else {
    out_ += static_cast<char>(0xdb);
    for (int shift = 24; shift >= 0; shift -= 8) {
      out_ += static_cast<char>((n >> shift) & 0xff);
    }
  }
  out_.append(s);
}

void HeaderWriter::Uint(uint64_t v) {
  if (v < 128) {
    out_ += static_cast<char>(v);
    return;
  }
  out_ += static_cast<char>(0xcf);
  for (int shift = 56; shift >= 0; shift -= 8) {
    out_ += static_cast<char>((v >> shift) & 0xff);
  }
}

void HeaderWriter::Bool(bool v) { out_ += static_cast<char>(v ? 0xc3 : 0xc2); }

}  // namespace snakepit::protocol
