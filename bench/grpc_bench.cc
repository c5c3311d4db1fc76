// The gRPC peers, called from C++ with the generated sync stub: a Python
// grpcio server (what a Python user would put behind a network API) and
// a bare C++ gRPC server (gRPC's own cost).
//
//   grpc_bench --server python|cpp [--python EXE] [--calls N] [--limit S]
//              [--sizes B,B,...] [--bytes TOTAL]
//
// Starts the server, which listens on 127.0.0.1 and on a unix socket in
// a temporary directory, then prints a "latency" line for a 100-byte
// echo over each, and a "payload" line per size over TCP.

#include <poll.h>
#include <sys/socket.h>

#include <stdlib.h>

#include <csignal>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>

#include "grpcpp/grpcpp.h"

#include "bench/bench_util.h"
#include "echo.grpc.pb.h"

namespace snakepit::bench {
namespace {

using EchoStub = v1::Echo::Stub;
using v1::Blob;

// A server process: it prints its port on stdout and exits when its
// stdin is closed.
class Server {
 public:
  static std::unique_ptr<Server> Start(const std::vector<std::string>& argv);
  ~Server();

  int port() const { return port_; }

 private:
  os::SpawnedProcess process_;
  os::UniqueFd stdin_;
  int port_ = 0;
};

// Reads one line from `fd`, waiting up to 30 s.
std::string ReadLine(int fd) {
  std::string line;
  Clock::time_point start = Clock::now();
  char c = 0;
  while (SecondsSince(start) < 30) {
    pollfd p = {fd, POLLIN, 0};
    if (::poll(&p, 1, 1000) < 0) {
      break;
    }
    if (!(p.revents & (POLLIN | POLLHUP))) {
      continue;
    }
    if (::recv(fd, &c, 1, 0) != 1 || c == '\n') {
      break;
    }
    line += c;
  }
  return line;
}

std::unique_ptr<Server> Server::Start(const std::vector<std::string>& argv) {
  os::UniqueFd in_host, in_child, out_host, out_child;
  if (!os::MakeSocketPair(&in_host, &in_child).ok() ||
      !os::MakeSocketPair(&out_host, &out_child).ok()) {
    return nullptr;
  }
  auto in_high = os::DupAtLeast(in_child.get(), 10);
  auto out_high = os::DupAtLeast(out_child.get(), 10);
  os::SpawnRequest request;
  request.argv = argv;
  request.env = OwnEnvironment();
  request.fds = {{in_high->get(), 0}, {out_high->get(), 1}, {2, 2}};
  absl::StatusOr<os::SpawnedProcess> process = os::Spawn(request);
  if (!process.ok()) {
    return nullptr;
  }
  auto server = std::make_unique<Server>();
  server->process_ = std::move(*process);
  server->stdin_ = std::move(in_host);
  out_child.Reset();
  out_high->Reset();
  server->port_ = std::atoi(ReadLine(out_host.get()).c_str());
  return server->port_ > 0 ? std::move(server) : nullptr;
}

Server::~Server() {
  stdin_.Reset();
  if (!os::AwaitExit(process_.pidfd.get(), absl::Seconds(5))) {
    os::SignalGroup(process_.pid, SIGKILL);
    os::AwaitExit(process_.pidfd.get(), absl::Seconds(5));
  }
  (void)os::TryReap(process_.pidfd.get());
}

// `target` is "127.0.0.1:PORT" or "unix:PATH".
std::unique_ptr<EchoStub> Connect(const std::string& target) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  args.SetMaxSendMessageSize(-1);
  // Never through a proxy named in the environment: the server is local.
  args.SetInt(GRPC_ARG_ENABLE_HTTP_PROXY, 0);
  auto channel = grpc::CreateCustomChannel(
      target, grpc::InsecureChannelCredentials(), args);
  if (!channel->WaitForConnected(std::chrono::system_clock::now() +
                                 std::chrono::seconds(10))) {
    return nullptr;
  }
  return v1::Echo::NewStub(channel);
}

bool EchoOnce(EchoStub& stub, const Blob& in, Blob* out) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::seconds(60));
  grpc::Status status = stub.Echo(&context, in, out);
  if (!status.ok()) {
    std::fprintf(stderr, "bench: grpc: %s\n", status.error_message().c_str());
  }
  return status.ok() && out->data().size() == in.data().size();
}

