#include "snakepit/api/client.h"

#include <fstream>
#include <iostream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "google/protobuf/util/json_util.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "snakepit/api/errors.h"
#include "snakepit/api/service.h"
#include "snakepit/base/status.h"
#include "snakepit/v1/snakepit.grpc.pb.h"

namespace snakepit {

struct Client::Impl {
  ClientOptions options;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::Snakepit::Stub> stub;
  std::unique_ptr<grpc::health::v1::Health::Stub> health;

  // One unary RPC with the usual metadata; the node's error as ours.
  template <typename Request, typename Response>
  absl::Status Unary(grpc::Status (v1::Snakepit::Stub::*method)(
                         grpc::ClientContext*, const Request&, Response*),
                     const Request& request, Response* response,
                     absl::Duration timeout = absl::Seconds(30)) const {
    grpc::ClientContext context;
    Prepare(&context, timeout);
    grpc::Status status = (stub.get()->*method)(&context, request, response);
    return status.ok()
               ? absl::OkStatus()
               : api::FromGrpc(status, context.GetServerTrailingMetadata());
  }

  void Prepare(grpc::ClientContext* context, absl::Duration timeout) const {
    if (!options.token.empty()) {
      context->AddMetadata("authorization", "Bearer " + options.token);
    }
    if (timeout != absl::InfiniteDuration()) {
      context->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
    }
  }
};

namespace {

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> Credentials(
    const ClientOptions& options) {
  if (options.tls_ca_file.empty()) {
    return grpc::InsecureChannelCredentials();
  }
  std::ifstream file(options.tls_ca_file);
  if (!file) {
    return absl::NotFoundError(
        absl::StrCat("cannot read CA file ", options.tls_ca_file));
  }
  std::stringstream pem;
  pem << file.rdbuf();
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = pem.str();
  return grpc::SslCredentials(ssl);
}

absl::StatusOr<v1::CallRequest> MakeRequest(const std::string& function,
                                            const Value& args,
                                            const RemoteCallOptions& options) {
  v1::CallRequest request;
  request.set_function(function);
  request.set_pool(options.pool);
  request.set_session_id(options.session);
  request.set_affinity(options.affinity);
  request.mutable_args()->set_content_type(api::kMsgpack);
  if (!args.is_null()) {
    if (!args.is_object() && !args.is_array()) {
      return ReasonError(reason::kInvalidArgument,
                         "arguments must be a map, an array or null");
    }
    absl::StatusOr<std::string> encoded = EncodeValue(args);
    if (!encoded.ok()) {
      return encoded.status();
    }
    request.mutable_args()->set_data(std::move(*encoded));
  }
  return request;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(
    const ClientOptions& options) {
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> credentials =
      Credentials(options);
  if (!credentials.ok()) {
    return credentials.status();
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(static_cast<int>(options.max_message_bytes));
  args.SetMaxSendMessageSize(static_cast<int>(options.max_message_bytes));
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  impl->channel =
      grpc::CreateCustomChannel(options.address, *credentials, args);
  if (!impl->channel->WaitForConnected(
          absl::ToChronoTime(absl::Now() + options.connect_timeout))) {
    return MakeError(absl::StatusCode::kUnavailable, "cannot_connect",
                     absl::StrCat("no snakepit node answers at ",
                                  options.address, " within ",
                                  absl::FormatDuration(
                                      options.connect_timeout)));
  }
  impl->stub = v1::Snakepit::NewStub(impl->channel);
  impl->health = grpc::health::v1::Health::NewStub(impl->channel);
  return std::unique_ptr<Client>(new Client(std::move(impl)));
}

Client::Client(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Client::~Client() = default;

absl::StatusOr<Value> Client::Call(const std::string& function,
                                   const Value& args, absl::Duration timeout,
                                   const std::string& pool) {
  RemoteCallOptions options;
  options.timeout = timeout;
  options.pool = pool;
  return Call(function, args, options);
}

absl::StatusOr<Value> Client::Call(const std::string& function,
                                   const Value& args,
                                   const RemoteCallOptions& options) {
  absl::StatusOr<v1::CallRequest> request =
      MakeRequest(function, args, options);
  if (!request.ok()) {
    return request.status();
  }
  v1::CallResponse response;
  absl::Status status = impl_->Unary(&v1::Snakepit::Stub::Call, *request,
                                     &response, options.timeout);
  if (!status.ok()) {
    return status;
  }
  return DecodeValue(response.result().data());
}

absl::Status Client::CallStream(
    const std::string& function, const Value& args,
    const std::function<bool(const Value&)>& on_chunk,
    absl::Duration timeout) {
  RemoteCallOptions options;
  options.timeout = timeout;
  return CallStream(function, args, on_chunk, options);
}

absl::Status Client::CallStream(
    const std::string& function, const Value& args,
    const std::function<bool(const Value&)>& on_chunk,
    const RemoteCallOptions& options) {
  absl::StatusOr<v1::CallRequest> request =
      MakeRequest(function, args, options);
  if (!request.ok()) {
    return request.status();
  }
  grpc::ClientContext context;
  impl_->Prepare(&context, options.timeout);
  std::unique_ptr<grpc::ClientReader<v1::CallChunk>> reader =
      impl_->stub->CallStream(&context, *request);
  v1::CallChunk chunk;
  bool stopped = false;
  absl::Status decode_error;
  while (reader->Read(&chunk)) {
    absl::StatusOr<Value> value = DecodeValue(chunk.data().data());
    if (!value.ok()) {
      decode_error = value.status();
      context.TryCancel();
      break;
    }
    if (!on_chunk(*value)) {
      stopped = true;
      context.TryCancel();
      break;
    }
  }
  grpc::Status status = reader->Finish();
  if (!decode_error.ok()) {
    return decode_error;
  }
  if (stopped) {
    return absl::OkStatus();
  }
  return api::FromGrpc(status, context.GetServerTrailingMetadata());
}

absl::StatusOr<std::vector<RemoteFunction>> Client::ListFunctions() {
  v1::ListFunctionsResponse response;
  absl::Status status = impl_->Unary(&v1::Snakepit::Stub::ListFunctions,
                                     v1::ListFunctionsRequest(), &response);
  if (!status.ok()) {
    return status;
  }
  std::vector<RemoteFunction> out;
  for (const v1::FunctionInfo& f : response.functions()) {
    out.push_back({f.name(), f.pool(), f.kind(), f.signature(), f.doc()});
  }
  return out;
}

absl::StatusOr<Value> Client::NodeInfo() {
  v1::NodeInfo response;
  absl::Status status = impl_->Unary(&v1::Snakepit::Stub::GetNodeInfo,
                                     v1::GetNodeInfoRequest(), &response);
  if (!status.ok()) {
    return status;
  }
  std::string json;
  google::protobuf::util::JsonPrintOptions print;
  print.always_print_primitive_fields = true;
  print.preserve_proto_field_names = true;
  if (!google::protobuf::util::MessageToJsonString(response, &json, print)
           .ok()) {
    return absl::InternalError("cannot render NodeInfo");
  }
  absl::StatusOr<Value> info = ParseJson(json);
  if (!info.ok()) {
    return info;
  }
  // Protobuf's JSON mapping writes 64-bit ints as strings; a client wants
  // numbers.
  auto numeric = [](Value& object, const char* key) {
    if (object.contains(key) && object[key].is_string()) {
      object[key] = std::stoll(object[key].get<std::string>());
    }
  };
  numeric(*info, "pid");
  numeric(*info, "uptime_seconds");
  for (Value& pool : (*info)["pools"]) {
    numeric(pool, "queued");
    numeric(pool, "restarts");
  }
  return info;
}

namespace {

Value SessionValue(const v1::SessionInfo& info) {
  Value variables = Value::object();
  for (const auto& [name, raw] : info.variables()) {
    absl::StatusOr<Value> value = DecodeValue(raw);
    variables[name] = value.ok() ? *value : Bytes(raw);
  }
  Value metadata = Value::object();
  for (const auto& [key, value] : info.metadata()) {
    metadata[key] = value;
  }
  Value programs = Value::array();
  for (const std::string& id : info.programs()) {
    programs.push_back(id);
  }
  return {{"id", info.id()},
          {"version", info.version()},
          {"created", info.created_unix_ms()},
          {"last_used", info.last_used_unix_ms()},
          {"ttl_seconds", info.ttl_seconds()},
          {"metadata", metadata},
          {"variables", variables},
          {"programs", programs},
          {"created_now", info.created()}};
}

}  // namespace

absl::StatusOr<Value> Client::CreateSession(const std::string& id,
                                            absl::Duration ttl, bool strict) {
  v1::CreateSessionRequest request;
  request.set_id(id);
  request.set_ttl_seconds(absl::ToInt64Seconds(ttl));
  request.set_strict(strict);
  v1::SessionInfo info;
  absl::Status status =
      impl_->Unary(&v1::Snakepit::Stub::CreateSession, request, &info);
  if (!status.ok()) {
    return status;
  }
  return SessionValue(info);
}

absl::StatusOr<Value> Client::GetSession(const std::string& id) {
  v1::GetSessionRequest request;
  request.set_id(id);
  v1::SessionInfo info;
  absl::Status status =
      impl_->Unary(&v1::Snakepit::Stub::GetSession, request, &info);
  if (!status.ok()) {
    return status;
  }
  return SessionValue(info);
}

absl::StatusOr<std::vector<std::string>> Client::ListSessions() {
  std::vector<std::string> ids;
  v1::ListSessionsRequest request;
  request.set_limit(10000);
  while (true) {
    v1::ListSessionsResponse page;
    absl::Status status =
        impl_->Unary(&v1::Snakepit::Stub::ListSessions, request, &page);
    if (!status.ok()) {
      return status;
    }
    ids.insert(ids.end(), page.ids().begin(), page.ids().end());
    if (page.next_start_after().empty()) {
      return ids;
    }
    request.set_start_after(page.next_start_after());
  }
}

absl::StatusOr<bool> Client::DeleteSession(const std::string& id) {
  v1::DeleteSessionRequest request;
  request.set_id(id);
  v1::DeleteSessionResponse response;
  absl::Status status =
      impl_->Unary(&v1::Snakepit::Stub::DeleteSession, request, &response);
  if (!status.ok()) {
    return status;
  }
  return response.deleted();
}

absl::StatusOr<size_t> Client::ExportSessions(std::ostream& out) {
  grpc::ClientContext context;
  impl_->Prepare(&context, absl::InfiniteDuration());
  std::unique_ptr<grpc::ClientReader<v1::SessionsData>> reader =
      impl_->stub->ExportSessions(&context, v1::ExportSessionsRequest());
  v1::SessionsData piece;
  size_t written = 0;
  while (reader->Read(&piece)) {
    out << piece.data();
    written += piece.data().size();
  }
  grpc::Status status = reader->Finish();
  if (!status.ok()) {
    return api::FromGrpc(status, context.GetServerTrailingMetadata());
  }
  out.flush();
  if (!out) {
    return absl::DataLossError("could not write the export");
  }
  return written;
}

absl::StatusOr<Value> Client::ImportSessions(std::istream& in) {
  grpc::ClientContext context;
  impl_->Prepare(&context, absl::InfiniteDuration());
  v1::ImportSessionsResponse response;
  std::unique_ptr<grpc::ClientWriter<v1::SessionsData>> writer =
      impl_->stub->ImportSessions(&context, &response);
  std::string buffer(1 << 20, '\0');
  while (in) {
    in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    std::streamsize got = in.gcount();
    if (got <= 0) {
      break;
    }
    v1::SessionsData piece;
    piece.set_data(buffer.data(), static_cast<size_t>(got));
    if (!writer->Write(piece)) {
      break;
    }
  }
  writer->WritesDone();
  grpc::Status status = writer->Finish();
  if (!status.ok()) {
    return api::FromGrpc(status, context.GetServerTrailingMetadata());
  }
  return Value{{"read", response.read()},
               {"imported", response.imported()},
               {"skipped_existing", response.skipped_existing()},
               {"skipped_expired", response.skipped_expired()}};
}

absl::StatusOr<bool> Client::Serving() {
  grpc::ClientContext context;
  impl_->Prepare(&context, absl::Seconds(10));
  grpc::health::v1::HealthCheckResponse response;
  grpc::Status status = impl_->health->Check(
      &context, grpc::health::v1::HealthCheckRequest(), &response);
  if (!status.ok()) {
    return api::FromGrpc(status, context.GetServerTrailingMetadata());
  }
  return response.status() ==
         grpc::health::v1::HealthCheckResponse::SERVING;
}

}  // namespace snakepit
