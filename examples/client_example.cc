// Calls a snakepitd node from C++ and prints the result as one line of
// JSON.
//
//   build/client_example ADDR FUNCTION [JSON_ARGS]
//
// $SNAKEPIT_TOKEN, when set, is sent as the bearer token. Exit status 0
// on success, 2 when the node cannot be reached, 3 when the call fails.

#include <cstdio>
#include <cstdlib>
#include <string>

#include "snakepit/api/client.h"
#include "snakepit/base/status.h"

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s ADDR FUNCTION [JSON_ARGS]\n", argv[0]);
    return 1;
  }
  snakepit::ClientOptions options;
  options.address = argv[1];
  if (const char* token = std::getenv("SNAKEPIT_TOKEN")) {
    options.token = token;
  }
  auto client = snakepit::Client::Connect(options);
  if (!client.ok()) {
    std::fprintf(stderr, "%s\n",
                 snakepit::DescribeError(client.status()).c_str());
    return 2;
  }
  snakepit::Value args = nullptr;
  if (argc > 3) {
    absl::StatusOr<snakepit::Value> parsed = snakepit::ParseJson(argv[3]);
    if (!parsed.ok()) {
      std::fprintf(stderr, "%s\n",
                   snakepit::DescribeError(parsed.status()).c_str());
      return 1;
    }
    args = *parsed;
  }
  absl::StatusOr<snakepit::Value> result =
      (*client)->Call(argv[2], args, absl::Seconds(60));
  if (!result.ok()) {
    std::fprintf(stderr, "%s\n",
                 snakepit::DescribeError(result.status()).c_str());
    // A Python exception brings its traceback along.
    snakepit::PythonDetails python =
        snakepit::PythonDetailsOf(result.status());
    if (!python.traceback.empty()) {
      std::fprintf(stderr, "%s", python.traceback.c_str());
    }
    return 3;
  }
  std::printf("%s\n", snakepit::ToJson(*result).c_str());
  return 0;
}
