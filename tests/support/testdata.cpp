#include "support/testdata.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <random>

namespace tandem::testing {

std::filesystem::path TestdataDir() {
  std::filesystem::path dir = TANDEM_TESTDATA_DIR;
  if (!std::filesystem::is_directory(dir)) {
    ADD_FAILURE() << "reference test data not found at " << dir
                  << " (configure with -DTANDEM_TESTDATA_DIR=...)";
  }
  return dir;
}

std::filesystem::path ModelDir(const std::string& name) { return TestdataDir() / "models" / name; }
std::filesystem::path SourceDir() { return TANDEM_SOURCE_DIR; }
std::filesystem::path BinaryDir() { return TANDEM_BINARY_DIR; }

ScratchDir::ScratchDir() {
  static std::atomic<int> counter{0};
  std::random_device rd;
  path_ = std::filesystem::temp_directory_path() /
          ("tandem-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter++) + "-" +
           std::to_string(rd()));
  std::filesystem::create_directories(path_);
}

ScratchDir::~ScratchDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

}  // namespace tandem::testing
