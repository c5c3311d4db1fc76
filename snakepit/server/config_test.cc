#include "snakepit/server/config.h"

#include <stdlib.h>
#include <unistd.h>

#include <fstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"

#include "snakepit/base/status.h"

namespace snakepit::server {
namespace {

constexpr char kFullFile[] = R"(# A node with every key set.
[node]
listen = ["127.0.0.1:50051", "unix:/tmp/snakepit.sock"]
admin = "127.0.0.1:9090"
ready_file = "/tmp/ready.json"
drain_timeout = "30s"
worker_grace = "500ms"
max_message_bytes = 134217728
log_format = "json"
log_level = "debug"

[auth]
token = "secret"

[tls]
cert_file = "/etc/snakepit/cert.pem"
key_file = "/etc/snakepit/key.pem"

[[pool]]
name = "default"
modules = ["examples/lab.py"]
paths = ["/opt/lib"]
python = "/usr/bin/python3"
size = 2
max_queue = 1024
startup_timeout = "2m"
cancel_grace = "2s"
max_payload_bytes = 268435456
[pool.env]
FOO = "bar"

[[pool]]
name = "batch"
modules = ["jobs", "more_jobs"]
size = 8
max_concurrency = 4
zygote = true
max_calls_per_worker = 1000
max_worker_age = "1h"
max_worker_rss_bytes = 1073741824
max_worker_pss_bytes = 536870912
)";

std::string MessageOf(const absl::Status& status) {
  return std::string(status.message());
}

// A scratch directory per test, removed with its files.
class ConfigFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = ::testing::TempDir() + "snakepit_config_XXXXXX";
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  void TearDown() override {
    for (const std::string& path : files_) {
      unlink(path.c_str());
    }
    rmdir(dir_.c_str());
  }

  std::string Write(const std::string& name, const std::string& text) {
    std::string path = dir_ + "/" + name;
    std::ofstream(path) << text;
    files_.push_back(path);
    return path;
  }

  std::string dir_;
  std::vector<std::string> files_;
};

TEST(ParseConfigTest, EmptyFileGivesDefaults) {
  absl::StatusOr<NodeConfig> config = ParseConfig("", "empty.toml");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(*config, NodeConfig());
}

TEST(ParseConfigTest, ReadsEveryKey) {
  absl::StatusOr<NodeConfig> config = ParseConfig(kFullFile, "full.toml");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->listen, (std::vector<std::string>{
                                "127.0.0.1:50051", "unix:/tmp/snakepit.sock"}));
  EXPECT_EQ(config->admin, "127.0.0.1:9090");
  EXPECT_EQ(config->ready_file, "/tmp/ready.json");
  EXPECT_EQ(config->drain_timeout, absl::Seconds(30));
  EXPECT_EQ(config->worker_grace, absl::Milliseconds(500));
  EXPECT_EQ(config->max_message_bytes, 134217728u);
  EXPECT_EQ(config->log_format, "json");
  EXPECT_EQ(config->log_level, "debug");
  EXPECT_EQ(config->token, "secret");
  EXPECT_EQ(config->tls_cert_file, "/etc/snakepit/cert.pem");
  EXPECT_EQ(config->tls_key_file, "/etc/snakepit/key.pem");
  ASSERT_EQ(config->pools.size(), 2u);

  const PoolConfig& first = config->pools[0];
  EXPECT_EQ(first.name, "default");
  EXPECT_EQ(first.modules, std::vector<std::string>{"examples/lab.py"});
  EXPECT_EQ(first.paths, std::vector<std::string>{"/opt/lib"});
  EXPECT_EQ(first.python, "/usr/bin/python3");
  EXPECT_EQ(first.size, 2);
  EXPECT_EQ(first.max_queue, 1024u);
  EXPECT_EQ(first.startup_timeout, absl::Minutes(2));
  EXPECT_EQ(first.cancel_grace, absl::Seconds(2));
  EXPECT_EQ(first.max_payload_bytes, 268435456u);
  EXPECT_EQ(first.env, (std::map<std::string, std::string>{{"FOO", "bar"}}));

  const PoolConfig& second = config->pools[1];
  EXPECT_EQ(second.name, "batch");
  EXPECT_EQ(second.size, 8);
  EXPECT_EQ(second.startup_timeout, PoolConfig().startup_timeout);
  EXPECT_TRUE(second.env.empty());
  EXPECT_EQ(second.max_concurrency, 4);
  EXPECT_TRUE(second.zygote);
  EXPECT_FALSE(first.zygote);
  EXPECT_EQ(second.max_calls_per_worker, 1000u);
  EXPECT_EQ(second.max_worker_age, absl::Hours(1));
  EXPECT_EQ(second.max_worker_rss_bytes, 1u << 30);
  EXPECT_EQ(second.max_worker_pss_bytes, 1u << 29);
}

