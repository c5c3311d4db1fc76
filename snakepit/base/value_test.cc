#include "snakepit/base/value.h"

#include <cmath>

#include "gtest/gtest.h"
#include "snakepit/base/status.h"

namespace snakepit {
namespace {

TEST(ValueTest, MsgpackRoundTripKeepsTypes) {
  Value v = {{"int", -5},
             {"big", UINT64_MAX},
             {"small", INT64_MIN},
             {"f", 0.1},
             {"neg_zero", -0.0},
             {"bytes", Bytes(std::string("\0\1\2", 3))},
             {"list", {true, false, nullptr, "s"}}};
  absl::StatusOr<std::string> encoded = EncodeValue(v);
  ASSERT_TRUE(encoded.ok());
  absl::StatusOr<Value> decoded = DecodeValue(*encoded);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(*decoded, v);
  EXPECT_TRUE((*decoded)["bytes"].is_binary());
  EXPECT_TRUE((*decoded)["big"].is_number_unsigned());
  EXPECT_TRUE(std::signbit((*decoded)["neg_zero"].get<double>()));
}

TEST(ValueTest, CheckRejectsMalformedMsgpack) {
  const std::string cases[] = {
      "",                      // nothing
      "\xc1",                  // never-used type byte
      "\x92\x01",              // array short of an item
      "\xda\x00\x05" "ab",     // str shorter than its length
      "\xc4",                  // bin without a length
      "\x01\x02",              // trailing bytes
      "\xdd\xff\xff\xff\xff",  // array claiming 4 G items
  };
  for (const std::string& bytes : cases) {
    absl::Status s = CheckMsgpack(bytes, 16, false);
    EXPECT_EQ(ReasonOf(s), "serialization_error") << testing::PrintToString(
        bytes);
  }
}

TEST(ValueTest, CheckCountsDepthWithoutRecursion) {
  std::string deep(1'000'000, '\x91');
  deep += '\xc0';
  EXPECT_EQ(ReasonOf(CheckMsgpack(deep, 128, false)), "payload_too_deep");
  std::string ok(128, '\x91');
  ok += '\xc0';
  EXPECT_TRUE(CheckMsgpack(ok, 128, false).ok());
  std::string empty_too_deep(128, '\x91');
  empty_too_deep += '\x90';
  EXPECT_EQ(ReasonOf(CheckMsgpack(empty_too_deep, 128, false)),
            "payload_too_deep");
}

TEST(ValueTest, DecodeRejectsNonStringKeys) {
  std::string int_key = "\x81\x01\x02";  // {1: 2}
  EXPECT_TRUE(CheckMsgpack(int_key, 8, false).ok());
  absl::StatusOr<Value> v = DecodeValue(int_key);
  EXPECT_EQ(ReasonOf(v.status()), "serialization_error");
  EXPECT_NE(v.status().message().find("not a string"), std::string::npos);
}

TEST(ValueTest, EncodeRefusesDeepValues) {
  Value deep = nullptr;
  for (int i = 0; i < 200; ++i) {
    deep = Value::array({std::move(deep)});
  }
  EXPECT_EQ(ReasonOf(EncodeValue(deep).status()), "payload_too_deep");
}

TEST(ValueTest, JsonExtensionsRoundTrip) {
  absl::StatusOr<Value> v = ParseJson(
      R"({"b": {"$bytes": "AAEC"}, "n": NaN, "i": -Infinity,
          "s": "NaN stays text", "x": [Infinity]})");
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_TRUE((*v)["b"].is_binary());
  EXPECT_EQ((*v)["b"].get_binary().size(), 3u);
  EXPECT_TRUE(std::isnan((*v)["n"].get<double>()));
  EXPECT_EQ((*v)["i"].get<double>(), -INFINITY);
  EXPECT_EQ((*v)["s"], "NaN stays text");
  EXPECT_EQ(ToJson(*v), R"({"b":{"$bytes":"AAEC"},"i":-Infinity,"n":NaN,)"
                        R"("s":"NaN stays text","x":[Infinity]})");
}

TEST(ValueTest, JsonErrorsGiveLineAndColumn) {
  absl::StatusOr<Value> v = ParseJson("{\n  \"a\": 1,\n  oops\n}");
  EXPECT_EQ(ReasonOf(v.status()), "serialization_error");
  EXPECT_NE(v.status().message().find("line 3"), std::string::npos)
      << v.status();
}

TEST(ValueTest, DeepJsonIsRefused) {
  std::string deep(100000, '[');
  deep += std::string(100000, ']');
  EXPECT_EQ(ReasonOf(ParseJson(deep).status()), "payload_too_deep");
}

TEST(ValueTest, NumbersNoValueHoldsAreErrorsNotFloats) {
  for (const char* text :
       {R"({"x": 1e400})", R"({"x": 18446744073709551616})",
        R"([-9223372036854775809])",
        R"([123456789012345678901234567890])"}) {
    absl::StatusOr<Value> v = ParseJson(text);
    EXPECT_EQ(ReasonOf(v.status()), "serialization_error") << text;
  }
  absl::StatusOr<Value> edges =
      ParseJson("[18446744073709551615, -9223372036854775808, 1.5e300]");
  ASSERT_TRUE(edges.ok()) << edges.status();
  EXPECT_EQ((*edges)[0], UINT64_MAX);
  EXPECT_EQ((*edges)[1], INT64_MIN);
  // Digits inside strings are text.
  EXPECT_TRUE(ParseJson(R"({"id": "123456789012345678901234567890"})").ok());
}

TEST(ValueTest, NegativeZeroPrintsWithItsSign) {
  EXPECT_EQ(ToJson(Value(-0.0)), "-0.0");
}

}  // namespace
}  // namespace snakepit
