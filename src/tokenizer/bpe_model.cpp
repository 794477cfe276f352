#include "tokenizer/bpe_model.h"

#include <fmt/format.h>

#include <queue>

#include "tokenizer/byte_level.h"
#include "tokenizer/unicode.h"

namespace tandem {
namespace {

constexpr uint64_t kEmptyKey = ~uint64_t{0};

inline uint64_t Mix(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  return x;
}

}  // namespace

void BpeModel::MergeMap::Init(size_t n) {
  size_t cap = 16;
  while (cap < n * 2) cap <<= 1;
  keys.assign(cap, kEmptyKey);
  values.assign(cap, 0);
  mask = cap - 1;
}

void BpeModel::MergeMap::Insert(uint64_t key, uint64_t value) {
  for (uint64_t i = Mix(key) & mask;; i = (i + 1) & mask) {
    if (keys[i] == kEmptyKey) {
      keys[i] = key;
      values[i] = value;
      return;
    }
    if (keys[i] == key) return;  // keep the first (lowest) rank
  }
}

bool BpeModel::MergeMap::Find(uint64_t key, uint64_t* value) const {
  for (uint64_t i = Mix(key) & mask;; i = (i + 1) & mask) {
    if (keys[i] == key) {
      *value = values[i];
      return true;
    }
    if (keys[i] == kEmptyKey) return false;
  }
}

StatusOr<std::unique_ptr<BpeModel>> BpeModel::Create(
    std::vector<std::string> vocab, const std::vector<std::pair<std::string, std::string>>& merges,
    const BpeOptions& options) {
  std::unique_ptr<BpeModel> model(new BpeModel());
  model->options_ = options;
  model->vocab_ = std::move(vocab);
  model->token_to_id_.reserve(model->vocab_.size());
  model->piece_to_id_.reserve(model->vocab_.size());
  for (int b = 0; b < 256; ++b) model->byte_ids_[b] = -1;
  for (size_t id = 0; id < model->vocab_.size(); ++id) {
    const std::string& token = model->vocab_[id];
    if (token.empty()) continue;
    model->token_to_id_.emplace(token, static_cast<int32_t>(id));
    if (options.byte_level) {
      auto bytes = byte_level::ToBytes(token);
      if (!bytes) continue;  // not reachable from text
      model->piece_to_id_.emplace(*bytes, static_cast<int32_t>(id));
      if (bytes->size() == 1) model->byte_ids_[static_cast<uint8_t>((*bytes)[0])] = static_cast<int32_t>(id);
    } else {
      model->piece_to_id_.emplace(token, static_cast<int32_t>(id));
    }
  }
  if (!options.byte_level && options.byte_fallback) {
    for (int b = 0; b < 256; ++b) {
      auto it = model->token_to_id_.find(fmt::format("<0x{:02X}>", b));
      if (it != model->token_to_id_.end()) model->byte_ids_[b] = it->second;
    }
  }
  model->merges_.Init(merges.size());
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& [left, right] = merges[rank];
    auto l = model->token_to_id_.find(left);
    auto r = model->token_to_id_.find(right);
    auto m = model->token_to_id_.find(left + right);
    if (l == model->token_to_id_.end() || r == model->token_to_id_.end() ||
        m == model->token_to_id_.end()) {
      return InvalidArgumentError(fmt::format(
          "BPE merge #{} (\"{}\" \"{}\") names a token that is not in the vocabulary", rank, left,
          right));
    }
    uint64_t key = (uint64_t(uint32_t(l->second)) << 32) | uint32_t(r->second);
    model->merges_.Insert(key, (uint64_t(rank) << 32) | uint32_t(m->second));
  }
  return model;
}

std::optional<int32_t> BpeModel::TokenToId(std::string_view token) const {
  auto it = token_to_id_.find(std::string(token));
  if (it == token_to_id_.end()) return std::nullopt;
  return it->second;
}

