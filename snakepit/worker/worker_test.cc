// Where a worker's runtime comes from, and what its environment says.

#include "snakepit/worker/worker.h"

#include <cstdlib>
#include <filesystem>
#include <string>

#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "snakepit/base/status.h"

namespace snakepit::worker {
namespace {

// Sets an environment variable for the life of the object.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) {
      saved_ = old;
      had_ = true;
    }
    ::setenv(name, value, 1);
  }
  ~ScopedEnv() {
    if (had_) {
      ::setenv(name_, saved_.c_str(), 1);
    } else {
      ::unsetenv(name_);
    }
  }

 private:
  const char* name_;
  std::string saved_;
  bool had_ = false;
};

std::string EnvValue(const std::vector<std::string>& env,
                     const std::string& name) {
  for (const std::string& entry : env) {
    if (entry.rfind(name + "=", 0) == 0) {
      return entry.substr(name.size() + 1);
    }
  }
  return "";
}

TEST(FindRuntimeDirTest, ABuildTreeProgramRunsTheSourceTree) {
  ScopedEnv unset("SNAKEPIT_RUNTIME_DIR", "");
  absl::StatusOr<std::string> dir = FindRuntimeDir("");
  ASSERT_TRUE(dir.ok()) << dir.status();
  EXPECT_EQ(*dir, SNAKEPIT_SOURCE_RUNTIME_DIR);
}

TEST(FindRuntimeDirTest, ANamedFolderIsUsedOrRefusedNeverPassedOver) {
  EXPECT_EQ(*FindRuntimeDir(SNAKEPIT_SOURCE_RUNTIME_DIR),
            SNAKEPIT_SOURCE_RUNTIME_DIR);

  absl::StatusOr<std::string> missing = FindRuntimeDir("/nonexistent/rt");
  EXPECT_EQ(ReasonOf(missing.status()), "runtime_not_found");
  EXPECT_TRUE(absl::StrContains(missing.status().message(),
                                "PoolOptions::runtime_dir"));

  ScopedEnv env("SNAKEPIT_RUNTIME_DIR", "/nonexistent/rt");
  missing = FindRuntimeDir("");
  EXPECT_EQ(ReasonOf(missing.status()), "runtime_not_found");
  EXPECT_TRUE(absl::StrContains(missing.status().message(),
                                "SNAKEPIT_RUNTIME_DIR"));
}

TEST(WorkerEnvTest, TheSourceRuntimeBringsTheBuildTreesNativeLoop) {
  WorkerSpec spec;
  spec.runtime_dir = SNAKEPIT_SOURCE_RUNTIME_DIR;
  std::string path = EnvValue(WorkerEnv(spec), "PYTHONPATH");
  EXPECT_EQ(path.rfind(std::string(SNAKEPIT_SOURCE_RUNTIME_DIR) + ":" +
                           SNAKEPIT_NATIVE_BUILD_DIR,
                       0),
            0u)
      << path;

  spec.runtime_dir = "/opt/somewhere/share/snakepit/python";
  path = EnvValue(WorkerEnv(spec), "PYTHONPATH");
  EXPECT_EQ(path.rfind(spec.runtime_dir, 0), 0u);
  EXPECT_FALSE(absl::StrContains(path, SNAKEPIT_NATIVE_BUILD_DIR));
}

}  // namespace
}  // namespace snakepit::worker
