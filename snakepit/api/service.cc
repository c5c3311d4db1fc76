#include "snakepit/api/service.h"

#include <unistd.h>

#include <chrono>
#include <deque>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "snakepit/api/errors.h"
#include "snakepit/base/status.h"
#include "snakepit/base/value.h"

namespace snakepit::api {
namespace {

// Compares without an early exit, so the time taken does not tell how
// much of a guessed token was right.
bool SameSecret(std::string_view given, std::string_view secret) {
  if (secret.empty()) {
    return false;
  }
  unsigned char diff = given.size() == secret.size() ? 0 : 1;
  for (size_t i = 0; i < given.size(); ++i) {
    diff |= static_cast<unsigned char>(given[i] ^ secret[i % secret.size()]);
  }
  return diff == 0;
}

absl::Status CheckToken(const NodeState& node,
                        const grpc::CallbackServerContext& context) {
  if (node.token.empty()) {
    return absl::OkStatus();
  }
  const auto& metadata = context.client_metadata();
  auto it = metadata.find("authorization");
  std::string_view given;
  if (it != metadata.end()) {
    given = std::string_view(it->second.data(), it->second.size());
  }
  constexpr std::string_view kBearer = "Bearer ";
  if (!given.starts_with(kBearer) ||
      !SameSecret(given.substr(kBearer.size()), node.token)) {
    return MakeError(absl::StatusCode::kUnauthenticated, "unauthenticated",
                     it == metadata.end()
                         ? "this node needs a bearer token"
                         : "the bearer token is not valid for this node");
  }
  return absl::OkStatus();
}

absl::Duration TimeoutOf(const grpc::CallbackServerContext& context) {
  auto deadline = context.deadline();
  if (deadline == std::chrono::system_clock::time_point::max()) {
    return absl::InfiniteDuration();
  }
  return absl::FromChrono(deadline - std::chrono::system_clock::now());
}

absl::StatusOr<std::string> ArgsToMsgpack(const v1::Payload& payload) {
  const std::string& type = payload.content_type();
  if (type.empty() || type == kMsgpack) {
    return payload.data();
  }
  if (type != kJson) {
    return ReasonError(
        reason::kInvalidArgument,
        absl::StrCat("unsupported content type \"", type, "\"; use ",
                     kMsgpack, " or ", kJson));
  }
  if (payload.data().empty()) {
    return std::string();
  }
  absl::StatusOr<Value> value = ParseJson(payload.data());
  if (!value.ok()) {
    return value.status();
  }
  if (!value->is_object() && !value->is_array()) {
    return ReasonError(reason::kInvalidArgument,
                       "JSON arguments must be an object (keywords) or an "
                       "array (positional)");
  }
  return EncodeValue(*value);
}

// Ends an RPC once with `status`, its reason in the trailer.
template <typename Reactor>
void FinishWith(Reactor* reactor, grpc::CallbackServerContext* context,
                const absl::Status& status) {
  if (!status.ok()) {
    context->AddTrailingMetadata(kErrorTrailer, ErrorDetailBytes(status));
  }
  reactor->Finish(ToGrpcStatus(status));
}

// Counts an RPC in flight for as long as it lives.
class InFlight {
 public:
  explicit InFlight(NodeState* node) : node_(node) {
    node_->rpcs_in_flight.fetch_add(1);
  }
  ~InFlight() { node_->rpcs_in_flight.fetch_sub(1); }

 private:
  NodeState* node_;
};

// Lifetimes. gRPC deletes a reactor in OnDone, which may run on another
// thread as soon as Finish is called, while a pool thread may still be in
// one of the call's callbacks. So the callbacks hold a shared CallLink,
// not the reactor; the link reaches the reactor only until it has called
// Finish, and calls Finish outside its lock.
struct CallLink {
  std::mutex mu;
  bool finished = false;  // Finish called or about to be
  NodeState* node = nullptr;
  std::string function;
  PreparedCall prepared;
  absl::Time start;
};

void RecordCall(const CallLink& link, const absl::Status& status,
                const snakepit::Call& call) {
  if (link.node->metrics != nullptr && link.prepared.pool != nullptr) {
    link.node->metrics->RecordCall(link.prepared.pool->name, link.function,
                                   CodeName(status.code()),
                                   absl::Now() - link.start,
                                   call.QueueWait());
  }
}

class UnaryCall : public grpc::ServerUnaryReactor {
 public:
  UnaryCall(NodeState* node, grpc::CallbackServerContext* context,
            const v1::CallRequest* request, v1::CallResponse* response)
      : in_flight_(node), context_(context), response_(response),
        link_(std::make_shared<CallLink>()) {
    link_->node = node;
    link_->function = request->function();
    absl::StatusOr<PreparedCall> prepared =
        PrepareCall(*node, *context, *request);
    if (!prepared.ok()) {
      link_->finished = true;
      FinishWith(this, context_, prepared.status());
      return;
    }
    link_->prepared = std::move(*prepared);
    link_->start = absl::Now();
    call_ = link_->prepared.pool->pool->SubmitRaw(
        link_->function, std::move(link_->prepared.args_msgpack),
        {link_->prepared.timeout});
    call_.OnComplete([this, link = link_, call = call_](
                         const absl::Status& status) {
      Complete(link, call, status);
    });
  }

