#include "snakepit/session/internal/sweeper.h"

#include <utility>

namespace snakepit::internal {

void Sweeper::Start(absl::Duration interval, std::function<bool()> sweep) {
  if (interval == absl::InfiniteDuration()) {
    return;
  }
  thread_ = std::thread(
      [this, interval, sweep = std::move(sweep)] { Run(interval, sweep); });
}

void Sweeper::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (thread_.joinable()) {
    thread_.join();
  }
}

void Sweeper::Run(absl::Duration interval, const std::function<bool()>& sweep) {
  absl::Duration pause = interval;
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      mu_.AwaitWithTimeout(absl::Condition(&stopping_), pause);
      if (stopping_) {
        return;
      }
    }
    pause = sweep() ? kBacklogPause : interval;
  }
}

}  // namespace snakepit::internal