TEST(PrintConfigTest, RoundTripsThroughParseConfig) {
  absl::StatusOr<NodeConfig> config = ParseConfig(kFullFile, "full.toml");
  ASSERT_TRUE(config.ok()) << config.status();
  // Values that need quoting or escaping in TOML.
  config->pools[0].env["WITH SPACE"] = "quote \" backslash \\ tab \t";
  config->pools[0].env["NEWLINE"] = "a\nb\x01 é";
  config->pools[1].paths = {"C:\\odd path", ""};
  config->drain_timeout = absl::Milliseconds(1500);
  config->token.clear();

  std::string printed = PrintConfig(*config);
  absl::StatusOr<NodeConfig> reparsed = ParseConfig(printed, "printed.toml");
  ASSERT_TRUE(reparsed.ok()) << reparsed.status() << "\n" << printed;
  EXPECT_EQ(*reparsed, *config) << printed;
  EXPECT_EQ(PrintConfig(*reparsed), printed);
}

TEST(PrintConfigTest, RoundTripsDefaults) {
  NodeConfig config;
  config.pools.push_back(PoolConfig{.modules = {"m"}});
  absl::StatusOr<NodeConfig> reparsed =
      ParseConfig(PrintConfig(config), "printed.toml");
  ASSERT_TRUE(reparsed.ok()) << reparsed.status();
  EXPECT_EQ(*reparsed, config);
}

TEST(PrintConfigTest, RedactsToken) {
  NodeConfig config;
  config.token = "hunter2";
  std::string printed = PrintConfig(config);
  EXPECT_EQ(printed.find("hunter2"), std::string::npos) << printed;
  EXPECT_NE(printed.find("token = \"<redacted>\""), std::string::npos)
      << printed;

  // The printed form still parses; the token it carries is the marker.
  absl::StatusOr<NodeConfig> reparsed = ParseConfig(printed, "printed.toml");
  ASSERT_TRUE(reparsed.ok()) << reparsed.status();
  EXPECT_EQ(reparsed->token, "<redacted>");
}

TEST(PrintConfigTest, ShowsAnEmptyTokenAsEmpty) {
  std::string printed = PrintConfig(NodeConfig());
  EXPECT_NE(printed.find("token = \"\""), std::string::npos) << printed;
  EXPECT_EQ(printed.find("<redacted>"), std::string::npos) << printed;
}

// Each bad file and the exact error it must give.
struct BadFile {
  std::string name;
  std::string text;
  std::string error;
};

void PrintTo(const BadFile& bad, std::ostream* os) {
  *os << bad.name;
}

class ParseConfigErrorTest : public ::testing::TestWithParam<BadFile> {};

TEST_P(ParseConfigErrorTest, NamesLineAndColumn) {
  absl::StatusOr<NodeConfig> config = ParseConfig(GetParam().text, "f.toml");
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ReasonOf(config.status()), "invalid_argument");
  EXPECT_EQ(MessageOf(config.status()), GetParam().error);
}

