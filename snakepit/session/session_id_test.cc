#include "snakepit/session/session_id.h"

#include <set>
#include <string>

#include "gtest/gtest.h"

#include "snakepit/base/status.h"
#include "snakepit/session/errors.h"

namespace snakepit {
namespace {

TEST(SessionIdTest, NewIdIs32LowercaseHexCharacters) {
  std::string id = NewSessionId();
  ASSERT_EQ(id.size(), 32u);
  for (char c : id) {
    EXPECT_TRUE((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')) << id;
  }
  EXPECT_TRUE(ValidateSessionId(id).ok());
}

TEST(SessionIdTest, NewIdsDoNotRepeat) {
  std::set<std::string> seen;
  for (int i = 0; i < 10'000; ++i) {
    EXPECT_TRUE(seen.insert(NewSessionId()).second);
  }
}

TEST(SessionIdTest, AcceptsTheWholeAlphabetUpTo128Characters) {
  EXPECT_TRUE(ValidateSessionId("a").ok());
  EXPECT_TRUE(ValidateSessionId("Az09._:-").ok());
  EXPECT_TRUE(ValidateSessionId(std::string(128, 'x')).ok());
  EXPECT_TRUE(ValidateProgramId("model.v2:main").ok());
}

TEST(SessionIdTest, RejectsEmptyLongAndForeignCharacters) {
  const std::string bad[] = {
      "",      std::string(129, 'x'),       "has space",   "slash/inside",
      "tab\t", std::string("nul\0byte", 8), "caf\xc3\xa9", "star*",
  };
  for (const std::string& id : bad) {
    absl::Status s = ValidateSessionId(id);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << id;
    EXPECT_EQ(ReasonOf(s), reason::kInvalidSessionId) << id;
    absl::Status p = ValidateProgramId(id);
    EXPECT_EQ(p.code(), absl::StatusCode::kInvalidArgument) << id;
    EXPECT_EQ(ReasonOf(p), reason::kInvalidArgument) << id;
  }
}

TEST(SessionIdTest, ErrorQuotesTheIdSafely) {
  absl::Status s = ValidateSessionId(std::string("a\nb", 3));
  EXPECT_NE(std::string(s.message()).find("a\\nb"), std::string::npos)
      << s.message();
  absl::Status long_id = ValidateSessionId(std::string(1000, 'y'));
  EXPECT_LT(long_id.message().size(), 300u);
  EXPECT_NE(std::string(long_id.message()).find("1000"), std::string::npos);
}

}  // namespace
}  // namespace snakepit
