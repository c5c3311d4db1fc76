#include "snakepit/server/node.h"

#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>

#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/str_join.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "snakepit/base/log.h"
#include "snakepit/base/status.h"
#include "snakepit/session/open_store.h"
#include "snakepit/session/pool_backend.h"

namespace snakepit::server {
namespace {

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream file(path);
  if (!file) {
    return absl::NotFoundError(absl::StrCat("cannot read ", path));
  }
  std::stringstream text;
  text << file.rdbuf();
  return text.str();
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentials(
    const NodeConfig& config) {
  if (config.tls_cert_file.empty()) {
    return grpc::InsecureServerCredentials();
  }
  absl::StatusOr<std::string> cert = ReadFile(config.tls_cert_file);
  absl::StatusOr<std::string> key = ReadFile(config.tls_key_file);
  if (!cert.ok() || !key.ok()) {
    return cert.ok() ? key.status() : cert.status();
  }
  grpc::SslServerCredentialsOptions ssl;
  ssl.pem_key_cert_pairs.push_back({*key, *cert});
  return grpc::SslServerCredentials(ssl);
}

// A socket file left by a node that died keeps a new one from binding,
// so it is removed; but only when nothing answers on it, so that a second
// node never takes over a live one's socket. Other kinds of file stay.
absl::Status ClaimUnixSocket(const std::string& address) {
  if (!address.starts_with("unix:")) {
    return absl::OkStatus();
  }
  std::string path = address.substr(5);
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0 || !S_ISSOCK(st.st_mode)) {
    return absl::OkStatus();
  }
  struct sockaddr_un peer = {};
  peer.sun_family = AF_UNIX;
  if (path.size() >= sizeof(peer.sun_path)) {
    return absl::OkStatus();  // gRPC reports the long path itself
  }
  std::memcpy(peer.sun_path, path.c_str(), path.size() + 1);
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  bool live = fd >= 0 && ::connect(fd, reinterpret_cast<sockaddr*>(&peer),
                                   sizeof(peer)) == 0;
  if (fd >= 0) {
    ::close(fd);
  }
  if (live) {
    return MakeError(absl::StatusCode::kUnavailable, "cannot_listen",
                     absl::StrCat("another process is serving on ", address));
  }
  ::unlink(path.c_str());
  return absl::OkStatus();
}

// "127.0.0.1:0" with port 41234 chosen becomes "127.0.0.1:41234".
std::string WithPort(const std::string& address, int port) {
  if (address.starts_with("unix:") || port <= 0) {
    return address;
  }
  size_t colon = address.rfind(':');
  return absl::StrCat(address.substr(0, colon), ":", port);
}

PoolOptions ToPoolOptions(const PoolConfig& pool) {
  PoolOptions options;
  options.name = pool.name;
  options.modules = pool.modules;
  options.search_paths = pool.paths;
  options.python = pool.python;
  options.size = pool.size;
  options.env = pool.env;
  options.startup_timeout = pool.startup_timeout;
  options.max_payload_bytes = pool.max_payload_bytes;
  options.max_queue = pool.max_queue;
  options.cancel_grace = pool.cancel_grace;
  options.max_concurrency = pool.max_concurrency;
  options.zygote = pool.zygote;
  options.liveness_interval = pool.liveness_interval;
  options.liveness_timeout = pool.liveness_timeout;
  options.max_calls_per_worker = pool.max_calls_per_worker;
  options.max_worker_age = pool.max_worker_age > absl::ZeroDuration()
                               ? pool.max_worker_age
                               : absl::InfiniteDuration();
  options.max_worker_rss_bytes = pool.max_worker_rss_bytes;
  options.max_worker_pss_bytes = pool.max_worker_pss_bytes;
  return options;
}

}  // namespace

void BlockShutdownSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

Node::Node(NodeConfig config)
    : config_(std::move(config)), metrics_(kVersion) {
  state_.token = config_.token;
  state_.version = kVersion;
  state_.metrics = &metrics_;
}

Node::~Node() { Drain(); }

absl::StatusOr<std::unique_ptr<Node>> Node::Start(NodeConfig config) {
  std::unique_ptr<Node> node(new Node(std::move(config)));
  using Step = absl::Status (Node::*)();
  for (Step step : {&Node::OpenSessions, &Node::StartPools, &Node::StartGrpc,
                    &Node::StartAdmin}) {
    if (absl::Status s = (node.get()->*step)(); !s.ok()) {
      node->Drain();
      return s;
    }
  }
  if (absl::Status s = node->WriteReadyFile(); !s.ok()) {
    node->Drain();
    return s;
  }
  node->serving_ = true;
  Log().info("node {} serving {} pool(s) on {}; admin on {}", getpid(),
             node->state_.pools.size(),
             absl::StrJoin(node->grpc_addresses_, ", "),
             node->admin_address().empty() ? "(off)"
                                           : node->admin_address());
  return node;
}