INSTANTIATE_TEST_SUITE_P(
    EveryKind, ParseConfigErrorTest,
    ::testing::Values(
        BadFile{"Syntax", "[node]\nlisten = [\"a:1\",\n",
                "f.toml:2:18: error while parsing array: encountered "
                "end-of-file"},
        BadFile{"DuplicateKey", "[node]\nadmin = \"a:1\"\nadmin = \"b:2\"\n",
                "f.toml:3:9: error while parsing key-value pair: cannot "
                "redefine existing string 'admin'"},
        BadFile{"UnknownKey", "[node]\nadmin = \"a:1\"\n  bogus = 1\n",
                "f.toml:3:3: unknown key node.bogus"},
        BadFile{"UnknownTopLevelKey", "\n\nlisten = [\"a:1\"]\n",
                "f.toml:3:1: unknown key listen"},
        BadFile{"UnknownTable", "[node]\n[nodes]\n",
                "f.toml:2:2: unknown table [nodes]"},
        BadFile{"UnknownPoolKey", "[[pool]]\nmodules = [\"m\"]\nworkers = 4\n",
                "f.toml:3:1: unknown key pool.workers"},
        BadFile{"UnknownKeyReportedFirstInFile", "[node]\nzzz = 1\naaa = 2\n",
                "f.toml:2:1: unknown key node.zzz"},
        BadFile{"StringExpected", "[node]\nadmin = 9090\n",
                "f.toml:2:9: node.admin: expected a string, got an integer"},
        BadFile{"ArrayExpected", "[node]\nlisten = \"a:1\"\n",
                "f.toml:2:10: node.listen: expected an array of strings, "
                "got a string"},
        BadFile{"ArrayElementType", "[node]\nlisten = [\"a:1\", 2]\n",
                "f.toml:2:18: node.listen: expected strings, got an "
                "integer"},
        BadFile{"BadListener", "[node]\nlisten = [\"a:1\", \"nope\"]\n",
                "f.toml:2:18: node.listen: \"nope\" is not HOST:PORT or "
                "unix:PATH"},
        BadFile{"NoListener", "[node]\nlisten = []\n",
                "f.toml:2:10: node.listen: needs a listener"},
        BadFile{"BadAdmin", "[node]\nadmin = \"localhost\"\n",
                "f.toml:2:9: node.admin: expected \"HOST:PORT\" or \"\""},
        BadFile{"DurationAsInteger", "[node]\ndrain_timeout = 30\n",
                "f.toml:2:17: node.drain_timeout: expected a duration "
                "string such as \"30s\", got an integer"},
        BadFile{"BadDuration", "[node]\nworker_grace = \"5 sec\"\n",
                "f.toml:2:16: node.worker_grace: bad duration \"5 sec\" "
                "(use e.g. \"30s\", \"500ms\", \"2m\")"},
        BadFile{"NegativeDuration",
                "[[pool]]\nmodules = [\"m\"]\ncancel_grace = \"-1s\"\n",
                "f.toml:3:16: pool.cancel_grace: bad duration \"-1s\" "
                "(use e.g. \"30s\", \"500ms\", \"2m\")"},
        BadFile{"IntegerAsFloat", "[[pool]]\nmodules = [\"m\"]\nsize = 2.0\n",
                "f.toml:3:8: pool.size: expected an integer, got a float"},
        BadFile{"ZygoteAsString",
                "[[pool]]\nmodules = [\"m\"]\nzygote = \"yes\"\n",
                "f.toml:3:10: pool.zygote: expected true or false, got a "
                "string"},
        BadFile{"ConcurrencyTooLarge",
                "[[pool]]\nmodules = [\"m\"]\nmax_concurrency = 257\n",
                "f.toml:3:19: pool.max_concurrency: 257 is out of range "
                "1..256"},
        BadFile{"SizeTooSmall", "[[pool]]\nmodules = [\"m\"]\nsize = 0\n",
                "f.toml:3:8: pool.size: 0 is out of range 1..1024"},
        BadFile{"SizeTooLarge", "[[pool]]\nmodules = [\"m\"]\nsize = 1025\n",
                "f.toml:3:8: pool.size: 1025 is out of range 1..1024"},
        BadFile{"NegativeQueue",
                "[[pool]]\nmodules = [\"m\"]\nmax_queue = -1\n",
                "f.toml:3:13: pool.max_queue: -1 is out of range "
                "0..9223372036854775807"},
        BadFile{"MessageTooLarge", "[node]\nmax_message_bytes = 4294967296\n",
                "f.toml:2:21: node.max_message_bytes: 4294967296 is out of "
                "range 1..4294967295"},
        BadFile{"BadLogFormat", "[node]\nlog_format = \"xml\"\n",
                "f.toml:2:14: node.log_format: expected \"auto\", \"text\" "
                "or \"json\""},
        BadFile{"BadLogLevel", "[node]\nlog_level = \"loud\"\n",
                "f.toml:2:13: node.log_level: expected trace, debug, info, "
                "warn, error, critical or off"},
        BadFile{"SectionNotATable", "node = 1\n",
                "f.toml:1:8: node: expected a table, got an integer"},
        BadFile{"PoolNotAnArrayOfTables", "[pool]\nmodules = [\"m\"]\n",
                "f.toml:1:1: pool: expected [[pool]] tables"},
        BadFile{"PoolWithoutModules", "\n[[pool]]\nname = \"x\"\n",
                "f.toml:2:1: pool.modules: needs at least one module"},
        BadFile{"PoolWithEmptyName",
                "[[pool]]\nname = \"\"\nmodules = [\"m\"]\n",
                "f.toml:2:8: pool.name: is empty"},
        BadFile{"DuplicatePoolName",
                "[[pool]]\nmodules = [\"m\"]\n\n[[pool]]\nmodules = "
                "[\"n\"]\n",
                "f.toml:4:1: pool.name: \"default\" is already the name of "
                "the pool at line 1"},
        BadFile{"EnvValueNotAString",
                "[[pool]]\nmodules = [\"m\"]\n[pool.env]\nN = 1\n",
                "f.toml:4:5: pool.env.N: expected a string, got an "
                "integer"},
        BadFile{"EnvNotATable", "[[pool]]\nmodules = [\"m\"]\nenv = \"A=1\"\n",
                "f.toml:3:7: pool.env: expected a table, got a string"},
        BadFile{"CertWithoutKey", "[tls]\ncert_file = \"c.pem\"\n",
                "f.toml:1:1: tls.key_file: give both cert_file and "
                "key_file, or neither"},
        BadFile{"TokenAndTokenFile",
                "[auth]\ntoken = \"a\"\ntoken_file = \"/t\"\n",
                "f.toml:3:14: auth.token_file: give token or token_file, "
                "not both"},
        BadFile{"MissingTokenFile",
                "[auth]\ntoken_file = \"/nonexistent/snakepit-token\"\n",
                "f.toml:2:14: auth.token_file: cannot read "
                "/nonexistent/snakepit-token: No such file or directory"}),
    [](const ::testing::TestParamInfo<BadFile>& info) {
      return info.param.name;
    });

