// Test helper: records what the library logs.

#ifndef SNAKEPIT_TESTING_LOG_CAPTURE_H_
#define SNAKEPIT_TESTING_LOG_CAPTURE_H_

#include <string>
#include <vector>

namespace snakepit::testing {

// Registers the "snakepit" logger with a recording sink (and stderr).
// Must run before the first Log() call, e.g. at the top of main().
void InstallLogCapture();

// Every line logged since the last ClearLog(), formatted without a time.
std::vector<std::string> LoggedLines();

// Number of logged lines that end with `needle`.
int CountLogged(const std::string& needle);

void ClearLog();

}  // namespace snakepit::testing

#endif  // SNAKEPIT_TESTING_LOG_CAPTURE_H_
