#include "snakepit/base/log.h"

#include <memory>

#include "spdlog/sinks/stdout_sinks.h"

namespace snakepit {

spdlog::logger& Log() {
  static std::shared_ptr<spdlog::logger> logger = [] {
    if (auto existing = spdlog::get("snakepit")) {
      return existing;
    }
    auto created = spdlog::stderr_logger_mt("snakepit");
    created->set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");
    return created;
  }();
  return *logger;
}

}  // namespace snakepit