TEST_F(ConfigFileTest, TokenFileIsReadWithoutTrailingNewline) {
  std::string token = Write("token", "s3cret\r\n");
  absl::StatusOr<NodeConfig> config =
      ParseConfig("[auth]\ntoken_file = \"" + token + "\"\n", "f.toml");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->token, "s3cret");
}

TEST_F(ConfigFileTest, EmptyTokenFileIsAnError) {
  std::string token = Write("token", "\n");
  absl::StatusOr<NodeConfig> config =
      ParseConfig("[auth]\ntoken_file = \"" + token + "\"\n", "f.toml");
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(MessageOf(config.status()),
            "f.toml:2:14: auth.token_file: " + token + " is empty");
}

TEST_F(ConfigFileTest, TokenFromFileIsRedactedWhenPrinted) {
  std::string token = Write("token", "from-file\n");
  std::string file = Write("node.toml", "[auth]\ntoken_file = \"" + token +
                                            "\"\n[[pool]]\nmodules = "
                                            "[\"m\"]\n");
  absl::StatusOr<NodeConfig> config = LoadConfig(file, {}, {});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->token, "from-file");
  EXPECT_EQ(PrintConfig(*config).find("from-file"), std::string::npos);
}

TEST_F(ConfigFileTest, LoadNamesTheFileInErrors) {
  std::string file = Write("node.toml", "[node]\nbogus = true\n");
  absl::StatusOr<NodeConfig> config = LoadConfig(file, {}, {});
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(MessageOf(config.status()), file + ":2:1: unknown key node.bogus");
}

TEST(LoadConfigTest, MissingFileIsAnError) {
  absl::StatusOr<NodeConfig> config =
      LoadConfig("/nonexistent/snakepit.toml", {}, {});
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MessageOf(config.status()),
            "cannot read /nonexistent/snakepit.toml: No such file or "
            "directory");
}

