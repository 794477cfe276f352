// Shared helpers for the tokenizer tests: the extracted tokenizers.tar.gz and loaded tokenizers.
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "support/testdata.h"
#include "tokenizer/tokenizer.h"

namespace tandem::testing {

// tokenizers.tar.gz extracted once per test binary; tokenizers loaded once each.
class TokenizerData {
 public:
  static TokenizerData& Get() {
    static TokenizerData data;  // test-binary lifetime
    return data;
  }
  std::filesystem::path dir() const { return scratch_.path() / "tokenizers"; }
  const Tokenizer* Load(const std::string& name) {
    auto it = loaded_.find(name);
    if (it != loaded_.end()) return it->second.get();
    auto t = Tokenizer::FromDirectory(dir() / name);
    EXPECT_TRUE(t.ok()) << t.status().ToString();
    if (!t.ok()) return nullptr;
    const Tokenizer* raw = t->get();
    loaded_[name] = std::move(*t);
    return raw;
  }

 private:
  TokenizerData() {
    const auto archive = TestdataDir() / "tokenizers.tar.gz";
    const std::string cmd =
        "tar xzf '" + archive.string() + "' -C '" + scratch_.path().string() + "'";
    EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
  }
  ScratchDir scratch_;
  std::map<std::string, std::unique_ptr<Tokenizer>> loaded_;
};

inline std::string ReadAll(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace tandem::testing
