// Helpers shared by the GGUF tests: running the Python generators (the official `gguf` package in
// the repository's .venv), reading reference files, and building GGUF bytes by hand for the
// corrupt-file tests.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "support/testdata.h"

namespace tandem::gguf_test {

inline std::filesystem::path PythonPath() {
  return std::filesystem::path(TANDEM_SOURCE_DIR "/.venv/bin/python");
}

inline std::filesystem::path ScriptDir() {
  return std::filesystem::path(TANDEM_SOURCE_DIR) / "tests" / "model" / "gguf";
}

// Runs `python script args...`; returns "" on success, else a message for the failing test.
inline std::string RunPython(const std::string& script, const std::string& args) {
  const std::filesystem::path python = PythonPath();
  if (!std::filesystem::exists(python)) {
    return "the Python venv is missing at " + python.string() +
           ": run scripts/install-deps.sh (needs the `gguf` package)";
  }
  const std::string command =
      "'" + python.string() + "' '" + (ScriptDir() / script).string() + "' " + args + " 2>&1";
  const int rc = std::system(command.c_str());
  if (rc != 0) {
    return "command failed (exit " + std::to_string(rc) + "): " + command +
           " (is the `gguf` package installed in .venv? see scripts/install-deps.sh)";
  }
  return "";
}

// The files written once per test binary by make_gguf.py (types.gguf, tiny-llama-*.gguf, ...);
// fails the calling test when the generator cannot run.
inline const std::filesystem::path& GeneratedDir() {
  static const testing::ScratchDir dir;  // removed at exit
  static const std::string error =
      RunPython("make_gguf.py", "--out '" + dir.path().string() + "' --tiny-llama '" +
                                    testing::ModelDir("tiny-llama").string() + "'");
  if (!error.empty()) ADD_FAILURE() << error;
  return dir.path();
}

inline nlohmann::json ReadJson(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) {
    ADD_FAILURE() << "cannot read " << path;
    return nlohmann::json::object();
  }
  return nlohmann::json::parse(in);
}

inline std::vector<float> ReadF32(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) {
    ADD_FAILURE() << "cannot read " << path;
    return {};
  }
  const auto size = static_cast<size_t>(in.tellg());
  std::vector<float> out(size / sizeof(float));
  in.seekg(0);
  in.read(reinterpret_cast<char*>(out.data()), static_cast<std::streamsize>(out.size() * 4));
  return out;
}

inline std::string ReadBytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

inline void WriteBytes(const std::filesystem::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// Little-endian GGUF bytes, built field by field (so a test can write any field wrong).
class GgufBytes {
 public:
  template <typename T>
  GgufBytes& Pod(T v) {
    char buf[sizeof(T)];
    std::memcpy(buf, &v, sizeof(T));
    bytes_.append(buf, sizeof(T));
    return *this;
  }
  GgufBytes& U32(uint32_t v) { return Pod(v); }
  GgufBytes& U64(uint64_t v) { return Pod(v); }
  GgufBytes& Str(const std::string& s) {
    U64(s.size());
    bytes_ += s;
    return *this;
  }
  GgufBytes& Raw(const std::string& s) {
    bytes_ += s;
    return *this;
  }
  // magic, version, tensor count, kv count
  GgufBytes& Header(uint64_t n_tensors, uint64_t n_kv, uint32_t version = 3) {
    bytes_ += "GGUF";
    return U32(version).U64(n_tensors).U64(n_kv);
  }
  GgufBytes& KvU32(const std::string& key, uint32_t v) { return Str(key).U32(4).U32(v); }
  GgufBytes& KvString(const std::string& key, const std::string& v) { return Str(key).U32(8).Str(v); }
  // name, ne (fastest first), ggml type, offset
  GgufBytes& TensorInfo(const std::string& name, const std::vector<uint64_t>& ne, uint32_t type,
                        uint64_t offset) {
    Str(name).U32(static_cast<uint32_t>(ne.size()));
    for (uint64_t d : ne) U64(d);
    return U32(type).U64(offset);
  }
  GgufBytes& PadTo(size_t alignment) {
    while (bytes_.size() % alignment != 0) bytes_ += '\0';
    return *this;
  }
  GgufBytes& Zeros(size_t n) {
    bytes_.append(n, '\0');
    return *this;
  }
  const std::string& str() const { return bytes_; }
  size_t size() const { return bytes_.size(); }

 private:
  std::string bytes_;
};

}  // namespace tandem::gguf_test