TEST_F(ConfigFileTest, EnvironmentOverridesFileAndFlagsOverrideBoth) {
  std::string file = Write("node.toml", R"([node]
listen = ["127.0.0.1:1"]
admin = "127.0.0.1:2"
log_level = "debug"
log_format = "text"
drain_timeout = "10s"
[[pool]]
modules = ["m"]
)");
  std::vector<std::string> env = {
      "PATH=/usr/bin",
      "SNAKEPIT_LISTEN=127.0.0.1:3, unix:/tmp/s.sock",
      "SNAKEPIT_LOG_LEVEL=warn",
      "SNAKEPIT_LOG_FORMAT=json",
      "SNAKEPIT_DRAIN_TIMEOUT=20s",
      "SNAKEPIT_WORKER_GRACE=1m",
      "SNAKEPIT_MAX_MESSAGE_BYTES=1024",
      "SNAKEPIT_TOKEN=env-token",
      "SNAKEPIT_READY_FILE=/tmp/env-ready",
      "SNAKEPIT_ADMIN=",
      "SNAKEPIT_PYTHON=/not/the/node/config",
  };
  ConfigOverrides flags;
  flags.log_level = "error";
  flags.listen = {"127.0.0.1:4"};
  flags.token = "flag-token";

  absl::StatusOr<NodeConfig> config = LoadConfig(file, env, flags);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->log_level, "error");  // flag over env over file
  EXPECT_EQ(config->log_format, "json");  // env over file
  EXPECT_EQ(config->listen, std::vector<std::string>{"127.0.0.1:4"});
  EXPECT_EQ(config->token, "flag-token");
  EXPECT_EQ(config->admin, "");  // an empty variable turns admin off
  EXPECT_EQ(config->drain_timeout, absl::Seconds(20));
  EXPECT_EQ(config->worker_grace, absl::Minutes(1));
  EXPECT_EQ(config->max_message_bytes, 1024u);
  EXPECT_EQ(config->ready_file, "/tmp/env-ready");
  EXPECT_EQ(config->pools[0].python, "");

  // Without flags the environment's values stand.
  config = LoadConfig(file, env, {});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->log_level, "warn");
  EXPECT_EQ(config->token, "env-token");
  EXPECT_EQ(config->listen,
            (std::vector<std::string>{"127.0.0.1:3", "unix:/tmp/s.sock"}));
}

TEST_F(ConfigFileTest, ModuleFlagReplacesThePools) {
  std::string file = Write("node.toml",
                           "[[pool]]\nname = \"a\"\n"
                           "modules = [\"x\"]\nsize = 3\n");
  ConfigOverrides flags;
  flags.modules = {"lab.py", "more.py"};
  flags.python = "/usr/bin/python3";
  flags.workers = 7;
  absl::StatusOr<NodeConfig> config = LoadConfig(file, {}, flags);
  ASSERT_TRUE(config.ok()) << config.status();
  ASSERT_EQ(config->pools.size(), 1u);
  EXPECT_EQ(config->pools[0].name, "default");
  EXPECT_EQ(config->pools[0].modules, flags.modules);
  EXPECT_EQ(config->pools[0].python, "/usr/bin/python3");
  EXPECT_EQ(config->pools[0].size, 7);
}

TEST_F(ConfigFileTest, WorkersFlagWithoutModulesAppliesToEveryPool) {
  std::string file = Write("node.toml",
                           "[[pool]]\nname = \"a\"\nmodules = [\"x\"]\n"
                           "[[pool]]\nname = \"b\"\nmodules = [\"y\"]\n");
  ConfigOverrides flags;
  flags.workers = 3;
  absl::StatusOr<NodeConfig> config = LoadConfig(file, {}, flags);
  ASSERT_TRUE(config.ok()) << config.status();
  ASSERT_EQ(config->pools.size(), 2u);
  EXPECT_EQ(config->pools[0].size, 3);
  EXPECT_EQ(config->pools[1].size, 3);
  EXPECT_EQ(config->pools[1].modules, std::vector<std::string>{"y"});
}

// Each bad environment variable and the error naming it.
struct BadEnv {
  std::string name;
  std::string entry;
  std::string error;
};

void PrintTo(const BadEnv& bad, std::ostream* os) {
  *os << bad.name;
}

class EnvErrorTest : public ::testing::TestWithParam<BadEnv> {};

