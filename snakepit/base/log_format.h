// Log output for the node: text on a terminal, JSON lines otherwise.

#ifndef SNAKEPIT_BASE_LOG_FORMAT_H_
#define SNAKEPIT_BASE_LOG_FORMAT_H_

#include <string>

namespace snakepit {

// Configures the "snakepit" logger. `format` is "text", "json" or
// "auto" (text when stderr is a terminal); `level` is an spdlog level
// name. JSON lines carry "ts", "level" and "msg", each JSON-escaped.
void ConfigureLogging(const std::string& format, const std::string& level);

}  // namespace snakepit

#endif  // SNAKEPIT_BASE_LOG_FORMAT_H_
