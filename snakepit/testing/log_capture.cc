#include "snakepit/testing/log_capture.h"

#include <memory>
#include <mutex>

#include "spdlog/sinks/base_sink.h"
#include "spdlog/sinks/stdout_sinks.h"
#include "spdlog/spdlog.h"

namespace snakepit::testing {
namespace {

std::mutex lines_mu;
std::vector<std::string> lines;

class RecordingSink : public spdlog::sinks::base_sink<std::mutex> {
 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    std::lock_guard<std::mutex> lock(lines_mu);
    lines.emplace_back(msg.payload.data(), msg.payload.size());
  }
  void flush_() override {}
};

}  // namespace

void InstallLogCapture() {
  auto sinks = std::vector<spdlog::sink_ptr>{
      std::make_shared<RecordingSink>(),
      std::make_shared<spdlog::sinks::stderr_sink_mt>()};
  sinks[1]->set_level(spdlog::level::warn);
  auto logger = std::make_shared<spdlog::logger>("snakepit", sinks.begin(),
                                                 sinks.end());
  logger->set_level(spdlog::level::debug);
  spdlog::register_logger(logger);
}

std::vector<std::string> LoggedLines() {
  std::lock_guard<std::mutex> lock(lines_mu);
  return lines;
}

int CountLogged(const std::string& needle) {
  std::lock_guard<std::mutex> lock(lines_mu);
  int n = 0;
  for (const std::string& line : lines) {
    n += line.ends_with(needle);
  }
  return n;
}

void ClearLog() {
  std::lock_guard<std::mutex> lock(lines_mu);
  lines.clear();
}

}  // namespace snakepit::testing
