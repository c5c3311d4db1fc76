// The library's logger: spdlog's logger named "snakepit", writing to
// stderr unless the embedding program registered its own under that name
// first. Logs carry events (a worker started or exited), never steps.

#ifndef SNAKEPIT_BASE_LOG_H_
#define SNAKEPIT_BASE_LOG_H_

#include "spdlog/spdlog.h"

namespace snakepit {

spdlog::logger& Log();

}  // namespace snakepit

#endif  // SNAKEPIT_BASE_LOG_H_