bool Latency(EchoStub& stub, const std::string& name, const Budget& budget) {
  Blob in, out;
  in.set_data(std::string(100, 'x'));
  std::optional<Stats> stats =
      Measure(name, budget, [&] { return EchoOnce(stub, in, &out); });
  if (stats) {
    Print(WithStats(
        Row{{"section", "latency"}, {"name", name}, {"payload_bytes", 100}},
        *stats));
  }
  return stats.has_value();
}

bool Payloads(EchoStub& stub, const std::string& name, const Flags& flags) {
  double bytes = flags.Number("bytes", 1 << 30);
  for (long size :
       flags.List("sizes", {100, 64 << 10, 1 << 20, 16 << 20, 64 << 20})) {
    Blob in, out;
    in.set_data(std::string(size, 'x'));
    Budget budget = PayloadBudget(flags.MakeBudget(), bytes, size);
    if (!PayloadCell(name, size, budget,
                     [&] { return EchoOnce(stub, in, &out); })) {
      return false;
    }
  }
  return true;
}

// Latency over the unix socket the server also listens on.
bool UnixLatency(const std::string& path, const std::string& name,
                 const Budget& budget) {
  std::unique_ptr<EchoStub> stub = Connect("unix:" + path);
  if (stub == nullptr) {
    std::fprintf(stderr, "bench: grpc: cannot reach unix:%s\n",
                 path.c_str());
    return false;
  }
  return Latency(*stub, name + ", unix socket", budget);
}

// Runs every cell against a server started from `command` with the unix
// socket path appended.
bool RunAll(std::vector<std::string> command, const std::string& name,
            const std::string& dir, const Flags& flags) {
  std::string path = dir + "/echo.sock";
  command.push_back(path);
  std::unique_ptr<Server> server = Server::Start(command);
  std::unique_ptr<EchoStub> stub =
      server ? Connect("127.0.0.1:" + std::to_string(server->port()))
             : nullptr;
  if (stub == nullptr) {
    std::fprintf(stderr, "bench: grpc: cannot reach the %s\n",
                 name.c_str());
    return false;
  }
  return Latency(*stub, name, flags.MakeBudget()) &&
         UnixLatency(path, name, flags.MakeBudget()) &&
         Payloads(*stub, name, flags);
}

}  // namespace
}  // namespace snakepit::bench

int main(int argc, char** argv) {
  using namespace snakepit::bench;
  Flags flags(argc, argv, 1);
  snakepit::os::IgnoreSigpipe();
  bool python = flags.Get("server", "python") == "python";
  // The Python server's first argument is its thread count.
  std::vector<std::string> command =
      python ? std::vector<std::string>{flags.Get("python", "/usr/bin/python3"),
                                        std::string(SNAKEPIT_BENCH_DIR) +
                                            "/grpc_echo_server.py",
                                        "4"}
             : std::vector<std::string>{GRPC_ECHO_SERVER};
  std::string name = python ? "gRPC to a Python grpcio server (4 threads)"
                            : "gRPC to a bare C++ gRPC echo server";
  char dir[] = "/tmp/snakepit-grpc-bench-XXXXXX";
  if (::mkdtemp(dir) == nullptr) {
    std::perror("bench: grpc: mkdtemp");
    return 1;
  }
  bool ok = RunAll(command, name, dir, flags);
  std::error_code ignored;
  std::filesystem::remove_all(dir, ignored);
  return ok ? 0 : 1;
}
