#include "snakepit/admin/admin_server.h"

#include <httplib.h>

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "gtest/gtest.h"

#include "snakepit/admin/metrics.h"
#include "snakepit/base/status.h"

namespace snakepit::admin {
namespace {

int PortOf(const std::string& address) {
  int port = 0;
  size_t colon = address.rfind(':');
  EXPECT_NE(colon, std::string::npos) << address;
  EXPECT_TRUE(absl::SimpleAtoi(address.substr(colon + 1), &port)) << address;
  return port;
}

// A client of `server` with short timeouts, so a hung server fails the
// test instead of stalling it.
std::unique_ptr<httplib::Client> ClientFor(const AdminServer& server) {
  auto client =
      std::make_unique<httplib::Client>("127.0.0.1", PortOf(server.address()));
  client->set_connection_timeout(2, 0);
  client->set_read_timeout(5, 0);
  return client;
}

std::unique_ptr<AdminServer> StartOrDie(AdminHandlers handlers = {}) {
  absl::StatusOr<std::unique_ptr<AdminServer>> server =
      AdminServer::Start("127.0.0.1:0", std::move(handlers));
  EXPECT_TRUE(server.ok()) << server.status();
  return server.ok() ? std::move(*server) : nullptr;
}

TEST(AdminServerTest, ReportsTheBoundPort) {
  std::unique_ptr<AdminServer> server = StartOrDie();
  ASSERT_NE(server, nullptr);
  EXPECT_TRUE(server->address().starts_with("127.0.0.1:")) << server->address();
  EXPECT_GT(PortOf(server->address()), 0);
}

TEST(AdminServerTest, LivezAnswersOk) {
  std::unique_ptr<AdminServer> server = StartOrDie();
  ASSERT_NE(server, nullptr);
  httplib::Result res = ClientFor(*server)->Get("/livez");
  ASSERT_TRUE(res) << httplib::to_string(res.error());
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(res->body, "ok");
}

TEST(AdminServerTest, ReadyzFollowsTheChecks) {
  std::atomic<bool> warm{false};
  AdminHandlers handlers;
  handlers.readiness = [&warm] {
    return std::vector<Check>{
        {"not draining", true, ""},
        {"pool default warm", warm.load(), "1 of 2 workers ready"}};
  };
  std::unique_ptr<AdminServer> server = StartOrDie(std::move(handlers));
  ASSERT_NE(server, nullptr);
  std::unique_ptr<httplib::Client> client = ClientFor(*server);

  httplib::Result res = client->Get("/readyz");
  ASSERT_TRUE(res) << httplib::to_string(res.error());
  EXPECT_EQ(res->status, 503);
  EXPECT_EQ(res->body, "not ready");

  res = client->Get("/readyz?verbose");
  ASSERT_TRUE(res) << httplib::to_string(res.error());
  EXPECT_EQ(res->status, 503);
  EXPECT_EQ(res->body,
            "[+] not draining\n"
            "[-] pool default warm: 1 of 2 workers ready\n"
            "not ready");

  warm = true;
  res = client->Get("/readyz");
  ASSERT_TRUE(res) << httplib::to_string(res.error());
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(res->body, "ready");

  res = client->Get("/readyz?verbose=1");
  ASSERT_TRUE(res) << httplib::to_string(res.error());
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(res->body, "[+] not draining\n[+] pool default warm\nready");
}

TEST(AdminServerTest, ReadyWithoutChecks) {
  std::unique_ptr<AdminServer> server = StartOrDie();
  ASSERT_NE(server, nullptr);
  httplib::Result res = ClientFor(*server)->Get("/readyz");
  ASSERT_TRUE(res) << httplib::to_string(res.error());
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(res->body, "ready");
}

TEST(AdminServerTest, MetricsServesPrometheusText) {
  Metrics metrics("9.9.9");
  metrics.RecordCall("p", "f", "OK", absl::Milliseconds(1),
                     absl::ZeroDuration());
  AdminHandlers handlers;
  handlers.metrics = [&metrics] { return metrics.Render({}); };
  std::unique_ptr<AdminServer> server = StartOrDie(std::move(handlers));
  ASSERT_NE(server, nullptr);

  httplib::Result res = ClientFor(*server)->Get("/metrics");
  ASSERT_TRUE(res) << httplib::to_string(res.error());
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(res->get_header_value("Content-Type"), "text/plain; version=0.0.4");
  EXPECT_NE(res->body.find("snakepit_build_info{version=\"9.9.9\"} 1"),
            std::string::npos)
      << res->body;
  EXPECT_NE(res->body.find("snakepit_calls_total{code=\"OK\""),
            std::string::npos)
      << res->body;
}

TEST(AdminServerTest, UnknownPathIsNotFound) {
  std::unique_ptr<AdminServer> server = StartOrDie();
  ASSERT_NE(server, nullptr);
  httplib::Result res = ClientFor(*server)->Get("/nope");
  ASSERT_TRUE(res) << httplib::to_string(res.error());
  EXPECT_EQ(res->status, 404);
}

TEST(AdminServerTest, StopIsIdempotentAndClosesThePort) {
  std::unique_ptr<AdminServer> server = StartOrDie();
  ASSERT_NE(server, nullptr);
  std::unique_ptr<httplib::Client> client = ClientFor(*server);
  ASSERT_TRUE(client->Get("/livez"));

  server->Stop();
  server->Stop();
  httplib::Result res = client->Get("/livez");
  EXPECT_FALSE(res);
}

TEST(AdminServerTest, StopsRightAfterStart) {
  // httplib ignores a stop() that comes before its loop runs; Start() must
  // wait for the loop, or this hangs.
  for (int i = 0; i < 20; ++i) {
    std::unique_ptr<AdminServer> server = StartOrDie();
    ASSERT_NE(server, nullptr);
    server->Stop();
  }
}

TEST(AdminServerTest, ConcurrentStopsJoinOnce) {
  std::unique_ptr<AdminServer> server = StartOrDie();
  ASSERT_NE(server, nullptr);
  std::vector<std::thread> stoppers;
  for (int i = 0; i < 4; ++i) {
    stoppers.emplace_back([&server] { server->Stop(); });
  }
  for (std::thread& t : stoppers) {
    t.join();
  }
}

TEST(AdminServerTest, ASecondServerCannotTakeTheSamePort) {
  std::unique_ptr<AdminServer> first = StartOrDie();
  ASSERT_NE(first, nullptr);
  absl::StatusOr<std::unique_ptr<AdminServer>> second =
      AdminServer::Start(first->address(), {});
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(ReasonOf(second.status()), "cannot_listen");
  EXPECT_EQ(std::string(second.status().message()),
            "admin listener " + first->address() +
                ": cannot bind (port in use, or not an address of this "
                "host)");
}

TEST(AdminServerTest, RejectsAnAddressWithoutPort) {
  for (const std::string address :
       {"127.0.0.1", "127.0.0.1:http", ":80", "127.0.0.1:70000"}) {
    absl::StatusOr<std::unique_ptr<AdminServer>> server =
        AdminServer::Start(address, {});
    ASSERT_FALSE(server.ok()) << address;
    EXPECT_EQ(server.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(std::string(server.status().message()),
              "admin address \"" + address + "\" is not HOST:PORT");
  }
}

}  // namespace
}  // namespace snakepit::admin
