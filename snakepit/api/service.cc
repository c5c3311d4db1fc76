#include "snakepit/api/service.h"

#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <thread>
#include <unordered_map>

#include "absl/strings/str_cat.h"
#include "grpcpp/server_builder.h"
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
                        const grpc::ServerContextBase& context) {
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

absl::Duration TimeoutOf(const grpc::ServerContextBase& context) {
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

// Lifetimes. gRPC deletes a reactor in OnDone (and a thread serving Call
// deletes its UnaryCall once its tags are back), which may happen on
// another thread as soon as Finish is called, while a pool thread may
// still be in one of the call's callbacks. So the callbacks hold a shared
// CallLink, not the RPC's object; the link reaches that object only until
// it has called Finish, and calls Finish outside its lock.
struct CallLink {
  std::mutex mu;
  bool finished = false;  // Finish called or about to be
  NodeState* node = nullptr;
  std::string function;
  PreparedCall prepared;
  absl::Time start;
  // Unary calls: the pool's call once submitted, and a cancel that came
  // before it was. Guarded by mu.
  snakepit::Call call = snakepit::Call::Failed(absl::OkStatus());
  bool submitted = false;
  bool cancel_asked = false;
};

// Callers choose the names they call, so names a pool does not have are
// counted under one label rather than one each.
const std::string& FunctionLabel(const ServedPool& pool,
                                 const std::string& function) {
  static const std::string* const kUnknown = new std::string("_unknown");
  return pool.functions.count(function) != 0 ? function : *kUnknown;
}

// Counts a call that reached a pool, ended at `end` with `status`.
void RecordCall(const CallLink& link, const absl::Status& status,
                const snakepit::Call& call, absl::Time end = absl::Now()) {
  if (link.node->metrics != nullptr && link.prepared.pool != nullptr) {
    const ServedPool& pool = *link.prepared.pool;
    link.node->metrics->RecordCall(pool.name,
                                   FunctionLabel(pool, link.function),
                                   CodeName(status.code()),
                                   end - link.start, call.QueueWait());
  }
}

// Counts a call that could not be submitted: a call when it was routed
// to a pool, else a refusal (token, draining, route, arguments).
void RecordNotSubmitted(const CallLink& link, const NodeState& node,
                        const absl::Status& status) {
  if (link.prepared.pool != nullptr) {
    RecordCall(link, status, snakepit::Call::Failed(status));
  } else if (node.metrics != nullptr) {
    node.metrics->RecordRefused(CodeName(status.code()), ReasonOf(status));
  }
}

// A client cancels its RPC when its deadline passes, a moment before the
// node's copy of that deadline (taken when the request arrived) passes
// too. A cancel this close to the deadline counts as the deadline.
constexpr auto kDeadlineSlack = std::chrono::milliseconds(50);

// What a call's RPC answered, kept until the RPC is done and can be
// counted (CountedStatus).
struct Answer {
  absl::Status status;
  snakepit::Call call = snakepit::Call::Failed(absl::OkStatus());
  absl::Time end = absl::Now();  // when the pool's call ended
  std::chrono::system_clock::time_point sent =
      std::chrono::system_clock::now();
};

// The status a finished RPC is counted under: what its client got. That
// is the answer, unless the RPC was cancelled before the answer went out
// (IsCancelled, final only once the RPC is done: its done tag back, or
// OnDone) or the answer went out after the deadline, when the client
// had already given up. A cancel at the deadline, by gRPC or by the
// client, is a deadline.
absl::Status CountedStatus(const Answer& answer,
                           const grpc::ServerContextBase& context) {
  auto deadline = context.deadline();
  if (!context.IsCancelled()) {
    return answer.sent < deadline
               ? answer.status
               : ReasonError(reason::kDeadlineExceeded, "deadline passed");
  }
  if (deadline > std::chrono::system_clock::now() + kDeadlineSlack) {
    return ReasonError(reason::kCancelled, "cancelled by the client");
  }
  return ReasonError(reason::kDeadlineExceeded, "deadline passed");
}

// Checks and submits the RPC's call, filling `link`. On failure the link
// is marked finished and the caller finishes the RPC with the status.
// With a `wait`, this thread then reads the worker's reply for up to that
// long (Pool::SubmitRawAndWait), once `on_submitted` has seen the call.
absl::StatusOr<snakepit::Call> StartCall(
    CallLink& link, NodeState* node, grpc::ServerContextBase& context,
    const v1::CallRequest& request,
    absl::Duration wait = absl::ZeroDuration(),
    const std::function<void(const snakepit::Call&)>& on_submitted =
        nullptr) {
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
  snakepit::Pool& pool = *link.prepared.pool->pool;
  if (wait <= absl::ZeroDuration()) {
    return pool.SubmitRaw(link.function,
                          std::move(link.prepared.args_msgpack),
                          link.prepared.options);
  }
  return pool.SubmitRawAndWait(link.function,
                               std::move(link.prepared.args_msgpack),
                               link.prepared.options, wait, on_submitted);
}

// Cancels the unary call behind `link`, or has it cancelled as soon as it
// is submitted.
void CancelUnary(CallLink& link) {
  snakepit::Call call = snakepit::Call::Failed(absl::OkStatus());
  {
    std::lock_guard<std::mutex> lock(link.mu);
    if (link.finished) {
      return;
    }
    if (!link.submitted) {
      link.cancel_asked = true;
      return;
    }
    call = link.call;
  }
  call.Cancel();  // completes the call through its completion callback
}

}  // namespace

// The threads serving Call and what they share. Each thread has its own
// completion queue, on which it asks for one RPC at a time; the tags of
// an RPC come back on the queue it arrived on, so the thread that answers
// it takes them without waking another. At most kThreads - 1 threads drive
// a call at a time, and a thread asks for its next RPC only once it stops
// driving, so some thread is always asking while another waits for a
// worker's reply.
struct CallThreads {
  static constexpr int kThreads = 2;

  explicit CallThreads(const NodeState& node) {
    for (const auto& [function, pool] : node.function_to_pool) {
      slow.try_emplace(function);
    }
  }

  // Whether the thread taking a call of `function` should read the
  // worker's reply itself; if so it calls EndDrive when it stops.
  bool BeginDrive(const std::string& function) {
    auto it = slow.find(function);
    if (it == slow.end() || it->second.load(std::memory_order_relaxed)) {
      return false;
    }
    if (driving.fetch_add(1) >= kThreads - 1) {
      driving.fetch_sub(1);
      return false;
    }
    return true;
  }
  void EndDrive() { driving.fetch_sub(1); }

  // Notes how long a call of `function` took, queue wait included.
  void Learn(const std::string& function, absl::Duration took) {
    auto it = slow.find(function);
    if (it != slow.end()) {
      it->second.store(took > kDriveBudget, std::memory_order_relaxed);
    }
  }

  // Fixed once the threads run.
  std::vector<std::unique_ptr<grpc::ServerCompletionQueue>> queues;
  std::vector<std::thread> threads;
  // Per function of the node (keys fixed at construction): its last call
  // took longer than kDriveBudget, so the next one is not driven.
  std::unordered_map<std::string, std::atomic<bool>> slow;
  std::atomic<int> driving{0};

  std::mutex mu;
  std::condition_variable none_live;
  bool stopping = false;                     // guarded by mu
  std::set<std::shared_ptr<CallLink>> live;  // not yet Finished; mu
};

namespace {

// One Call RPC on the async API. Three tags come back for it on the
// queue: its arrival, the end of its Finish, and gRPC's notice that it is
// done (answered or cancelled). It deletes itself once the last two are
// back; a pool thread reaches it only until it has called Finish.
//
// TODO(#6): a small call through the node still costs about 1.6x a bare
// C++ gRPC echo over TCP and 1.5x over a unix socket on one CPU (1.3x is
// the aim). The worker round trip and the client's extra wakeup while
// this thread waits for the worker add about 1.3x between them before
// any of the pool's work; docs/architecture.md has the measurements.
class UnaryCall {
 public:
  enum class Event { kArrived, kFinished, kDone };
  struct Tag {
    UnaryCall* call;
    Event event;
  };

  // Asks gRPC for the next Call RPC on queue `queue`, unless the threads
  // are stopping.
  static void Await(Service* service, NodeState* node, CallThreads* threads,
                    size_t queue) {
    std::lock_guard<std::mutex> lock(threads->mu);
    if (threads->stopping) {
      return;
    }
    auto* call = new UnaryCall(service, node, threads, queue);
    grpc::ServerCompletionQueue* cq = threads->queues[queue].get();
    call->context_.AsyncNotifyWhenDone(&call->done_);
    service->RequestCall(&call->context_, &call->request_,
                         &call->responder_, cq, cq, &call->arrived_);
  }

  // Runs on a thread serving Call when one of this RPC's tags is back.
  void On(Event event, bool ok) {
    switch (event) {
      case Event::kArrived:
        if (!ok) {
          delete this;  // the server is shutting down; no other tag comes
          return;
        }
        Start();
        return;
      case Event::kDone:
        if (context_.IsCancelled()) {
          CancelUnary(*link_);
        }
        Release();
        return;
      case Event::kFinished:
        Release();
        return;
    }
  }

 private:
  UnaryCall(Service* service, NodeState* node, CallThreads* threads,
            size_t queue)
      : service_(service), node_(node), threads_(threads), queue_(queue),
        responder_(&context_) {}

  // This thread asks for its next RPC.
  void AwaitNext() { Await(service_, node_, threads_, queue_); }

  void Start() {
    in_flight_.emplace(node_);
    bool stopping;
    {
      std::lock_guard<std::mutex> lock(threads_->mu);
      stopping = threads_->stopping;
      if (!stopping) {
        threads_->live.insert(link_);
      }
    }
    if (stopping) {
      absl::Status refused =
          MakeError(absl::StatusCode::kUnavailable, "node_draining",
                    "this node is shutting down; call another");
      RecordNotSubmitted(*link_, *node_, refused);
      FinishRpc(refused);
      return;
    }
    // This thread reads the worker's reply itself when the function has
    // been quick and another thread is free to take the next RPC.
    bool drive = threads_->BeginDrive(request_.function());
    absl::StatusOr<snakepit::Call> call =
        StartCall(*link_, node_, context_, request_,
                  drive ? kDriveBudget : absl::ZeroDuration(),
                  [this](const snakepit::Call& submitted) {
                    Publish(submitted);
                  });
    if (drive) {
      threads_->EndDrive();
    }
    if (!call.ok()) {
      AwaitNext();
      RecordNotSubmitted(*link_, *node_, call.status());
      FinishRpc(call.status());
      return;
    }
    if (!drive) {
      Publish(*call);
    }
    bool done = call->Done();
    AwaitNext();
    if (done) {
      Complete(*call);
      return;
    }
    call->OnComplete([this, call = *call](const absl::Status&) {
      Complete(call);
    });
  }

  // Makes the submitted call the one a cancel of the RPC reaches, and
  // applies a cancel that came before it.
  void Publish(const snakepit::Call& call) {
    bool cancel;
    {
      std::lock_guard<std::mutex> lock(link_->mu);
      link_->call = call;
      link_->submitted = true;
      cancel = link_->cancel_asked;
    }
    if (cancel) {
      call.Cancel();
    }
  }

  // Runs once the call has ended: on this thread when it drove the call,
  // else on a pool thread (or in Cancel).
  void Complete(const snakepit::Call& call) {
    absl::StatusOr<std::string> raw = call.GetRaw();
    absl::Status result =
        raw.ok() ? FillPayload(std::move(*raw), link_->prepared.accept,
                               response_.mutable_result())
                 : raw.status();
    answer_ = Answer{result, call};
    threads_->Learn(link_->function, answer_->end - link_->start);
    FinishRpc(result);
  }

  // Ends the RPC once with `status`. `this` may be deleted by a thread
  // serving Call as soon as Finish is called.
  void FinishRpc(const absl::Status& status) {
    std::shared_ptr<CallLink> link = link_;
    CallThreads* threads = threads_;
    {
      std::lock_guard<std::mutex> lock(link->mu);
      link->finished = true;
    }
    if (status.ok()) {
      responder_.Finish(response_, grpc::Status::OK, &finished_);
    } else {
      context_.AddTrailingMetadata(kErrorTrailer, ErrorDetailBytes(status));
      responder_.FinishWithError(ToGrpcStatus(status), &finished_);
    }
    {
      std::lock_guard<std::mutex> lock(threads->mu);
      threads->live.erase(link);
    }
    threads->none_live.notify_all();
  }

  // The last of the two tags counts the call, now that IsCancelled is
  // final, and deletes the RPC.
  void Release() {
    if (tags_out_.fetch_sub(1) != 1) {
      return;
    }
    if (answer_) {
      RecordCall(*link_, CountedStatus(*answer_, context_), answer_->call,
                 answer_->end);
    }
    delete this;
  }

  Service* const service_;
  NodeState* const node_;
  CallThreads* const threads_;
  const size_t queue_;  // the thread's queue it came on
  grpc::ServerContext context_;
  v1::CallRequest request_;
  v1::CallResponse response_;
  grpc::ServerAsyncResponseWriter<v1::CallResponse> responder_;
  Tag arrived_{this, Event::kArrived};
  Tag finished_{this, Event::kFinished};
  Tag done_{this, Event::kDone};
  std::optional<InFlight> in_flight_;  // from arrival on
  const std::shared_ptr<CallLink> link_ = std::make_shared<CallLink>();
  std::optional<Answer> answer_;  // set before Finish, once answered
  std::atomic<int> tags_out_{2};  // kFinished and kDone
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
      RecordNotSubmitted(*link_, *node, call.status());
      FinishWith(this, context_, call.status());
      return;
    }
    call_ = *call;
    std::shared_ptr<CallLink> link = link_;
    call_.OnChunk([this, link](std::string chunk) {
      Enqueue(link, std::move(chunk));
    });
    call_.OnComplete([this, link, call = call_](const absl::Status& status) {
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
      absl::Status gone =
          ReasonError(reason::kCancelled, "the client stopped reading");
      answer_ = Answer{gone, call};
      Finish(ToGrpcStatus(gone));
      return;
    }
    outbox_bytes_ -= outbox_.front().ByteSizeLong();
    outbox_.pop_front();
    Advance(lock);
  }

  void OnCancel() override { call_.Cancel(); }

  // Counts the call as its client got it (see CountedStatus).
  void OnDone() override {
    if (answer_) {
      RecordCall(*link_, CountedStatus(*answer_, *context_),
                 answer_->call, answer_->end);
    }
    delete this;
  }

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
      // Counted in OnDone as what the client got, so a failure of the
      // stream itself (a chunk that cannot be sent, a slow reader)
      // counts too.
      answer_ = Answer{final, call_};
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

  std::optional<Answer> answer_;  // set once, before Finish
};

}  // namespace