TEST_P(EnvErrorTest, NamesTheVariable) {
  ConfigOverrides flags;
  flags.modules = {"m"};
  absl::StatusOr<NodeConfig> config = LoadConfig("", {GetParam().entry}, flags);
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MessageOf(config.status()), GetParam().error);
}

INSTANTIATE_TEST_SUITE_P(
    EveryVariable, EnvErrorTest,
    ::testing::Values(
        BadEnv{"Listen", "SNAKEPIT_LISTEN=127.0.0.1:1,,",
               "SNAKEPIT_LISTEN: \"\" is not HOST:PORT or unix:PATH"},
        BadEnv{"Admin", "SNAKEPIT_ADMIN=nowhere",
               "SNAKEPIT_ADMIN: \"nowhere\" is not HOST:PORT"},
        BadEnv{"LogFormat", "SNAKEPIT_LOG_FORMAT=xml",
               "SNAKEPIT_LOG_FORMAT: unknown value \"xml\""},
        BadEnv{"LogLevel", "SNAKEPIT_LOG_LEVEL=loud",
               "SNAKEPIT_LOG_LEVEL: unknown value \"loud\""},
        BadEnv{"DrainTimeout", "SNAKEPIT_DRAIN_TIMEOUT=soon",
               "SNAKEPIT_DRAIN_TIMEOUT: bad duration \"soon\" (use e.g. "
               "\"30s\", \"500ms\", \"2m\")"},
        BadEnv{"WorkerGrace", "SNAKEPIT_WORKER_GRACE=inf",
               "SNAKEPIT_WORKER_GRACE: bad duration \"inf\" (use e.g. "
               "\"30s\", \"500ms\", \"2m\")"},
        BadEnv{"MaxMessageBytes", "SNAKEPIT_MAX_MESSAGE_BYTES=lots",
               "SNAKEPIT_MAX_MESSAGE_BYTES: \"lots\" is not an integer"},
        BadEnv{"MaxMessageBytesZero", "SNAKEPIT_MAX_MESSAGE_BYTES=0",
               "SNAKEPIT_MAX_MESSAGE_BYTES: 0 is out of range "
               "1..4294967295"}),
    [](const ::testing::TestParamInfo<BadEnv>& info) {
      return info.param.name;
    });

TEST(LoadConfigTest, BadFlagValuesNameTheFlag) {
  ConfigOverrides flags;
  flags.modules = {"m"};
  flags.log_format = "xml";
  absl::StatusOr<NodeConfig> config = LoadConfig("", {}, flags);
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(MessageOf(config.status()), "--log-format: unknown value \"xml\"");

  flags.log_format.clear();
  flags.log_level = "loud";
  config = LoadConfig("", {}, flags);
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(MessageOf(config.status()), "--log-level: unknown level \"loud\"");
}

TEST(LoadConfigTest, ValidatesTheMergedResult) {
  struct Case {
    ConfigOverrides flags;
    std::string error;
  };
  ConfigOverrides no_pools;
  ConfigOverrides too_many;
  too_many.modules = {"m"};
  too_many.workers = 5000;
  ConfigOverrides bad_listener;
  bad_listener.modules = {"m"};
  bad_listener.listen = {"nowhere"};
  ConfigOverrides bad_admin;
  bad_admin.modules = {"m"};
  bad_admin.admin = "nowhere";
  bad_admin.admin_set = true;
  for (const Case& c : {
           Case{no_pools, "no pools: add a [[pool]] table or pass --module"},
           Case{too_many,
                "pool \"default\": size 5000 is out of range 1..1024"},
           Case{bad_listener,
                "listener \"nowhere\" is not HOST:PORT or unix:PATH"},
           Case{bad_admin, "admin listener \"nowhere\" is not HOST:PORT"},
       }) {
    absl::StatusOr<NodeConfig> config = LoadConfig("", {}, c.flags);
    ASSERT_FALSE(config.ok()) << c.error;
    EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(MessageOf(config.status()), c.error);
  }
}

TEST(LoadConfigTest, AdminFlagCanTurnAdminOff) {
  ConfigOverrides flags;
  flags.modules = {"m"};
  flags.admin_set = true;
  absl::StatusOr<NodeConfig> config = LoadConfig("", {}, flags);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->admin, "");
}

}  // namespace
}  // namespace snakepit::server