  void OnCancel() override {
    bool running;
    {
      std::lock_guard<std::mutex> lock(link_->mu);
      running = !link_->finished;
    }
    if (running) {
      call_.Cancel();  // completes through Complete
    }
  }

  void OnDone() override { delete this; }

 private:
  // Runs once, on a pool thread or in Cancel. `this` is alive: Finish
  // has not been called yet.
  void Complete(const std::shared_ptr<CallLink>& link,
                const snakepit::Call& call, const absl::Status& status) {
    absl::Status result = status;
    if (result.ok()) {
      absl::StatusOr<std::string> raw = call.GetRaw();
      result = raw.ok() ? FillPayload(*raw, link->prepared.accept,
                                      response_->mutable_result())
                        : raw.status();
    }
    RecordCall(*link, result, call);
    {
      std::lock_guard<std::mutex> lock(link->mu);
      link->finished = true;
    }
    FinishWith(this, context_, result);
  }

  InFlight in_flight_;
  grpc::CallbackServerContext* const context_;
  v1::CallResponse* const response_;
  std::shared_ptr<CallLink> link_;
  snakepit::Call call_ = snakepit::Call::Failed(absl::OkStatus());
};

// A streamed call: chunks queue here and go out one write at a time.
// TODO(#3): the queue is unbounded; a slow reader lets a fast generator
// fill host memory. Stop reading the worker past a bound.
class StreamCall : public grpc::ServerWriteReactor<v1::CallChunk> {
 public:
  StreamCall(NodeState* node, grpc::CallbackServerContext* context,
             const v1::CallRequest* request)
      : in_flight_(node), context_(context),
        link_(std::make_shared<CallLink>()) {
    link_->node = node;
    link_->function = request->function();
    absl::StatusOr<PreparedCall> prepared =
        PrepareCall(*node, *context, *request);
    if (!prepared.ok()) {
      link_->finished = true;
      FinishWith(this, context_, prepared.status());
      return;
    }
    link_->prepared = std::move(*prepared);
    link_->start = absl::Now();
    call_ = link_->prepared.pool->pool->SubmitRaw(
        link_->function, std::move(link_->prepared.args_msgpack),
        {link_->prepared.timeout});
    std::shared_ptr<CallLink> link = link_;
    call_.OnChunk([this, link](std::string chunk) {
      Enqueue(link, std::move(chunk));
    });
    call_.OnComplete([this, link, call = call_](const absl::Status& status) {
      RecordCall(*link, status, call);
      End(link, status);
    });
  }

  void OnWriteDone(bool ok) override {
    std::unique_lock<std::mutex> lock(link_->mu);
    writing_ = false;
    if (!ok) {
      return;  // the client is gone; OnCancel cancels the call
    }
    outbox_.pop_front();
    Advance(lock);
  }

  void OnCancel() override { call_.Cancel(); }

  void OnDone() override { delete this; }

 private:
  void Enqueue(const std::shared_ptr<CallLink>& link, std::string msgpack) {
    std::unique_lock<std::mutex> lock(link->mu);
    if (link->finished) {
      return;
    }
    v1::CallChunk chunk;
    absl::Status filled =
        FillPayload(msgpack, link->prepared.accept, chunk.mutable_data());
    if (!filled.ok()) {
      final_ = filled;
      snakepit::Call call = call_;  // `this` may go once unlocked
      lock.unlock();
      call.Cancel();
      return;
    }
    outbox_.push_back(std::move(chunk));
    Advance(lock);
  }

  void End(const std::shared_ptr<CallLink>& link,
           const absl::Status& status) {
    std::unique_lock<std::mutex> lock(link->mu);
    if (link->finished) {
      return;
    }
    if (final_.ok()) {
      final_ = status;
    }
    ended_ = true;
    Advance(lock);
  }

  // Starts the next write, or finishes once the call has ended and every
  // chunk is out. Releases `lock` before Finish (see CallLink).
  void Advance(std::unique_lock<std::mutex>& lock) {
    if (link_->finished || writing_) {
      return;
    }
    if (!outbox_.empty()) {
      writing_ = true;
      StartWrite(&outbox_.front());
      return;
    }
    if (ended_) {
      link_->finished = true;
      absl::Status final = final_;
      lock.unlock();
      FinishWith(this, context_, final);
    }
  }

  InFlight in_flight_;
  grpc::CallbackServerContext* const context_;
  std::shared_ptr<CallLink> link_;
  snakepit::Call call_ = snakepit::Call::Failed(absl::OkStatus());