absl::StatusOr<PreparedCall> PrepareCall(
    NodeState& node, const grpc::ServerContextBase& context,
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

absl::Status FillPayload(std::string msgpack, const std::string& content_type,
                         v1::Payload* out) {
  out->set_content_type(content_type);
  if (content_type == kMsgpack) {
    out->set_data(std::move(msgpack));
    return absl::OkStatus();
  }
  absl::StatusOr<Value> value = DecodeValue(msgpack);
  if (!value.ok()) {
    return value.status();
  }
  out->set_data(ToJson(*value));
  return absl::OkStatus();
}

Service::Service(NodeState* node)
    : node_(node), call_threads_(std::make_unique<CallThreads>(*node)) {}

Service::~Service() { StopCallThreads(); }

void Service::AddCallQueue(grpc::ServerBuilder& builder) {
  for (int i = 0; i < CallThreads::kThreads; ++i) {
    call_threads_->queues.push_back(builder.AddCompletionQueue());
  }
}

void Service::StartCallThreads() {
  CallThreads* threads = call_threads_.get();
  for (size_t i = 0; i < threads->queues.size(); ++i) {
    UnaryCall::Await(this, node_, threads, i);
    grpc::ServerCompletionQueue* queue = threads->queues[i].get();
    threads->threads.emplace_back([queue] {
      void* tag = nullptr;
      bool ok = false;
      while (queue->Next(&tag, &ok)) {
        auto* t = static_cast<UnaryCall::Tag*>(tag);
        t->call->On(t->event, ok);
      }
    });
  }
}

size_t Service::StopCallThreads() {
  CallThreads& threads = *call_threads_;
  std::vector<std::shared_ptr<CallLink>> live;
  {
    std::lock_guard<std::mutex> lock(threads.mu);
    if (threads.stopping) {
      return 0;
    }
    threads.stopping = true;
    live.assign(threads.live.begin(), threads.live.end());
  }
  // A call cancelled in the pool completes at once, and its RPC finishes;
  // only then may the queue shut down, which refuses further Finishes.
  for (const std::shared_ptr<CallLink>& link : live) {
    CancelUnary(*link);
  }
  size_t stuck = 0;
  {
    std::unique_lock<std::mutex> lock(threads.mu);
    threads.none_live.wait_for(lock, std::chrono::seconds(30),
                               [&] { return threads.live.empty(); });
    stuck = threads.live.size();
  }
  for (auto& queue : threads.queues) {
    queue->Shutdown();
  }
  for (std::thread& t : threads.threads) {
    t.join();
  }
  if (threads.threads.empty()) {
    for (auto& queue : threads.queues) {
      void* tag = nullptr;
      bool ok = false;
      while (queue->Next(&tag, &ok)) {
      }
    }
  }
  return stuck;
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
