#include "snakepit/protocol/frame.h"

#include <sys/socket.h>

#include "gtest/gtest.h"
#include "snakepit/base/status.h"
#include "snakepit/os/fd.h"

namespace snakepit::protocol {
namespace {

std::string MakeFrame(FrameType type, uint64_t id, const std::string& header,
                      const std::string& body) {
  char prefix[kPrefixSize];
  EncodePrefix({type, static_cast<uint32_t>(header.size()),
                static_cast<uint32_t>(body.size()), id},
               prefix);
  return std::string(prefix, kPrefixSize) + header + body;
}

TEST(FrameTest, PrefixLayoutMatchesTheSpec) {
  char prefix[kPrefixSize];
  EncodePrefix({FrameType::kResult, 0x0102, 0x030405, 0x1122334455667788},
               prefix);
  const unsigned char expected[kPrefixSize] = {
      11, 0, 0, 0, 0x02, 0x01, 0, 0, 0x05, 0x04, 0x03, 0,
      0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11};
  EXPECT_EQ(std::memcmp(prefix, expected, kPrefixSize), 0);
}

TEST(FrameTest, ReaderReassemblesFramesFedByteByByte) {
  std::string stream = MakeFrame(FrameType::kChunk, 7, "", "abc") +
                       MakeFrame(FrameType::kResult, 7, "\x80", "xyz");
  FrameReader reader(1024);
  for (char c : stream) {
    ASSERT_TRUE(reader.Feed(&c, 1).ok());
  }
  ASSERT_EQ(reader.frames().size(), 2u);
  EXPECT_EQ(reader.frames()[0].type, FrameType::kChunk);
  EXPECT_EQ(reader.frames()[0].body, "abc");
  EXPECT_EQ(reader.frames()[1].header, "\x80");
  EXPECT_EQ(reader.frames()[1].id, 7u);
}

TEST(FrameTest, ReaderRejectsUnknownTypesFlagsAndOversize) {
  std::string bad_type = MakeFrame(FrameType::kResult, 1, "", "");
  bad_type[0] = 99;
  std::string bad_flags = MakeFrame(FrameType::kResult, 1, "", "");
  bad_flags[1] = 1;
  std::string too_big = MakeFrame(FrameType::kResult, 1, "", "");
  too_big[8] = 0x7f;  // body_len well over 1024
  for (const std::string& s : {bad_type, bad_flags}) {
    FrameReader reader(1024);
    EXPECT_EQ(ReasonOf(reader.Feed(s.data(), s.size())), "protocol_error");
  }
  FrameReader reader(16);
  EXPECT_EQ(ReasonOf(reader.Feed(too_big.data(), too_big.size())),
            "payload_too_large");
  // A failed reader stays failed.
  std::string good = MakeFrame(FrameType::kResult, 1, "", "");
  EXPECT_FALSE(reader.Feed(good.data(), good.size()).ok());
}

TEST(FrameTest, ReadFromReadsLargeBodiesAcrossReads) {
  os::UniqueFd a, b;
  ASSERT_TRUE(os::MakeSocketPair(&a, &b).ok());
  ASSERT_TRUE(os::SetNonBlocking(b.get()).ok());
  std::string body(3 << 20, 'z');
  std::string frame = MakeFrame(FrameType::kResult, 3, "", body);
  std::thread writer([&] {
    size_t off = 0;
    while (off < frame.size()) {
      ssize_t n = ::send(a.get(), frame.data() + off, frame.size() - off, 0);
      ASSERT_GT(n, 0);
      off += static_cast<size_t>(n);
    }
  });
  FrameReader reader(4 << 20);
  bool eof = false;
  absl::Time limit = absl::Now() + absl::Seconds(10);
  while (reader.frames().empty() && absl::Now() < limit) {
    ASSERT_TRUE(reader.ReadFrom(b.get(), &eof).ok());
    ASSERT_FALSE(eof);
  }
  writer.join();
  ASSERT_EQ(reader.frames().size(), 1u);
  EXPECT_EQ(reader.frames()[0].body, body);
}

TEST(FrameTest, HeaderMustBeAMap) {
  EXPECT_TRUE(DecodeHeader("").ok());
  EXPECT_EQ(ReasonOf(DecodeHeader("\x91\x01").status()), "protocol_error");
  HeaderWriter w;
  w.MapHeader(2);
  w.String("fn");
  w.String("mod.f");
  w.String("timeout_ms");
  w.Uint(1500);
  absl::StatusOr<Value> h = DecodeHeader(w.data());
  ASSERT_TRUE(h.ok());
  EXPECT_EQ((*h)["fn"], "mod.f");
  EXPECT_EQ((*h)["timeout_ms"], 1500);
}

}  // namespace
}  // namespace snakepit::protocol
