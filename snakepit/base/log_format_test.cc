#include "snakepit/base/log_format.h"

#include <unistd.h>

#include <memory>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "spdlog/sinks/ostream_sink.h"
#include "spdlog/spdlog.h"

#include "snakepit/base/log.h"

namespace snakepit {
namespace {

// The "snakepit" logger of this test binary writes here. It is registered
// before anything calls Log(), as an embedding program would.
std::ostringstream& Output() {
  static std::ostringstream* out = [] {
    auto* stream = new std::ostringstream;
    auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(*stream);
    spdlog::register_logger(
        std::make_shared<spdlog::logger>("snakepit", std::move(sink)));
    return stream;
  }();
  return *out;
}

class LogFormatTest : public ::testing::Test {
 protected:
  void SetUp() override { Output().str(""); }

  std::vector<std::string> Lines() {
    std::vector<std::string> lines;
    std::istringstream in(Output().str());
    for (std::string line; std::getline(in, line);) {
      lines.push_back(line);
    }
    return lines;
  }
};

TEST_F(LogFormatTest, JsonLinesCarryTimeLevelAndMessage) {
  ConfigureLogging("json", "info");
  Log().info("worker {} started", 42);

  std::vector<std::string> lines = Lines();
  ASSERT_EQ(lines.size(), 1u) << Output().str();
  nlohmann::json line = nlohmann::json::parse(lines[0]);
  EXPECT_EQ(line.size(), 3u) << lines[0];
  EXPECT_EQ(line["level"], "info");
  EXPECT_EQ(line["msg"], "worker 42 started");
  EXPECT_TRUE(
      std::regex_match(line["ts"].get<std::string>(),
                       std::regex(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)")))
      << line["ts"];
}

TEST_F(LogFormatTest, JsonEscapesEveryMessage) {
  ConfigureLogging("json", "info");
  const std::string message =
      "quote \" backslash \\ newline \n tab \t bell \x07 é ✓ 🐍";
  Log().info("{}", message);
  // Bytes that are not UTF-8 become U+FFFD, one per byte.
  Log().info("bad \xff\xfe end \xe2\x82 cut \xed\xa0\x80 surrogate");

  std::vector<std::string> lines = Lines();
  ASSERT_EQ(lines.size(), 2u) << Output().str();
  EXPECT_EQ(nlohmann::json::parse(lines[0])["msg"], message);
  EXPECT_EQ(nlohmann::json::parse(lines[1])["msg"],
            "bad \uFFFD\uFFFD end \uFFFD\uFFFD cut \uFFFD\uFFFD\uFFFD "
            "surrogate");
}

TEST_F(LogFormatTest, LevelFiltersAndIsNamed) {
  ConfigureLogging("json", "warn");
  Log().info("dropped");
  Log().warn("kept");
  Log().error("also kept");

  std::vector<std::string> lines = Lines();
  ASSERT_EQ(lines.size(), 2u) << Output().str();
  EXPECT_EQ(nlohmann::json::parse(lines[0])["level"], "warning");
  EXPECT_EQ(nlohmann::json::parse(lines[1])["level"], "error");
}

TEST_F(LogFormatTest, TextIsTimeLevelMessage) {
  ConfigureLogging("text", "debug");
  Log().debug("pool default ready");

  std::vector<std::string> lines = Lines();
  ASSERT_EQ(lines.size(), 1u) << Output().str();
  EXPECT_TRUE(std::regex_match(
      lines[0], std::regex(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3} )"
                           R"(debug pool default ready)")))
      << lines[0];
}

TEST_F(LogFormatTest, AutoIsTextOnATerminalAndJsonOtherwise) {
  ConfigureLogging("auto", "info");
  Log().info("hello");
  std::vector<std::string> lines = Lines();
  ASSERT_EQ(lines.size(), 1u) << Output().str();
  EXPECT_EQ(lines[0].starts_with("{"), !isatty(STDERR_FILENO)) << lines[0];
}

TEST_F(LogFormatTest, ReconfiguresALoggerAlreadyInUse) {
  ConfigureLogging("text", "info");
  Log().info("as text");
  ConfigureLogging("json", "info");
  Log().info("as json");

  std::vector<std::string> lines = Lines();
  ASSERT_EQ(lines.size(), 2u) << Output().str();
  EXPECT_FALSE(lines[0].starts_with("{")) << lines[0];
  EXPECT_EQ(nlohmann::json::parse(lines[1])["msg"], "as json");
}

}  // namespace
}  // namespace snakepit
