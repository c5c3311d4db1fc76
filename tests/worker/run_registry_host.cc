// A host for run_registry_test: opens a run in a registry directory and
// starts two "workers" with the run's marker, each a shell that starts
// `sleep 1000` and waits for it. The test kills this host with SIGKILL
// and checks that a later reaper kills all four.
//
//   run_registry_host DIR
//
// Prints "run <id>" and "worker <pid>" (this program) and "child <pid>"
// (each worker's shell), one line each, in no fixed order between the
// two kinds. Then waits to be killed, at most ten minutes.

#include <unistd.h>

#include <cstdio>
#include <memory>
#include <vector>

#include "snakepit/os/process.h"
#include "snakepit/worker/run_registry.h"
#include "snakepit/worker/worker.h"

namespace snakepit {
namespace {

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "run_registry_host: %s\n", status.ToString().c_str());
  return 1;
}

int Run(const std::string& dir) {
  absl::StatusOr<std::shared_ptr<worker::RunRegistry>> registry =
      worker::RunRegistry::Open(dir);
  if (!registry.ok()) {
    return Fail(registry.status());
  }
  std::printf("run %s\n", (*registry)->run_id().c_str());
  std::fflush(stdout);

  worker::WorkerSpec spec;
  spec.run_id = (*registry)->run_id();
  std::vector<os::SpawnedProcess> workers;
  for (int i = 0; i < 2; ++i) {
    os::SpawnRequest request;
    request.argv = {"/bin/sh", "-c", "sleep 1000 & echo child $!; wait"};
    request.env = worker::WorkerEnv(spec);
    absl::StatusOr<os::SpawnedProcess> spawned = os::Spawn(request);
    if (!spawned.ok()) {
      return Fail(spawned.status());
    }
    if (absl::Status s = (*registry)->AddWorker(spawned->pid); !s.ok()) {
      return Fail(s);
    }
    std::printf("worker %d\n", spawned->pid);
    std::fflush(stdout);
    workers.push_back(std::move(*spawned));
  }
  ::sleep(600);
  return 0;
}

}  // namespace
}  // namespace snakepit

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: run_registry_host DIR\n");
    return 2;
  }
  return snakepit::Run(argv[1]);
}
