// Calls the functions of examples/lab.py from C++ through a pool of two
// Python workers: a blocking call, calls in parallel, and a stream.
//
//   build/cpp_example [path/to/examples/lab.py] [python]

#include <cstdio>
#include <string>
#include <vector>

#include "snakepit/snakepit.h"

int main(int argc, char** argv) {
  snakepit::PoolOptions options;
  options.modules = {argc > 1 ? argv[1] : "examples/lab.py"};
  options.python = argc > 2 ? argv[2] : "/usr/bin/python3";
  options.size = 2;
  absl::StatusOr<std::unique_ptr<snakepit::Pool>> pool =
      snakepit::Pool::Start(options);
  if (!pool.ok()) {
    std::fprintf(stderr, "%s\n",
                 snakepit::DescribeError(pool.status()).c_str());
    return 2;
  }

  // One blocking call with a deadline.
  absl::StatusOr<snakepit::Value> trained = (*pool)->Invoke(
      "lab.train_digits", {{"test_fraction", 0.25}}, {absl::Seconds(60)});
  if (!trained.ok()) {
    std::fprintf(stderr, "%s\n",
                 snakepit::DescribeError(trained.status()).c_str());
    return 3;
  }
  std::printf("trained: %s\n", snakepit::ToJson(*trained).c_str());

  // Two calls in parallel, one per worker.
  snakepit::Call words = (*pool)->Submit("lab.word_count", {{"top", 3}});
  snakepit::Call stats = (*pool)->Submit(
      "lab.stats", {{"values", {3.5, 1.25, 9.0, 4.0, 7.75}}});
  for (snakepit::Call* call : {&words, &stats}) {
    absl::StatusOr<snakepit::Value> result = call->Get();
    if (!result.ok()) {
      std::fprintf(stderr, "%s\n",
                   snakepit::DescribeError(result.status()).c_str());
      return 3;
    }
    std::printf("result: %s\n", snakepit::ToJson(*result).c_str());
  }

  // A stream: each chunk arrives as the generator yields it.
  snakepit::Call curve = (*pool)->Submit("lab.learning_curve", {{"steps", 4}});
  while (true) {
    absl::StatusOr<std::optional<snakepit::Value>> chunk = curve.Next();
    if (!chunk.ok()) {
      std::fprintf(stderr, "%s\n",
                   snakepit::DescribeError(chunk.status()).c_str());
      return 3;
    }
    if (!chunk->has_value()) {
      break;
    }
    std::printf("chunk: %s\n", snakepit::ToJson(**chunk).c_str());
  }
  return 0;
}
