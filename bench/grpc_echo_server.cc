// A bare C++ gRPC server answering snakepit.bench.v1.Echo/Echo: the cost of
// gRPC itself, with no Python behind it. A Snakepit node will put gRPC
// in front of its pools; this is the figure it is to be held against.
//
//   grpc_echo_server [UNIX_PATH]
//
// Listens on 127.0.0.1 on a port the kernel picks, and on the unix socket
// UNIX_PATH when given, prints the port on stdout, and serves until its
// stdin reaches end of file.

#include <unistd.h>

#include <cstdio>
#include <memory>
#include <string>

#include "grpcpp/grpcpp.h"

#include "echo.grpc.pb.h"

namespace {

class EchoService final : public snakepit::bench::v1::Echo::Service {
  grpc::Status Echo(grpc::ServerContext*, const snakepit::bench::v1::Blob* in,
                    snakepit::bench::v1::Blob* out) override {
    *out = *in;
    return grpc::Status::OK;
  }
};

// Blocks until stdin reaches end of file or fails.
void AwaitStdinEof() {
  char buf[256];
  while (::read(0, buf, sizeof(buf)) > 0) {
  }
}

}  // namespace

int main(int argc, char** argv) {
  EchoService service;
  int port = 0;
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                           &port);
  if (argc > 1) {
    builder.AddListeningPort(std::string("unix:") + argv[1],
                             grpc::InsecureServerCredentials());
  }
  builder.SetMaxReceiveMessageSize(-1);
  builder.SetMaxSendMessageSize(-1);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    std::fprintf(stderr, "grpc_echo_server: cannot listen on 127.0.0.1\n");
    return 1;
  }
  std::printf("%d\n", port);
  std::fflush(stdout);
  AwaitStdinEof();
  server->Shutdown();
  return 0;
}
