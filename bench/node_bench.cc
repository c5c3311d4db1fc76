// A Snakepit node called over gRPC: a C++ client with the generated sync
// stub calls bench_echo.echo through snakepitd, over TCP and over a unix
// socket, the figure to hold against grpc_bench's bare C++ echo.
//
//   node_bench [--python EXE] [--calls N] [--limit S]
//
// Starts build/snakepitd as a child with one worker, listening on
// 127.0.0.1:0 and on a unix socket in a temporary directory, waits for
// its ready file, prints one "latency" line per transport, then sends it
// SIGTERM and fails unless it exits with status 0.

#include <signal.h>
#include <stdlib.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <string>

#include "grpcpp/grpcpp.h"
#include "snakepit/v1/snakepit.grpc.pb.h"

#include "bench/bench_util.h"

namespace snakepit::bench {
namespace {

using NodeStub = v1::Snakepit::Stub;

// The addresses a running node announced in its ready file.
struct Listeners {
  std::string tcp;  // "127.0.0.1:PORT"
  std::string uds;  // "unix:PATH"
};

// A snakepitd child and the temporary directory holding its socket and
// ready file. The destructor kills and reaps a node Stop() did not end.
class Node {
 public:
  static std::unique_ptr<Node> Start(const std::string& python);
  ~Node();

  const Listeners& listeners() const { return listeners_; }

  // Sends SIGTERM and waits up to 30 s; true when it exited with 0.
  bool Stop();

 private:
  bool AwaitReady();

  std::string dir_;
  os::SpawnedProcess process_;
  bool reaped_ = false;
  Listeners listeners_;
};

std::unique_ptr<Node> Node::Start(const std::string& python) {
  char dir[] = "/tmp/snakepit-node-bench-XXXXXX";
  if (::mkdtemp(dir) == nullptr) {
    return nullptr;
  }
  auto node = std::make_unique<Node>();
  node->dir_ = dir;
  os::SpawnRequest request;
  request.argv = {SNAKEPITD,
                  "--module", std::string(SNAKEPIT_BENCH_DIR) +
                                  "/bench_echo.py",
                  "--python", python,
                  "--workers", "1",
                  "--listen", "127.0.0.1:0",
                  "--listen", "unix:" + node->dir_ + "/node.sock",
                  "--admin", "",
                  "--log-level", "warn",
                  "--ready-file", node->dir_ + "/ready.json"};
  request.env = OwnEnvironment();
  // Its log goes to stderr: stdout carries only result lines.
  request.fds = {{2, 1}, {2, 2}};
  absl::StatusOr<os::SpawnedProcess> process = os::Spawn(request);
  if (!process.ok()) {
    std::fprintf(stderr, "bench: node: %s\n",
                 process.status().ToString().c_str());
    return nullptr;
  }
  node->process_ = std::move(*process);
  return node->AwaitReady() ? std::move(node) : nullptr;
}

// Polls for the ready file for up to 30 s. The node writes it only once
// it serves, and whole (docs/operations.md), so a parse error means the
// file is still being written.
bool Node::AwaitReady() {
  Clock::time_point start = Clock::now();
  while (SecondsSince(start) < 30) {
    std::ifstream in(dir_ + "/ready.json");
    Row ready = Row::parse(in, nullptr, false);
    if (!ready.is_discarded() && ready.contains("grpc")) {
      for (const auto& address : ready["grpc"]) {
        std::string a = address.get<std::string>();
        (a.rfind("unix:", 0) == 0 ? listeners_.uds : listeners_.tcp) = a;
      }
      return !listeners_.tcp.empty() && !listeners_.uds.empty();
    }
    if (os::AwaitExit(process_.pidfd.get(), absl::Milliseconds(20))) {
      std::fprintf(stderr, "bench: node: snakepitd exited before ready\n");
      return false;
    }
  }
  std::fprintf(stderr, "bench: node: no ready file after 30 s\n");
  return false;
}

bool Node::Stop() {
  ::kill(process_.pid, SIGTERM);
  if (!os::AwaitExit(process_.pidfd.get(), absl::Seconds(30))) {
    std::fprintf(stderr, "bench: node: no exit 30 s after SIGTERM\n");
    return false;
  }
  absl::StatusOr<std::optional<os::ExitInfo>> exit =
      os::TryReap(process_.pidfd.get());
  reaped_ = true;
  bool clean = exit.ok() && exit->has_value() && !(*exit)->signalled &&
               (*exit)->code == 0;
  if (!clean) {
    std::fprintf(stderr, "bench: node: snakepitd %s after SIGTERM\n",
                 exit.ok() && exit->has_value()
                     ? (*exit)->Describe().c_str()
                     : "could not be reaped");
  }
  return clean;
}

Node::~Node() {
  // The group is the node and its workers, all started here.
  if (!reaped_ && process_.pid > 0) {
    os::SignalGroup(process_.pid, SIGKILL);
    os::AwaitExit(process_.pidfd.get(), absl::Seconds(5));
    (void)os::TryReap(process_.pidfd.get());
  }
  std::error_code ignored;
  std::filesystem::remove_all(dir_, ignored);
}

std::unique_ptr<NodeStub> Connect(const std::string& target) {
  grpc::ChannelArguments args;
  // Never through a proxy named in the environment: the node is local.
  args.SetInt(GRPC_ARG_ENABLE_HTTP_PROXY, 0);
  auto channel = grpc::CreateCustomChannel(
      target, grpc::InsecureChannelCredentials(), args);
  if (!channel->WaitForConnected(std::chrono::system_clock::now() +
                                 std::chrono::seconds(10))) {
    std::fprintf(stderr, "bench: node: cannot reach %s\n", target.c_str());
    return nullptr;
  }
  return v1::Snakepit::NewStub(channel);
}

// The msgpack map {"data": bin(100)}: bench_echo.echo's keyword argument.
std::string EchoArgs() {
  std::string args = "\x81\xa4" "data" "\xc4\x64";
  return args + std::string(100, 'x');
}

bool CallOnce(NodeStub& stub, const v1::CallRequest& request,
              v1::CallResponse* response) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::seconds(60));
  grpc::Status status = stub.Call(&context, request, response);
  if (!status.ok()) {
    std::fprintf(stderr, "bench: node: %s\n", status.error_message().c_str());
  }
  // The result is bin(100) back: a 2-byte header and the bytes.
  return status.ok() && response->result().data().size() == 102;
}