absl::Status Node::OpenSessions() {
  StoreConfig store;
  absl::StatusOr<StoreKind> kind = ParseStoreKind(config_.sessions_store);
  if (!kind.ok()) {
    return kind.status();
  }
  store.kind = *kind;
  store.path = config_.sessions_path;
  store.default_ttl = config_.sessions_ttl;
  store.max_sessions = config_.max_sessions;
  store.max_program_bytes = config_.max_program_bytes;
  absl::StatusOr<std::unique_ptr<SessionStore>> opened = OpenStore(store);
  if (!opened.ok()) {
    return opened.status();
  }
  state_.sessions = std::move(*opened);
  // A session that ends (deleted or expired) ends in every pool's
  // workers. The listener is removed in Drain, before the pools stop.
  session_listener_ = state_.sessions->AddDeleteListener(
      [this](const std::string& id, DeleteCause) {
        for (api::ServedPool& served : state_.pools) {
          served.pool->EndSession(id);
        }
      });
  return absl::OkStatus();
}

absl::Status Node::StartPools() {
  const size_t n = config_.pools.size();
  std::shared_ptr<SessionBackend> backend = MakePoolBackend(state_.sessions);
  std::vector<absl::StatusOr<std::unique_ptr<Pool>>> started;
  for (size_t i = 0; i < n; ++i) {
    started.emplace_back(absl::UnknownError("not started"));
  }
  std::vector<std::thread> threads;
  for (size_t i = 0; i < n; ++i) {
    threads.emplace_back([this, i, &started, backend] {
      PoolOptions options = ToPoolOptions(config_.pools[i]);
      options.sessions = backend;
      started[i] = Pool::Start(std::move(options));
    });
  }
  for (std::thread& t : threads) {
    t.join();
  }
  for (size_t i = 0; i < n; ++i) {
    if (!started[i].ok()) {
      absl::Status s = started[i].status();
      return MakeError(s.code(), ReasonOf(s),
                       absl::StrCat("pool ", config_.pools[i].name, ": ",
                                    s.message()));
    }
    api::ServedPool served;
    served.name = config_.pools[i].name;
    served.pool = std::move(*started[i]);
    served.modules = config_.pools[i].modules;
    served.python = config_.pools[i].python.empty()
                        ? DefaultPython()
                        : config_.pools[i].python;
    for (const FunctionInfo& f : served.pool->Functions()) {
      state_.function_to_pool.try_emplace(f.name, i);
      served.functions.insert(f.name);
    }
    state_.pools.push_back(std::move(served));
  }
  return absl::OkStatus();
}

absl::Status Node::StartGrpc() {
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials =
      ServerCredentials(config_);
  if (!credentials.ok()) {
    return credentials.status();
  }
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  service_ = std::make_unique<api::Service>(&state_);

  grpc::ServerBuilder builder;
  std::vector<int> ports(config_.listen.size(), 0);
  for (size_t i = 0; i < config_.listen.size(); ++i) {
    if (absl::Status s = ClaimUnixSocket(config_.listen[i]); !s.ok()) {
      return s;
    }
    builder.AddListeningPort(config_.listen[i], *credentials, &ports[i]);
  }
  // gRPC sets SO_REUSEPORT by default, which lets a second node bind the
  // same port and take half of the first one's connections.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.SetMaxReceiveMessageSize(static_cast<int>(config_.max_message_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(config_.max_message_bytes));
  builder.RegisterService(service_.get());
  service_->AddCallQueue(builder);
  server_ = builder.BuildAndStart();
  if (!server_) {
    return MakeError(absl::StatusCode::kUnavailable, "cannot_listen",
                     absl::StrCat("cannot listen on ",
                                  absl::StrJoin(config_.listen, ", ")));
  }
  for (size_t i = 0; i < config_.listen.size(); ++i) {
    if (ports[i] == 0) {
      return MakeError(absl::StatusCode::kUnavailable, "cannot_listen",
                       absl::StrCat("cannot listen on ", config_.listen[i]));
    }
    grpc_addresses_.push_back(WithPort(config_.listen[i], ports[i]));
  }
  state_.listen = grpc_addresses_;
  service_->StartCallThreads();
  server_->GetHealthCheckService()->SetServingStatus(true);
  return absl::OkStatus();
}

absl::Status Node::StartAdmin() {
  if (config_.admin.empty()) {
    return absl::OkStatus();
  }
  admin::AdminHandlers handlers;
  handlers.readiness = [this] { return Readiness(); };
  handlers.metrics = [this] { return metrics_.Render(Gauges()); };
  absl::StatusOr<std::unique_ptr<admin::AdminServer>> admin =
      admin::AdminServer::Start(config_.admin, std::move(handlers));
  if (!admin.ok()) {
    return admin.status();
  }
  admin_ = std::move(*admin);
  return absl::OkStatus();
}

absl::Status Node::WriteReadyFile() const {
  if (config_.ready_file.empty()) {
    return absl::OkStatus();
  }
  Value ready = {{"pid", getpid()},
                 {"grpc", grpc_addresses_},
                 {"admin", admin_address()}};
  std::string tmp = config_.ready_file + ".tmp";
  {
    std::ofstream out(tmp);
    out << ToJson(ready) << "\n";
    if (!out) {
      return absl::PermissionDeniedError(
          absl::StrCat("cannot write ", tmp));
    }
  }
  if (std::rename(tmp.c_str(), config_.ready_file.c_str()) != 0) {
    return ErrnoToStatus(errno, absl::StrCat("rename to ",
                                             config_.ready_file));
  }
  return absl::OkStatus();
}

