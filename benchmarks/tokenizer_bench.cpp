// tokenizer_bench: encode throughput (MB/s, one thread) of Tandem's tokenizer on the War and Peace
// slices of the tokenizer test vectors, for gpt2, llama3 and qwen2.
// Usage: tokenizer_bench [--testdata DIR] [--seconds S]
// benchmarks/tokenizer_bench.py runs HF `tokenizers` on the same text and prints the ratio.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace {

// The same text tokenizer_bench.py builds: vectors.jsonl texts of >= 300 characters, joined by "\n".
std::string BenchText(const std::filesystem::path& vectors) {
  std::ifstream in(vectors);
  std::string line, text;
  while (std::getline(in, line)) {
    auto v = nlohmann::json::parse(line);
    std::string t = v["text"].get<std::string>();
    // Python len() counts code points.
    size_t cps = 0;
    for (char c : t) cps += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
    if (cps < 300) continue;
    if (!text.empty()) text += "\n";
    text += t;
  }
  return text;
}

}  // namespace

int main(int argc, char** argv) {
  // Default: ../shared/testdata beside the checkout (this file is <repo>/benchmarks/...).
  std::filesystem::path testdata =
      std::filesystem::path(__FILE__).parent_path().parent_path().parent_path() / "shared" / "testdata";
  double seconds = 2.0;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    if (a == "--testdata") testdata = argv[i + 1];
    if (a == "--seconds") seconds = std::atof(argv[i + 1]);
  }
  const auto scratch = std::filesystem::temp_directory_path() / ("tandem-tokbench-" + std::to_string(::getpid()));
  std::filesystem::create_directories(scratch);
  const std::string cmd = "tar xzf '" + (testdata / "tokenizers.tar.gz").string() + "' -C '" + scratch.string() + "'";
  if (std::system(cmd.c_str()) != 0) {
    std::cerr << "tokenizer_bench: cannot extract " << (testdata / "tokenizers.tar.gz") << "\n";
    return 1;
  }
  std::printf("%-8s %10s %10s %12s\n", "vocab", "bytes", "tokens", "tandem MB/s");
  for (const char* name : {"gpt2", "llama3", "qwen2"}) {
    const auto dir = scratch / "tokenizers" / name;
    auto tok = tandem::Tokenizer::FromDirectory(dir);
    if (!tok.ok()) {
      std::cerr << tok.status().ToString() << "\n";
      return 1;
    }
    const std::string text = BenchText(dir / "vectors.jsonl");
    size_t n_tokens = (*tok)->Encode(text).size();  // warm-up (fills the word cache, like HF's)
    size_t bytes = 0;
    int iters = 0;
    auto start = std::chrono::steady_clock::now();
    double elapsed = 0;
    while (elapsed < seconds) {
      n_tokens = (*tok)->Encode(text).size();
      bytes += text.size();
      ++iters;
      elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    }
    std::printf("%-8s %10zu %10zu %12.2f\n", name, text.size(), n_tokens, bytes / elapsed / 1e6);
  }
  std::filesystem::remove_all(scratch);
  return 0;
}