bool Latency(const std::string& target, const std::string& name,
             const Budget& budget) {
  std::unique_ptr<NodeStub> stub = Connect(target);
  if (stub == nullptr) {
    return false;
  }
  v1::CallRequest request;
  request.set_function("bench_echo.echo");
  request.mutable_args()->set_content_type("application/msgpack");
  request.mutable_args()->set_data(EchoArgs());
  v1::CallResponse response;
  std::optional<Stats> stats = Measure(
      name, budget, [&] { return CallOnce(*stub, request, &response); });
  if (stats) {
    Print(WithStats(
        Row{{"section", "latency"}, {"name", name}, {"payload_bytes", 100}},
        *stats));
  }
  return stats.has_value();
}

}  // namespace
}  // namespace snakepit::bench

int main(int argc, char** argv) {
  using namespace snakepit::bench;
  Flags flags(argc, argv, 1);
  snakepit::os::IgnoreSigpipe();
  std::unique_ptr<Node> node =
      Node::Start(flags.Get("python", "/usr/bin/python3"));
  if (node == nullptr) {
    return 1;
  }
  const Listeners& at = node->listeners();
  // The names follow grpc_bench's: TCP unmarked, ", unix socket" after.
  const std::string name = "snakepit node, gRPC Call (1 worker)";
  bool ok = Latency(at.tcp, name, flags.MakeBudget()) &&
            Latency(at.uds, name + ", unix socket", flags.MakeBudget());
  return node->Stop() && ok ? 0 : 1;
}