namespace {

// One line for a start failure: its first line, and the last line of the
// stderr tail it may carry (where a crash usually says why). The whole
// text is in the log.
std::string FailureSummary(const absl::Status& failure) {
  std::string why(failure.message());
  constexpr std::string_view kTail = "; stderr:\n";
  size_t tail = why.find(kTail);
  std::string head = why.substr(0, std::min(tail, why.find('\n')));
  if (tail == std::string::npos) {
    return head;
  }
  std::vector<std::string> lines =
      absl::StrSplit(why.substr(tail + kTail.size()), '\n',
                     absl::SkipWhitespace());
  return lines.empty() ? head : absl::StrCat(head, "; stderr: ", lines.back());
}

}  // namespace

std::vector<admin::Check> Node::Readiness() const {
  std::vector<admin::Check> checks;
  bool draining = state_.draining.load();
  checks.push_back({"not draining", !draining,
                    draining ? "the node is shutting down" : ""});
  for (const api::ServedPool& served : state_.pools) {
    PoolStats stats = served.pool->Stats();
    // A recycled worker's replacement may make one more for a moment,
    // and starts while the worker it replaces still serves.
    bool warm = stats.ready >= stats.size;
    std::string detail =
        absl::StrCat(stats.ready, " of ", stats.size, " workers ready");
    if (stats.state == PoolState::kDegraded) {
      absl::StrAppend(&detail, "; degraded: ",
                      FailureSummary(stats.start_failure));
    }
    checks.push_back(
        {absl::StrCat("pool ", served.name, " warm"), warm, detail});
  }
  return checks;
}

std::vector<admin::PoolGauges> Node::Gauges() const {
  std::vector<admin::PoolGauges> gauges;
  for (const api::ServedPool& served : state_.pools) {
    PoolStats stats = served.pool->Stats();
    admin::PoolGauges g;
    g.pool = served.name;
    g.queue_depth = stats.queued;
    g.workers_by_state = {{"starting", stats.starting},
                          {"idle", stats.ready - stats.busy},
                          {"busy", stats.busy}};
    g.restarts_by_reason = stats.restarts_by_reason;
    g.state = PoolStateName(stats.state);
    gauges.push_back(std::move(g));
  }
  return gauges;
}

const std::vector<std::string>& Node::grpc_addresses() const {
  return grpc_addresses_;
}

std::string Node::admin_address() const {
  return admin_ ? admin_->address() : std::string();
}

void Node::Drain() {
  std::call_once(drain_once_, [this] {
    state_.draining.store(true);
    if (server_) {
      server_->GetHealthCheckService()->SetServingStatus(false);
    }
    if (serving_) {
      Log().info("node {} draining: up to {} for calls in flight", getpid(),
                 absl::FormatDuration(config_.drain_timeout));
    }
    if (!config_.ready_file.empty() && serving_) {
      ::unlink(config_.ready_file.c_str());
    }

    if (state_.sessions) {
      state_.sessions->RemoveDeleteListener(session_listener_);
    }
    // Pools drain in parallel; each lets its running calls finish within
    // the drain timeout, then ends its workers.
    std::vector<std::thread> threads;
    for (api::ServedPool& served : state_.pools) {
      threads.emplace_back([this, &served] {
        served.pool->Shutdown(config_.drain_timeout, config_.worker_grace);
      });
    }
    for (std::thread& t : threads) {
      t.join();
    }
    // Let the last replies reach their clients.
    absl::Time limit = absl::Now() + absl::Seconds(2);
    while (state_.rpcs_in_flight.load() > 0 && absl::Now() < limit) {
      absl::SleepFor(absl::Milliseconds(5));
    }
    if (server_) {
      server_->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(1)));
      if (size_t stuck = service_->StopCallThreads(); stuck > 0) {
        Log().error("node {}: {} Call RPCs still open 30 s after their "
                    "calls were cancelled", getpid(), stuck);
      }
    }
    if (admin_) {
      admin_->Stop();
    }
    if (serving_) {
      Log().info("node {} stopped", getpid());
    }
  });
}

int Node::ServeUntilSignalled() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  int signal = 0;
  while (sigwait(&set, &signal) != 0) {
  }
  Log().info("node {} got signal {} ({}); draining", getpid(), signal,
             sigabbrev_np(signal));

  std::atomic<bool> drained{false};
  std::thread drainer([&] {
    Drain();
    drained.store(true);
  });
  struct timespec tick = {0, 50'000'000};
  while (!drained.load()) {
    if (sigtimedwait(&set, nullptr, &tick) > 0) {
      // A second signal: stop now. The workers see their sockets close
      // with this process and end themselves and their children.
      Log().warn("node {} got a second signal; exiting at once", getpid());
      Log().flush();
      _exit(1);
    }
  }
  drainer.join();
  return 0;
}

}  // namespace snakepit::server
