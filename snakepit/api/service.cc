#include "snakepit/api/service.h"

#include <unistd.h>

#include <chrono>
#include <deque>
#include <mutex>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "snakepit/api/errors.h"
#include "snakepit/base/status.h"
#include "snakepit/base/value.h"
#include "snakepit/session/export.h"

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

// Checks and submits the RPC's call, filling `link`. On failure the link
// is marked finished and the caller finishes the RPC with the status.
absl::StatusOr<snakepit::Call> StartCall(CallLink& link, NodeState* node,
                                         grpc::CallbackServerContext& context,
                                         const v1::CallRequest& request) {
  link.node = node;
  link.function = request.function();
  absl::StatusOr<PreparedCall> prepared =
      PrepareCall(*node, context, request);
  if (!prepared.ok()) {
    link.finished = true;
    return prepared.status();
  }
  link.prepared = std::move(*prepared);
  link.start = absl::Now();
  return link.prepared.pool->pool->SubmitRaw(
      link.function, std::move(link.prepared.args_msgpack),
      link.prepared.options);
}

// TODO(#3): a small call through the node costs about 2.5x a bare C++
// gRPC echo (docs/benchmarks.md): the reply crosses from the pool's I/O
// thread to gRPC's. Serving Call on gRPC's thread and letting it read the
// worker's reply itself (Pool's Drive) should remove that handoff.
class UnaryCall : public grpc::ServerUnaryReactor {
 public:
  UnaryCall(NodeState* node, grpc::CallbackServerContext* context,
            const v1::CallRequest* request, v1::CallResponse* response)
      : in_flight_(node), context_(context), response_(response),
        link_(std::make_shared<CallLink>()) {
    absl::StatusOr<snakepit::Call> call =
        StartCall(*link_, node, *context, *request);
    if (!call.ok()) {
      FinishWith(this, context_, call.status());
      return;
    }
    call_ = *call;
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
    // gRPC cancels an RPC whose deadline passed; that is a deadline.
    absl::Status recorded = result;
    if (absl::IsCancelled(result) &&
        context_->deadline() <= std::chrono::system_clock::now()) {
      recorded = ReasonError(reason::kDeadlineExceeded, "deadline passed");
    }
    RecordCall(*link, recorded, call);
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

// A streamed call: chunks queue here and go out one write at a time. A
// client more than kMaxOutboxBytes behind ends the call (slow_reader).
// TODO(#3): pause the worker instead (flow control), so that a slow but
// steady reader is served rather than cut off.
constexpr size_t kMaxOutboxBytes = 64u << 20;
class StreamCall : public grpc::ServerWriteReactor<v1::CallChunk> {
 public:
  StreamCall(NodeState* node, grpc::CallbackServerContext* context,
             const v1::CallRequest* request)
      : in_flight_(node), context_(context),
        link_(std::make_shared<CallLink>()) {
    absl::StatusOr<snakepit::Call> call =
        StartCall(*link_, node, *context, *request);
    if (!call.ok()) {
      FinishWith(this, context_, call.status());
      return;
    }
    call_ = *call;
    std::shared_ptr<CallLink> link = link_;
    call_.OnChunk([this, link](std::string chunk) {
      Enqueue(link, std::move(chunk));
    });
    call_.OnComplete([this, link, call = call_](const absl::Status& status) {
      RecordCall(*link, status, call);
      // A plain function's result is its one chunk.
      if (status.ok() && !call.Streams()) {
        absl::StatusOr<std::string> result = call.GetRaw();
        if (result.ok()) {
          Enqueue(link, std::move(*result));
        }
      }
      End(link, status);
    });
  }

  void OnWriteDone(bool ok) override {
    std::unique_lock<std::mutex> lock(link_->mu);
    writing_ = false;
    if (!ok) {
      // The client is gone (or cancelled). Nothing more can be written,
      // so the RPC ends now; the call is cancelled with it.
      if (link_->finished) {
        return;
      }
      link_->finished = true;
      outbox_.clear();
      snakepit::Call call = call_;
      lock.unlock();
      call.Cancel();
      Finish(grpc::Status(grpc::StatusCode::CANCELLED,
                          "the client stopped reading"));
      return;
    }
    outbox_bytes_ -= outbox_.front().ByteSizeLong();
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
    outbox_bytes_ += chunk.ByteSizeLong();
    if (outbox_bytes_ > kMaxOutboxBytes) {
      // The client reads more slowly than the function yields; rather
      // than hold without bound, the call ends.
      final_ = MakeError(absl::StatusCode::kResourceExhausted,
                         "slow_reader",
                         "the client fell more than 64 MiB behind the "
                         "stream");
      snakepit::Call call = call_;
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
  size_t outbox_bytes_ = 0;
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
  prepared.options.timeout = TimeoutOf(context);
  prepared.options.session = request.session_id();
  const std::string& affinity = request.affinity();
  if (affinity.empty() || affinity == "hint") {
    prepared.options.affinity = Affinity::kHint;
  } else if (affinity == "strict-queue") {
    prepared.options.affinity = Affinity::kStrictQueue;
  } else if (affinity == "strict-fail") {
    prepared.options.affinity = Affinity::kStrictFail;
  } else {
    return ReasonError(reason::kInvalidArgument,
                       absl::StrCat("unknown affinity \"", affinity,
                                    "\"; use hint, strict-queue or "
                                    "strict-fail"));
  }
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
    info->set_state(PoolStateName(stats.state));
    info->set_start_failure(std::string(stats.start_failure.message()));
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

namespace {

int64_t UnixMillis(absl::Time t) { return absl::ToUnixMillis(t); }

void FillSession(const SessionRecord& record, v1::SessionInfo* out) {
  out->set_id(record.id);
  out->set_version(record.version);
  out->set_created_unix_ms(UnixMillis(record.created));
  out->set_last_used_unix_ms(UnixMillis(record.last_used));
  out->set_ttl_seconds(absl::ToInt64Seconds(record.ttl));
  for (const auto& [key, value] : record.metadata) {
    (*out->mutable_metadata())[key] = value;
  }
  for (const auto& [name, value] : record.variables) {
    (*out->mutable_variables())[name] = value;
  }
  for (const auto& [id, bytes] : record.programs) {
    out->add_programs(id);
  }
}

// The checks every session RPC makes first.
absl::Status SessionGate(const NodeState& node,
                         const grpc::CallbackServerContext& context) {
  if (absl::Status s = CheckToken(node, context); !s.ok()) {
    return s;
  }
  if (!node.sessions) {
    return MakeError(absl::StatusCode::kFailedPrecondition,
                     "no_session_store", "this node keeps no sessions");
  }
  return absl::OkStatus();
}

template <typename Fn>
grpc::ServerUnaryReactor* Unary(NodeState* node,
                                grpc::CallbackServerContext* context,
                                Fn&& fn) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::Status status = SessionGate(*node, *context);
  if (status.ok()) {
    status = fn();
  }
  FinishWith(reactor, context, status);
  return reactor;
}

// Sends an export in pieces of at most 1 MiB.
// TODO(#4): the export is built in memory first; stream it from the store
// for stores far larger than memory.
class ExportWriter : public grpc::ServerWriteReactor<v1::SessionsData> {
 public:
  ExportWriter(NodeState* node, grpc::CallbackServerContext* context)
      : context_(context) {
    absl::Status status = SessionGate(*node, *context);
    if (status.ok()) {
      std::ostringstream out;
      absl::StatusOr<size_t> count = ExportSessions(*node->sessions, out);
      status = count.status();
      text_ = out.str();
    }
    if (!status.ok()) {
      FinishWith(this, context_, status);
      return;
    }
    Next();
  }

  void OnWriteDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "client went away"));
      return;
    }
    Next();
  }

  void OnDone() override { delete this; }

 private:
  void Next() {
    constexpr size_t kPiece = 1 << 20;
    if (offset_ >= text_.size()) {
      Finish(grpc::Status::OK);
      return;
    }
    piece_.set_data(text_.substr(offset_, kPiece));
    offset_ += kPiece;
    StartWrite(&piece_);
  }

  grpc::CallbackServerContext* const context_;
  std::string text_;
  size_t offset_ = 0;
  v1::SessionsData piece_;
};

class ImportReader : public grpc::ServerReadReactor<v1::SessionsData> {
 public:
  ImportReader(NodeState* node, grpc::CallbackServerContext* context,
               v1::ImportSessionsResponse* response)
      : node_(node), context_(context), response_(response) {
    absl::Status status = SessionGate(*node, *context);
    if (!status.ok()) {
      FinishWith(this, context_, status);
      return;
    }
    StartRead(&piece_);
  }