  // Guarded by link_->mu.
  std::deque<v1::CallChunk> outbox_;  // the front one is being written
  bool writing_ = false;
  bool ended_ = false;
  absl::Status final_;
};

}  // namespace

absl::StatusOr<PreparedCall> PrepareCall(
    NodeState& node, const grpc::CallbackServerContext& context,
    const v1::CallRequest& request) {
  if (absl::Status s = CheckToken(node, context); !s.ok()) {
    return s;
  }
  if (node.draining.load()) {
    return MakeError(absl::StatusCode::kUnavailable, "node_draining",
                     "this node is shutting down; call another");
  }
  PreparedCall prepared;
  if (!request.pool().empty()) {
    for (ServedPool& served : node.pools) {
      if (served.name == request.pool()) {
        prepared.pool = &served;
      }
    }
    if (prepared.pool == nullptr) {
      return MakeError(absl::StatusCode::kNotFound, "unknown_pool",
                       absl::StrCat("no pool ", request.pool(),
                                    " on this node"));
    }
  } else {
    auto it = node.function_to_pool.find(request.function());
    if (it == node.function_to_pool.end()) {
      return ReasonError(reason::kUnknownFunction,
                         absl::StrCat("no function ", request.function(),
                                      " on this node (`snakepit fn list` "
                                      "shows them)"));
    }
    prepared.pool = &node.pools[it->second];
  }
  absl::StatusOr<std::string> args = ArgsToMsgpack(request.args());
  if (!args.ok()) {
    return args.status();
  }
  prepared.args_msgpack = std::move(*args);
  prepared.accept = request.accept().empty() ? request.args().content_type()
                                             : request.accept();
  if (prepared.accept.empty()) {
    prepared.accept = kMsgpack;
  }
  if (prepared.accept != kMsgpack && prepared.accept != kJson) {
    return ReasonError(reason::kInvalidArgument,
                       absl::StrCat("unsupported accept type \"",
                                    prepared.accept, "\""));
  }
  prepared.timeout = TimeoutOf(context);
  return prepared;
}

absl::Status FillPayload(const std::string& msgpack,
                         const std::string& content_type, v1::Payload* out) {
  out->set_content_type(content_type);
  if (content_type == kMsgpack) {
    out->set_data(msgpack);
    return absl::OkStatus();
  }
  absl::StatusOr<Value> value = DecodeValue(msgpack);
  if (!value.ok()) {
    return value.status();
  }
  out->set_data(ToJson(*value));
  return absl::OkStatus();
}

grpc::ServerUnaryReactor* Service::Call(grpc::CallbackServerContext* context,
                                        const v1::CallRequest* request,
                                        v1::CallResponse* response) {
  return new UnaryCall(node_, context, request, response);
}

grpc::ServerWriteReactor<v1::CallChunk>* Service::CallStream(
    grpc::CallbackServerContext* context, const v1::CallRequest* request) {
  return new StreamCall(node_, context, request);
}

grpc::ServerUnaryReactor* Service::ListFunctions(
    grpc::CallbackServerContext* context, const v1::ListFunctionsRequest*,
    v1::ListFunctionsResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  if (absl::Status s = CheckToken(*node_, *context); !s.ok()) {
    FinishWith(reactor, context, s);
    return reactor;
  }
  for (const ServedPool& served : node_->pools) {
    for (const FunctionInfo& f : served.pool->Functions()) {
      v1::FunctionInfo* out = response->add_functions();
      out->set_name(f.name);
      out->set_pool(served.name);
      out->set_kind(f.kind);
      out->set_signature(f.signature);
      out->set_doc(f.doc);
    }
  }
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* Service::GetNodeInfo(
    grpc::CallbackServerContext* context, const v1::GetNodeInfoRequest*,
    v1::NodeInfo* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  if (absl::Status s = CheckToken(*node_, *context); !s.ok()) {
    FinishWith(reactor, context, s);
    return reactor;
  }
  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  response->set_version(node_->version);
  response->set_pid(getpid());
  response->set_hostname(host);
  response->set_uptime_seconds(
      absl::ToInt64Seconds(absl::Now() - node_->started));
  response->set_draining(node_->draining.load());
  for (const std::string& address : node_->listen) {
    response->add_listen(address);
  }
  for (const ServedPool& served : node_->pools) {
    PoolStats stats = served.pool->Stats();
    v1::PoolInfo* info = response->add_pools();
    info->set_name(served.name);
    info->set_size(stats.size);
    info->set_ready(stats.ready);
    info->set_busy(stats.busy);
    info->set_starting(stats.starting);
    info->set_queued(stats.queued);
    info->set_restarts(stats.restarts);
    for (const std::string& m : served.modules) {
      info->add_modules(m);
    }
    info->set_python(served.python);
  }
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace snakepit::api