void BpeModel::InitialSymbols(std::string_view word, std::vector<int32_t>* symbols) const {
  if (options_.byte_level) {
    for (char c : word) {
      int32_t id = byte_ids_[static_cast<uint8_t>(c)];
      if (id >= 0) {
        symbols->push_back(id);
      } else if (options_.unk_id) {
        if (!(options_.fuse_unk && !symbols->empty() && symbols->back() == *options_.unk_id)) {
          symbols->push_back(*options_.unk_id);
        }
      }
    }
    return;
  }
  std::string ch;
  for (size_t pos = 0; pos < word.size();) {
    size_t start = pos;
    unicode::DecodeUtf8(word, &pos);
    ch.assign(word.substr(start, pos - start));
    auto it = piece_to_id_.find(ch);
    if (it != piece_to_id_.end()) {
      symbols->push_back(it->second);
      continue;
    }
    if (options_.byte_fallback) {
      bool all = true;
      for (char c : ch) all = all && byte_ids_[static_cast<uint8_t>(c)] >= 0;
      if (all) {
        for (char c : ch) symbols->push_back(byte_ids_[static_cast<uint8_t>(c)]);
        continue;
      }
    }
    if (options_.unk_id) {
      if (!(options_.fuse_unk && !symbols->empty() && symbols->back() == *options_.unk_id)) {
        symbols->push_back(*options_.unk_id);
      }
    }
  }
}

void BpeModel::Merge(std::string_view word, std::vector<int32_t>* ids) const {
  std::vector<int32_t> sym;
  sym.reserve(word.size());
  InitialSymbols(word, &sym);
  const int32_t n = static_cast<int32_t>(sym.size());
  if (n <= 1) {
    ids->insert(ids->end(), sym.begin(), sym.end());
    return;
  }
  std::vector<int32_t> next(n), prev(n);
  std::vector<uint8_t> alive(n, 1);
  for (int32_t i = 0; i < n; ++i) {
    next[i] = i + 1 < n ? i + 1 : -1;
    prev[i] = i - 1;
  }
  struct Candidate {
    uint32_t rank;
    int32_t pos;
    int32_t left, right, merged;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> queue;
  auto push = [&](int32_t pos) {
    if (pos < 0 || next[pos] < 0) return;
    const int32_t nx = next[pos];
    uint64_t v;
    uint64_t key = (uint64_t(uint32_t(sym[pos])) << 32) | uint32_t(sym[nx]);
    if (merges_.Find(key, &v)) {
      queue.push({uint32_t(v >> 32), pos, sym[pos], sym[nx], int32_t(uint32_t(v))});
    }
  };
  for (int32_t i = 0; i + 1 < n; ++i) push(i);
  while (!queue.empty()) {
    Candidate c = queue.top();
    queue.pop();
    if (!alive[c.pos] || sym[c.pos] != c.left) continue;
    int32_t right = next[c.pos];
    if (right < 0 || sym[right] != c.right) continue;
    sym[c.pos] = c.merged;
    alive[right] = 0;
    next[c.pos] = next[right];
    if (next[right] >= 0) prev[next[right]] = c.pos;
    if (prev[c.pos] >= 0) push(prev[c.pos]);
    push(c.pos);
  }
  for (int32_t i = 0; i >= 0; i = next[i]) ids->push_back(sym[i]);
}

void BpeModel::Encode(std::string_view word, std::vector<int32_t>* ids) const {
  if (word.empty()) return;
  if (options_.ignore_merges) {
    auto it = piece_to_id_.find(std::string(word));
    if (it != piece_to_id_.end()) {
      ids->push_back(it->second);
      return;
    }
  }
  const bool cacheable = options_.cache_capacity > 0 && word.size() <= 64;
  std::string key;
  if (cacheable) {
    key.assign(word);
    std::lock_guard<std::mutex> lock(cache_mutex_);
    auto it = cache_.find(key);
    if (it != cache_.end()) {
      ids->insert(ids->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t before = ids->size();
  Merge(word, ids);
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    if (cache_.size() < options_.cache_capacity) {
      cache_.emplace(std::move(key), std::vector<int32_t>(ids->begin() + before, ids->end()));
    }
  }
}

}  // namespace tandem