  void OnReadDone(bool ok) override {
    if (ok) {
      text_ += piece_.data();
      StartRead(&piece_);
      return;
    }
    // The client has sent everything.
    std::istringstream in(text_);
    absl::StatusOr<ImportResult> result = ImportSessions(in, *node_->sessions);
    if (result.ok()) {
      response_->set_read(result->read);
      response_->set_imported(result->imported);
      response_->set_skipped_existing(result->skipped_existing);
      response_->set_skipped_expired(result->skipped_expired);
    }
    FinishWith(this, context_, result.status());
  }

  void OnDone() override { delete this; }

 private:
  NodeState* const node_;
  grpc::CallbackServerContext* const context_;
  v1::ImportSessionsResponse* const response_;
  v1::SessionsData piece_;
  std::string text_;
};

}  // namespace

grpc::ServerUnaryReactor* Service::CreateSession(
    grpc::CallbackServerContext* context,
    const v1::CreateSessionRequest* request, v1::SessionInfo* response) {
  return Unary(node_, context, [&]() -> absl::Status {
    CreateOptions options;
    options.id = request->id();
    options.ttl = absl::Seconds(request->ttl_seconds());
    options.strict = request->strict();
    options.metadata.insert(request->metadata().begin(),
                            request->metadata().end());
    absl::StatusOr<CreateResult> created = node_->sessions->Create(options);
    if (!created.ok()) {
      return created.status();
    }
    FillSession(*created->session, response);
    response->set_created(created->created);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* Service::GetSession(
    grpc::CallbackServerContext* context, const v1::GetSessionRequest* request,
    v1::SessionInfo* response) {
  return Unary(node_, context, [&]() -> absl::Status {
    absl::StatusOr<SessionRef> record = node_->sessions->Get(request->id());
    if (!record.ok()) {
      return record.status();
    }
    FillSession(**record, response);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* Service::ListSessions(
    grpc::CallbackServerContext* context,
    const v1::ListSessionsRequest* request,
    v1::ListSessionsResponse* response) {
  return Unary(node_, context, [&]() -> absl::Status {
    PageRequest page;
    page.start_after = request->start_after();
    if (request->limit() > 0) {
      page.limit = static_cast<size_t>(request->limit());
    }
    absl::StatusOr<IdPage> ids = node_->sessions->List(page);
    if (!ids.ok()) {
      return ids.status();
    }
    for (const std::string& id : ids->ids) {
      response->add_ids(id);
    }
    response->set_next_start_after(ids->next_start_after);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* Service::DeleteSession(
    grpc::CallbackServerContext* context,
    const v1::DeleteSessionRequest* request,
    v1::DeleteSessionResponse* response) {
  return Unary(node_, context, [&]() -> absl::Status {
    absl::StatusOr<bool> deleted = node_->sessions->Delete(request->id());
    if (!deleted.ok()) {
      return deleted.status();
    }
    response->set_deleted(*deleted);
    return absl::OkStatus();
  });
}

grpc::ServerWriteReactor<v1::SessionsData>* Service::ExportSessions(
    grpc::CallbackServerContext* context, const v1::ExportSessionsRequest*) {
  return new ExportWriter(node_, context);
}

grpc::ServerReadReactor<v1::SessionsData>* Service::ImportSessions(
    grpc::CallbackServerContext* context,
    v1::ImportSessionsResponse* response) {
  return new ImportReader(node_, context, response);
}

}  // namespace snakepit::api
