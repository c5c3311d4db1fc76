// libFuzzer target: the host's decoding of bytes a worker sends. Frames
// are cut by FrameReader; their headers go through DecodeHeader and
// their bodies through DecodeValue, as the pool and a caller would.
// Any input must give frames or a clean error: no crash, no hang.

#include <cstddef>
#include <cstdint>

#include "snakepit/base/value.h"
#include "snakepit/protocol/frame.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  snakepit::protocol::FrameReader reader(1 << 20);
  // Feed in two pieces to exercise reassembly at an input-chosen point.
  size_t cut = size > 0 ? data[0] % (size + 1) : 0;
  const char* bytes = reinterpret_cast<const char*>(data);
  if (reader.Feed(bytes, cut).ok()) {
    (void)reader.Feed(bytes + cut, size - cut);
  }
  for (const snakepit::protocol::Frame& frame : reader.frames()) {
    (void)snakepit::protocol::DecodeHeader(frame.header);
    (void)snakepit::DecodeValue(frame.body);
  }
  // The whole input as one msgpack value, too.
  (void)snakepit::DecodeValue(
      std::string_view(reinterpret_cast<const char*>(data), size));
  return 0;
}
