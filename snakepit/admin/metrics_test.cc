#include "snakepit/admin/metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace snakepit::admin {
namespace {

bool Contains(const std::string& text, const std::string& line) {
  return text.find(line) != std::string::npos;
}

PoolGauges Pool(const std::string& name, size_t depth, int idle, int busy,
                uint64_t crashes) {
  PoolGauges g;
  g.pool = name;
  g.queue_depth = depth;
  g.workers_by_state = {{"starting", 0}, {"idle", idle}, {"busy", busy}};
  g.restarts_by_reason = {{"crash", crashes}};
  g.state = idle + busy > 0 ? "ready" : "degraded";
  return g;
}

TEST(MetricsTest, RendersBuildInfo) {
  Metrics metrics("1.2.3");
  std::string text = metrics.Render({});
  EXPECT_TRUE(Contains(text, "# TYPE snakepit_build_info gauge\n")) << text;
  EXPECT_TRUE(Contains(text, "snakepit_build_info{version=\"1.2.3\"} 1\n"))
      << text;
}

TEST(MetricsTest, CountsRefusedCallsByCodeAndReason) {
  Metrics metrics("test");
  metrics.RecordRefused("NOT_FOUND", "unknown_pool");
  metrics.RecordRefused("NOT_FOUND", "unknown_pool");
  metrics.RecordRefused("UNAUTHENTICATED", "unauthenticated");
  std::string text = metrics.Render({});
  EXPECT_TRUE(Contains(text,
                       "snakepit_calls_refused_total{code=\"NOT_FOUND\","
                       "reason=\"unknown_pool\"} 2"))
      << text;
  EXPECT_TRUE(Contains(text,
                       "snakepit_calls_refused_total{code=\"UNAUTHENTICATED\""
                       ",reason=\"unauthenticated\"} 1"))
      << text;
  EXPECT_FALSE(Contains(text, "snakepit_calls_total{")) << text;
}

TEST(MetricsTest, CountsCallsByPoolFunctionAndCode) {
  Metrics metrics("test");
  for (int i = 0; i < 3; ++i) {
    metrics.RecordCall("p", "add", "OK", absl::Milliseconds(2),
                       absl::Microseconds(50));
  }
  metrics.RecordCall("p", "add", "DEADLINE_EXCEEDED", absl::Seconds(90),
                     absl::Seconds(1));
  std::string text = metrics.Render({});
  EXPECT_TRUE(Contains(
      text, "snakepit_calls_total{code=\"OK\",function=\"add\",pool=\"p\"} 3"))
      << text;
  EXPECT_TRUE(Contains(text,
                       "snakepit_calls_total{code=\"DEADLINE_EXCEEDED\","
                       "function=\"add\",pool=\"p\"} 1"))
      << text;
  // 2 ms lands in the 2.5 ms bucket; 90 s only in +Inf.
  EXPECT_TRUE(Contains(text,
                       "snakepit_call_duration_seconds_bucket{function=\"add\""
                       ",pool=\"p\",le=\"0.0025\"} 3"))
      << text;
  EXPECT_TRUE(Contains(text,
                       "snakepit_call_duration_seconds_bucket{function=\"add\""
                       ",pool=\"p\",le=\"60\"} 3"))
      << text;
  EXPECT_TRUE(Contains(text,
                       "snakepit_call_duration_seconds_bucket{function=\"add\""
                       ",pool=\"p\",le=\"+Inf\"} 4"))
      << text;
  EXPECT_TRUE(Contains(text,
                       "snakepit_queue_wait_seconds_bucket{pool=\"p\","
                       "le=\"0.0001\"} 3"))
      << text;
  EXPECT_TRUE(Contains(text, "snakepit_queue_wait_seconds_count{pool=\"p\"} 4"))
      << text;
}

TEST(MetricsTest, RendersPoolGaugesAndDropsPoolsThatAreGone) {
  Metrics metrics("test");
  std::string text =
      metrics.Render({Pool("a", 5, 1, 3, 0), Pool("b", 0, 2, 0, 0)});
  EXPECT_TRUE(Contains(text, "snakepit_queue_depth{pool=\"a\"} 5\n")) << text;
  EXPECT_TRUE(Contains(text, "snakepit_workers{pool=\"a\",state=\"busy\"} 3\n"))
      << text;
  EXPECT_TRUE(Contains(text, "snakepit_workers{pool=\"b\",state=\"idle\"} 2\n"))
      << text;
  EXPECT_TRUE(
      Contains(text, "snakepit_workers{pool=\"b\",state=\"starting\"} 0\n"))
      << text;
  EXPECT_TRUE(Contains(
      text, "snakepit_pool_state{pool=\"a\",state=\"ready\"} 1\n"))
      << text;
  EXPECT_TRUE(Contains(
      text, "snakepit_pool_state{pool=\"a\",state=\"degraded\"} 0\n"))
      << text;

  text = metrics.Render({Pool("a", 1, 0, 0, 0)});
  EXPECT_TRUE(Contains(
      text, "snakepit_pool_state{pool=\"a\",state=\"degraded\"} 1\n"))
      << text;
  text = metrics.Render({Pool("a", 1, 4, 0, 0)});
  EXPECT_TRUE(Contains(text, "snakepit_queue_depth{pool=\"a\"} 1\n")) << text;
  EXPECT_FALSE(Contains(text, "pool=\"b\"")) << text;
}

TEST(MetricsTest, RestartsFollowTheCumulativeCount) {
  Metrics metrics("test");
  const std::string series =
      "snakepit_worker_restarts_total{pool=\"a\",reason=\"crash\"} ";
  EXPECT_TRUE(
      Contains(metrics.Render({Pool("a", 0, 1, 0, 2)}), series + "2\n"));
  EXPECT_TRUE(
      Contains(metrics.Render({Pool("a", 0, 1, 0, 2)}), series + "2\n"));
  EXPECT_TRUE(
      Contains(metrics.Render({Pool("a", 0, 1, 0, 7)}), series + "7\n"));
  // The pool was recreated and counts from zero again: a counter reset.
  EXPECT_TRUE(
      Contains(metrics.Render({Pool("a", 0, 1, 0, 1)}), series + "1\n"));
}

TEST(MetricsTest, CapsTheNumberOfFunctionLabelsPerPool) {
  Metrics metrics("test");
  for (int i = 0; i < 300; ++i) {
    metrics.RecordCall("p", absl::StrCat("f", i), "OK", absl::Milliseconds(1),
                       absl::ZeroDuration());
  }
  metrics.RecordCall("q", "f299", "OK", absl::Milliseconds(1),
                     absl::ZeroDuration());
  std::string text = metrics.Render({});
  EXPECT_TRUE(Contains(text, "function=\"f255\",pool=\"p\"")) << text;
  EXPECT_FALSE(Contains(text, "function=\"f256\",pool=\"p\"")) << text;
  EXPECT_TRUE(Contains(text,
                       "snakepit_calls_total{code=\"OK\",function=\"_other\","
                       "pool=\"p\"} 44"))
      << text;
  // The cap is per pool.
  EXPECT_TRUE(Contains(text, "function=\"f299\",pool=\"q\"")) << text;
}

// Runs Python's own Prometheus parser (Debian's python3-prometheus-client)
// on `text`; returns one "NAME TYPE SAMPLES" line per family, plus the
// function label of NOT_FOUND calls as Python's repr.
std::string ParseWithPython(const std::string& text) {
  std::string path = ::testing::TempDir() + "snakepit_metrics_XXXXXX";
  int fd = mkstemp(path.data());
  if (fd < 0) {
    return "";
  }
  close(fd);
  std::ofstream(path) << text;
  const std::string command = absl::StrCat(
      "/usr/bin/python3 -c '",
      "import sys\n"
      "from prometheus_client.parser import text_string_to_metric_families\n"
      "text = open(sys.argv[1]).read()\n"
      "for f in text_string_to_metric_families(text):\n"
      "    print(f.name, f.type, len(f.samples))\n"
      "    for s in f.samples:\n"
      "        if s.labels.get(\"code\") == \"NOT_FOUND\":\n"
      "            print(\"function\", repr(s.labels[\"function\"]))\n"
      "' ",
      path, " 2>&1");
  std::string out;
  if (FILE* pipe = popen(command.c_str(), "r")) {
    char buf[4096];
    size_t n = 0;
    while ((n = fread(buf, 1, sizeof buf, pipe)) > 0) {
      out.append(buf, n);
    }
    if (pclose(pipe) != 0) {
      out = "parser failed: " + out;
    }
  }
  unlink(path.c_str());
  return out;
}

TEST(MetricsTest, OutputParsesWithPythonPrometheusClient) {
  Metrics metrics("0.1.0");
  metrics.RecordCall("default", "add", "OK", absl::Milliseconds(3),
                     absl::Microseconds(200));
  metrics.RecordCall("default", "add", "UNAVAILABLE", absl::Milliseconds(1),
                     absl::ZeroDuration());
  // A client-chosen name with characters the text format must escape.
  metrics.RecordCall("default", "we\"ird\\name\nx", "NOT_FOUND",
                     absl::Microseconds(10), absl::ZeroDuration());
  std::string text =
      metrics.Render({Pool("default", 2, 1, 1, 3), Pool("batch", 0, 4, 0, 0)});

  // prometheus-cpp emits counters, then gauges, then histograms; the
  // client names counter families without "_total". A histogram series is
  // 19 buckets (18 bounds and +Inf), a count and a sum.
  EXPECT_EQ(ParseWithPython(text),
            "snakepit_calls counter 3\n"
            "function 'we\"ird\\\\name\\nx'\n"
            "snakepit_worker_restarts counter 2\n"
            "snakepit_queue_depth gauge 2\n"
            "snakepit_workers gauge 6\n"
            "snakepit_pool_state gauge 8\n"
            "snakepit_build_info gauge 1\n"
            "snakepit_call_duration_seconds histogram 42\n"
            "snakepit_queue_wait_seconds histogram 21\n")
      << text;
}

}  // namespace
}  // namespace snakepit::admin
