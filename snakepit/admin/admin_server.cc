#include "snakepit/admin/admin_server.h"

#include <httplib.h>
#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

#include "snakepit/base/status.h"

namespace snakepit::admin {
namespace {

constexpr char kTextContentType[] = "text/plain; charset=utf-8";
constexpr char kMetricsContentType[] = "text/plain; version=0.0.4";

// Probes and scrapers, a few at a time.
constexpr size_t kHandlerThreads = 4;
// An idle keep-alive connection holds a handler thread this long, and
// Stop() may wait for it.
constexpr time_t kKeepAliveSeconds = 1;
constexpr time_t kReadTimeoutSeconds = 2;
constexpr time_t kWriteTimeoutSeconds = 5;
// The most Start() waits for the serving thread to enter its accept loop.
constexpr auto kStartWait = std::chrono::seconds(5);

struct HostPort {
  std::string host;  // without IPv6 brackets
  int port = 0;
};

absl::StatusOr<HostPort> SplitHostPort(const std::string& address) {
  const size_t colon = address.rfind(':');
  HostPort hp;
  if (colon == std::string::npos || colon == 0 ||
      !absl::SimpleAtoi(ToAbsl(std::string_view(address).substr(colon + 1)),
                        &hp.port) ||
      hp.port < 0 || hp.port > 65535) {
    return ReasonError(
        reason::kInvalidArgument,
        absl::StrCat("admin address \"", address, "\" is not HOST:PORT"));
  }
  hp.host = address.substr(0, colon);
  if (hp.host.size() >= 2 && hp.host.front() == '[' && hp.host.back() == ']') {
    hp.host = hp.host.substr(1, hp.host.size() - 2);
  }
  return hp;
}

std::string JoinHostPort(const std::string& host, int port) {
  if (host.find(':') != std::string::npos) {
    return absl::StrCat("[", host, "]:", port);
  }
  return absl::StrCat(host, ":", port);
}

// httplib's default socket options add SO_REUSEPORT, which lets a second
// process bind the same port and silently take half the requests; a
// second node on our port must fail to start instead.
void ReuseAddressOnly(socket_t sock) {
  int yes = 1;
  setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
}

// The /readyz body: with `verbose`, a "[+] name" or "[-] name: detail"
// line per check, then "ready" or "not ready".
std::string ReadyBody(const std::vector<Check>& checks, bool verbose,
                      bool* ready) {
  std::string body;
  *ready = true;
  for (const Check& check : checks) {
    *ready = *ready && check.ok;
    if (!verbose) {
      continue;
    }
    if (check.ok) {
      absl::StrAppend(&body, "[+] ", check.name, "\n");
    } else {
      absl::StrAppend(&body, "[-] ", check.name, ": ", check.detail, "\n");
    }
  }
  absl::StrAppend(&body, *ready ? "ready" : "not ready");
  return body;
}

// Routes refer to `handlers`, which must outlive `server`.
void InstallRoutes(const AdminHandlers& handlers, httplib::Server& server) {
  server.Get("/livez", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("ok", kTextContentType);
  });
  server.Get("/readyz", [&handlers](const httplib::Request& req,
                                    httplib::Response& res) {
    std::vector<Check> checks;
    if (handlers.readiness) {
      checks = handlers.readiness();
    }
    bool ready = false;
    std::string body = ReadyBody(checks, req.has_param("verbose"), &ready);
    res.status = ready ? 200 : 503;
    res.set_content(body, kTextContentType);
  });
  server.Get(
      "/metrics", [&handlers](const httplib::Request&, httplib::Response& res) {
        res.set_content(handlers.metrics ? handlers.metrics() : std::string(),
                        kMetricsContentType);
      });
}

void Configure(httplib::Server& server) {
  server.set_socket_options(ReuseAddressOnly);
  server.new_task_queue = [] {
    return new httplib::ThreadPool(kHandlerThreads);
  };
  server.set_keep_alive_timeout(kKeepAliveSeconds);
  server.set_read_timeout(kReadTimeoutSeconds, 0);
  server.set_write_timeout(kWriteTimeoutSeconds, 0);
}

// Binds `hp`; returns the bound port, or -1.
int Bind(httplib::Server& server, const HostPort& hp) {
  if (hp.port == 0) {
    return server.bind_to_any_port(hp.host);
  }
  return server.bind_to_port(hp.host, hp.port) ? hp.port : -1;
}

}  // namespace

struct AdminServer::Impl {
  // Fixed once Start() returns. `handlers` is declared first so that it
  // outlives `server`, whose routes refer to it.
  AdminHandlers handlers;
  httplib::Server server;
  std::string address;
  // Set by the serving thread when listen_after_bind() returns.
  std::atomic<bool> listen_returned{false};

  // Guarded by stop_mu; joinable until Stop() has run.
  std::mutex stop_mu;
  std::thread thread;

  // Starts the serving thread; false if it ended before serving.
  bool Serve();
  // Waits, at most kStartWait, until the serving thread runs or ended.
  void AwaitServing();
};

bool AdminServer::Impl::Serve() {
  thread = std::thread([this] {
    server.listen_after_bind();
    listen_returned = true;
  });
  AwaitServing();
  return server.is_running();
}

// httplib's stop() does nothing unless the server already runs, so a
// stop() issued before the serving thread got going would be lost and
// the join would wait forever.
void AdminServer::Impl::AwaitServing() {
  const auto give_up = std::chrono::steady_clock::now() + kStartWait;
  while (!server.is_running() && !listen_returned &&
         std::chrono::steady_clock::now() < give_up) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

absl::StatusOr<std::unique_ptr<AdminServer>> AdminServer::Start(
    const std::string& address, AdminHandlers handlers) {
  absl::StatusOr<HostPort> hp = SplitHostPort(address);
  if (!hp.ok()) {
    return hp.status();
  }
  auto impl = std::make_unique<Impl>();
  impl->handlers = std::move(handlers);
  Configure(impl->server);
  InstallRoutes(impl->handlers, impl->server);

  const int port = Bind(impl->server, *hp);
  if (port < 0) {
    // UNAVAILABLE: the usual cause, a port still held by a process that is
    // exiting, goes away on a retry. The reason is the one node.cc gives
    // for its gRPC listeners.
    return MakeError(absl::StatusCode::kUnavailable, "cannot_listen",
                     absl::StrCat("admin listener ", address,
                                  ": cannot bind (port in use, or not an "
                                  "address of this host)"));
  }
  impl->address = JoinHostPort(hp->host, port);
  std::unique_ptr<AdminServer> server(new AdminServer(std::move(impl)));
  if (!server->impl_->Serve()) {
    server->Stop();
    return MakeError(absl::StatusCode::kInternal, reason::kInternal,
                     absl::StrCat("admin listener ", address,
                                  ": serving thread did not start"));
  }
  return server;
}

AdminServer::AdminServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

AdminServer::~AdminServer() {
  Stop();
}

std::string AdminServer::address() const {
  return impl_->address;
}

// Waits for requests in flight, so a handler must not call it.
void AdminServer::Stop() {
  std::lock_guard<std::mutex> lock(impl_->stop_mu);
  if (!impl_->thread.joinable()) {
    return;
  }
  impl_->AwaitServing();
  impl_->server.stop();
  impl_->thread.join();
}

}  // namespace snakepit::admin
