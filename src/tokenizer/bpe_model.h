// BpeModel: byte-pair encoding of one pre-tokenized word into ids, as HF `tokenizers`' BPE model.
//
// Two alphabets:
//  - byte-level (GPT-2, Llama-3, Qwen): vocabulary strings are GPT-2 byte-level strings; the model
//    converts them to raw bytes once, so words arrive and are looked up as raw bytes;
//  - SentencePiece-style (Llama-2, Mistral): vocabulary strings are UTF-8 with U+2581; initial
//    symbols are characters, unknown characters become <0xNN> tokens (byte_fallback) or unk.
// Merges: a hash map (left id, right id) -> (rank, merged id); a word is merged lowest rank first
// (ties: leftmost) with a priority queue, O(n log n). A word -> ids cache (bounded, mutex-guarded)
// makes repeated words cheap. Everything else is constant after construction; thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "tandem/status.h"

namespace tandem {

struct BpeOptions {
  bool byte_level = true;
  bool ignore_merges = false;   // a word that is itself a token is emitted whole
  bool byte_fallback = false;   // unknown characters -> <0xNN> tokens
  bool fuse_unk = false;
  std::optional<int32_t> unk_id;
  size_t cache_capacity = 65536;  // words; 0 disables the cache
};

class BpeModel {
 public:
  // `vocab[id]` is the token string in the model's alphabet (may be empty for holes);
  // `merges` are (left, right) token strings by rank. Merges naming unknown tokens are an error.
  static StatusOr<std::unique_ptr<BpeModel>> Create(std::vector<std::string> vocab,
                                                    const std::vector<std::pair<std::string, std::string>>& merges,
                                                    const BpeOptions& options);

  // Appends the ids of one word (raw bytes for byte-level models, UTF-8 otherwise).
  void Encode(std::string_view word, std::vector<int32_t>* ids) const;

  std::optional<int32_t> TokenToId(std::string_view token) const;  // model alphabet
  const std::string& IdToToken(int32_t id) const { return vocab_[id]; }
  int32_t size() const { return static_cast<int32_t>(vocab_.size()); }
  const BpeOptions& options() const { return options_; }

 private:
  BpeModel() = default;
  void Merge(std::string_view word, std::vector<int32_t>* ids) const;
  void InitialSymbols(std::string_view word, std::vector<int32_t>* symbols) const;

  // Open-addressing map (left << 32 | right) -> (rank << 32 | merged id).
  struct MergeMap {
    std::vector<uint64_t> keys;
    std::vector<uint64_t> values;
    uint64_t mask = 0;
    void Init(size_t n);
    void Insert(uint64_t key, uint64_t value);
    bool Find(uint64_t key, uint64_t* value) const;
  };

  BpeOptions options_;
  std::vector<std::string> vocab_;                        // id -> token (model alphabet)
  std::unordered_map<std::string, int32_t> token_to_id_;  // model alphabet
  std::unordered_map<std::string, int32_t> piece_to_id_;  // raw bytes (byte-level) or UTF-8
  int32_t byte_ids_[256];                                 // byte-level: byte -> id; else <0xNN>
  MergeMap merges_;

  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;  // GUARDED_BY(cache_mutex_)
};

}  // namespace tandem
