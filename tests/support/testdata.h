// Locating reference test data (../shared/testdata beside the checkout) and scratch space.
#pragma once

#include <filesystem>
#include <string>

namespace tandem::testing {

// The shared reference data folder. Fails the calling test (ADD_FAILURE) when it is missing: tests
// that need references must never pass vacuously.
std::filesystem::path TestdataDir();
std::filesystem::path ModelDir(const std::string& name);  // TestdataDir()/models/<name>
std::filesystem::path SourceDir();
std::filesystem::path BinaryDir();

// A fresh, empty directory under the system temp dir, removed when the object dies.
class ScratchDir {
 public:
  ScratchDir();
  ~ScratchDir();
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

}  // namespace tandem::testing
