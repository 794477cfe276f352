#include "kv/block_manager.h"

#include <algorithm>
#include <limits>
#include <set>
#include <string>
#include <utility>

#include "tandem/check.h"

namespace tandem {
namespace {

// splitmix64's finalizer: a bijection on 64 bits with full avalanche.
uint64_t Mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

constexpr uint64_t kChainSeed = 0x7a6e64656d4b5631ULL;  // "tandemKV1"
constexpr uint64_t kGolden = 0x9e3779b97f4a7c15ULL;

}  // namespace

BlockManager::BlockManager(BlockManagerConfig config) : config_(config) {
  // The config is validated where it is loaded; here a bad one is a programming error.
  TANDEM_CHECK_GE(config_.num_blocks, 0);
  TANDEM_CHECK_GE(config_.block_size, 1);
  blocks_.resize(static_cast<size_t>(config_.num_blocks));
  free_list_.reserve(blocks_.size());
  // Taken from the back, so block 0 goes first.
  for (BlockId id = config_.num_blocks - 1; id >= 0; --id) free_list_.push_back(id);
  hash_index_.reserve(blocks_.size());
}

uint64_t BlockManager::ChainHash(uint64_t parent, std::span<const TokenId> tokens) {
  uint64_t h = Mix64(parent ^ kChainSeed);
  for (TokenId t : tokens) h = Mix64(h ^ (static_cast<uint64_t>(static_cast<uint32_t>(t)) + kGolden));
  return Mix64(h ^ (static_cast<uint64_t>(tokens.size()) * kGolden));
}

int32_t BlockManager::BlocksForTokens(int64_t num_tokens) const {
  if (num_tokens <= 0) return 0;
  const int64_t blocks = (num_tokens + config_.block_size - 1) / config_.block_size;
  return static_cast<int32_t>(std::min<int64_t>(blocks, std::numeric_limits<int32_t>::max()));
}

int32_t BlockManager::NumAvailableBlocks() const {
  return static_cast<int32_t>(free_list_.size() + cached_lru_.size());
}

BlockId BlockManager::LookupCached(const ChainPos& parent, uint64_t hash,
                                   std::span<const TokenId> tokens) const {
  auto [begin, end] = hash_index_.equal_range(hash);
  for (auto it = begin; it != end; ++it) {
    const Block& block = blocks_[static_cast<size_t>(it->second)];
    // The key may collide: only the same parent registration and the same tokens are the same KV.
    if (block.parent_hash == parent.key && block.parent_registration == parent.registration &&
        std::equal(block.tokens.begin(), block.tokens.end(), tokens.begin(), tokens.end())) {
      return it->second;
    }
  }
  return -1;
}

std::vector<BlockId> BlockManager::MatchPrefix(std::span<const TokenId> prompt) const {
  std::vector<BlockId> hits;
  if (!config_.enable_prefix_caching || prompt.empty()) return hits;
  const size_t bs = static_cast<size_t>(config_.block_size);
  // Never the block holding the last prompt token if that would leave nothing to compute.
  const size_t max_blocks = (prompt.size() - 1) / bs;
  ChainPos pos;
  for (size_t i = 0; i < max_blocks; ++i) {
    std::span<const TokenId> tokens = prompt.subspan(i * bs, bs);
    const uint64_t hash = chain_hash_(pos.key, tokens);
    const BlockId id = LookupCached(pos, hash, tokens);
    if (id < 0) break;
    hits.push_back(id);
    pos = ChainPos{hash, blocks_[static_cast<size_t>(id)].registration};
  }
  return hits;
}

int32_t BlockManager::NumCachedPrefixTokens(std::span<const TokenId> prompt) const {
  return static_cast<int32_t>(MatchPrefix(prompt).size()) * config_.block_size;
}

StatusOr<int32_t> BlockManager::AllocateSequence(SeqId seq, std::span<const TokenId> prompt,
                                                 int64_t num_tokens) {
  if (seqs_.contains(seq)) {
    return FailedPreconditionError("sequence " + std::to_string(seq) +
                                   " already holds blocks; FreeSequence it first");
  }
  if (num_tokens < 0) {
    return InvalidArgumentError("num_tokens must be >= 0, got " + std::to_string(num_tokens));
  }
  const std::vector<BlockId> hits = MatchPrefix(prompt);
  const int64_t num_hits = static_cast<int64_t>(hits.size());
  // Reusing a cached (ref 0) hit takes it out of the evictable set: count it as unavailable.
  int64_t cached_hits = 0;
  for (BlockId id : hits) cached_hits += blocks_[static_cast<size_t>(id)].ref_count == 0 ? 1 : 0;
  // The table covers num_tokens and at least the cached prefix.
  const int64_t num_fresh = std::max<int64_t>(0, BlocksForTokens(num_tokens) - num_hits);
  const int64_t available = NumAvailableBlocks() - cached_hits;
  if (num_fresh > available) {
    return ResourceExhaustedError("sequence " + std::to_string(seq) + " needs " +
                                  std::to_string(num_fresh) + " new KV blocks, " +
                                  std::to_string(available) + " available");
  }

  SeqBlocks& entry = seqs_[seq];
  entry.table.reserve(static_cast<size_t>(num_hits + num_fresh));
  for (BlockId id : hits) {
    Block& block = blocks_[static_cast<size_t>(id)];
    if (block.ref_count == 0) {
      // cached -> in use (ref_count = 1)
      cached_lru_.erase(block.lru_pos);
      ++num_in_use_;
    }
    // in use -> in use (ref_count + 1), shared with the sequences already holding it
    ++block.ref_count;
    entry.table.push_back(id);
    entry.chain = ChainPos{block.hash, block.registration};
  }
  entry.num_hashed = static_cast<int32_t>(num_hits);
  // Only now take fresh blocks: the hits are off the LRU list and cannot be evicted under us.
  for (int64_t i = 0; i < num_fresh; ++i) entry.table.push_back(TakeBlock());

  if (config_.enable_prefix_caching) {
    // Hit rate is over whole prompts: every prompt token is a query.
    prefix_queries_tokens_ += static_cast<int64_t>(prompt.size());
    prefix_hit_tokens_ += num_hits * config_.block_size;
  }
  return static_cast<int32_t>(num_hits * config_.block_size);
}

Status BlockManager::AppendSlots(SeqId seq, int64_t num_tokens) {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) {
    return FailedPreconditionError("sequence " + std::to_string(seq) + " holds no blocks");
  }
  std::vector<BlockId>& table = it->second.table;
  const int64_t num_new = static_cast<int64_t>(BlocksForTokens(num_tokens)) -
                          static_cast<int64_t>(table.size());
  if (num_new <= 0) return OkStatus();
  if (num_new > NumAvailableBlocks()) {
    return ResourceExhaustedError("sequence " + std::to_string(seq) + " needs " +
                                  std::to_string(num_new) + " more KV blocks, " +
                                  std::to_string(NumAvailableBlocks()) + " available");
  }
  for (int64_t i = 0; i < num_new; ++i) table.push_back(TakeBlock());
  return OkStatus();
}

void BlockManager::CommitComputed(SeqId seq, std::span<const TokenId> tokens, int64_t num_computed) {
  if (!config_.enable_prefix_caching) return;
  auto it = seqs_.find(seq);
  TANDEM_CHECK(it != seqs_.end()) << "CommitComputed on sequence " << seq << " holding no blocks";
  TANDEM_CHECK_LE(num_computed, static_cast<int64_t>(tokens.size()));
  SeqBlocks& entry = it->second;
  const size_t bs = static_cast<size_t>(config_.block_size);
  const size_t full = std::min(static_cast<size_t>(std::max<int64_t>(num_computed, 0)) / bs,
                               entry.table.size());
  for (size_t i = static_cast<size_t>(entry.num_hashed); i < full; ++i) {
    std::span<const TokenId> block_tokens = tokens.subspan(i * bs, bs);
    const uint64_t hash = chain_hash_(entry.chain.key, block_tokens);
    const BlockId existing = LookupCached(entry.chain, hash, block_tokens);
    const BlockId id = entry.table[i];
    Block& block = blocks_[static_cast<size_t>(id)];
    TANDEM_CHECK(!block.hashed) << "block " << id << " at " << i << " of sequence " << seq
                                << " is registered beyond num_hashed " << entry.num_hashed;
    if (existing >= 0) {
      // Another sequence computed and registered the same block first: keep its entry, leave ours
      // unhashed (it becomes free when released) and follow the chain through the registered one.
      entry.chain = ChainPos{hash, blocks_[static_cast<size_t>(existing)].registration};
    } else {
      // in use, unhashed -> in use, hashed (reusable by later sequences)
      block.hashed = true;
      block.hash = hash;
      block.tokens.assign(block_tokens.begin(), block_tokens.end());
      block.parent_hash = entry.chain.key;
      block.parent_registration = entry.chain.registration;
      block.registration = next_registration_++;
      hash_index_.emplace(hash, id);
      entry.chain = ChainPos{hash, block.registration};
    }
    entry.num_hashed = static_cast<int32_t>(i + 1);
  }
}

void BlockManager::FreeSequence(SeqId seq) {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return;
  const std::vector<BlockId>& table = it->second.table;
  // Tail first: the deepest blocks of a prefix reach the LRU front before their parents.
  for (auto rit = table.rbegin(); rit != table.rend(); ++rit) Release(*rit);
  seqs_.erase(it);
}

bool BlockManager::HasSequence(SeqId seq) const { return seqs_.contains(seq); }

std::span<const BlockId> BlockManager::BlockTable(SeqId seq) const {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return {};
  return it->second.table;
}

void BlockManager::ResetPrefixCache() {
  while (!cached_lru_.empty()) DropCached(cached_lru_.front());
}

BlockManagerStats BlockManager::Stats() const {
  BlockManagerStats stats;
  stats.num_total = config_.num_blocks;
  stats.num_free = static_cast<int32_t>(free_list_.size());
  stats.num_cached = static_cast<int32_t>(cached_lru_.size());
  stats.num_in_use = num_in_use_;
  stats.prefix_queries_tokens = prefix_queries_tokens_;
  stats.prefix_hit_tokens = prefix_hit_tokens_;
  return stats;
}

BlockId BlockManager::TakeBlock() {
  if (free_list_.empty()) {
    TANDEM_CHECK(!cached_lru_.empty()) << "TakeBlock with no free or cached block";
    // Evict the least recently used cached block: cached -> free.
    DropCached(cached_lru_.front());
  }
  const BlockId id = free_list_.back();
  free_list_.pop_back();
  Block& block = blocks_[static_cast<size_t>(id)];
  TANDEM_CHECK_EQ(block.ref_count, 0);
  TANDEM_CHECK(!block.hashed) << "free block " << id << " is hashed";
  // free -> in use (ref_count = 1)
  block.ref_count = 1;
  ++num_in_use_;
  return id;
}

void BlockManager::DropCached(BlockId id) {
  Block& block = blocks_[static_cast<size_t>(id)];
  TANDEM_CHECK(block.ref_count == 0 && block.hashed) << "block " << id << " is not cached";
  // cached -> free (hash entry and tokens dropped)
  cached_lru_.erase(block.lru_pos);
  Unhash(id);
  free_list_.push_back(id);
}

void BlockManager::Unhash(BlockId id) {
  Block& block = blocks_[static_cast<size_t>(id)];
  auto [begin, end] = hash_index_.equal_range(block.hash);
  auto entry = std::find_if(begin, end, [id](const auto& kv) { return kv.second == id; });
  TANDEM_CHECK(entry != end) << "hashed block " << id << " missing from the hash index";
  hash_index_.erase(entry);
  block.hashed = false;
  block.hash = 0;
  block.tokens.clear();
  block.tokens.shrink_to_fit();
  block.parent_hash = 0;
  block.registration = kNoRegistration;
  block.parent_registration = kNoRegistration;
  block.lru_pos = {};
}

void BlockManager::Release(BlockId id) {
  Block& block = blocks_[static_cast<size_t>(id)];
  TANDEM_CHECK_GE(block.ref_count, 1) << "releasing block " << id;
  // in use -> in use (ref_count - 1)
  --block.ref_count;
  if (block.ref_count > 0) return;
  --num_in_use_;
  if (block.hashed) {
    // in use -> cached (LRU tail, evicted last)
    block.lru_pos = cached_lru_.insert(cached_lru_.end(), id);
  } else {
    // in use -> free
    free_list_.push_back(id);
  }
}

void BlockManager::CheckInvariants() const {
  const size_t total = blocks_.size();
  TANDEM_CHECK_EQ(total, static_cast<size_t>(config_.num_blocks));

  // List membership, each block at most once per list.
  std::vector<int32_t> free_count(total, 0);
  std::vector<int32_t> lru_count(total, 0);
  for (BlockId id : free_list_) {
    TANDEM_CHECK(id >= 0 && static_cast<size_t>(id) < total) << "free list holds " << id;
    ++free_count[static_cast<size_t>(id)];
  }
  for (auto it = cached_lru_.begin(); it != cached_lru_.end(); ++it) {
    const BlockId id = *it;
    TANDEM_CHECK(id >= 0 && static_cast<size_t>(id) < total) << "LRU list holds " << id;
    ++lru_count[static_cast<size_t>(id)];
    TANDEM_CHECK(blocks_[static_cast<size_t>(id)].lru_pos == it) << "stale lru_pos of block " << id;
  }

  // Reference counts against the tables.
  std::vector<int32_t> table_refs(total, 0);
  for (const auto& [seq, entry] : seqs_) {
    TANDEM_CHECK_GE(entry.num_hashed, 0);
    TANDEM_CHECK_LE(static_cast<size_t>(entry.num_hashed), entry.table.size())
        << "sequence " << seq;
    std::set<BlockId> seen;
    for (BlockId id : entry.table) {
      TANDEM_CHECK(id >= 0 && static_cast<size_t>(id) < total) << "table of " << seq << " holds " << id;
      TANDEM_CHECK(seen.insert(id).second) << "block " << id << " twice in the table of " << seq;
      ++table_refs[static_cast<size_t>(id)];
    }
    // Blocks past the registered prefix were never registered (they are only this sequence's).
    for (size_t i = static_cast<size_t>(entry.num_hashed); i < entry.table.size(); ++i) {
      const Block& block = blocks_[static_cast<size_t>(entry.table[i])];
      TANDEM_CHECK(!block.hashed) << "block " << entry.table[i] << " of " << seq << " at " << i
                                  << " is hashed beyond num_hashed " << entry.num_hashed;
      TANDEM_CHECK_EQ(block.ref_count, 1);
    }
  }

  // Each block in exactly one state.
  int32_t num_free = 0, num_cached = 0, num_in_use = 0, num_hashed = 0;
  std::set<uint64_t> registrations;
  std::set<std::pair<uint64_t, std::vector<TokenId>>> identities;
  for (size_t i = 0; i < total; ++i) {
    const Block& block = blocks_[i];
    TANDEM_CHECK_EQ(block.ref_count, table_refs[i]) << "block " << i;
    if (block.ref_count > 0) {
      ++num_in_use;
      TANDEM_CHECK(free_count[i] == 0 && lru_count[i] == 0) << "in-use block " << i << " is listed";
    } else if (block.hashed) {
      ++num_cached;
      TANDEM_CHECK(free_count[i] == 0 && lru_count[i] == 1) << "cached block " << i;
    } else {
      ++num_free;
      TANDEM_CHECK(free_count[i] == 1 && lru_count[i] == 0) << "free block " << i;
    }
    if (block.hashed) {
      ++num_hashed;
      TANDEM_CHECK(config_.enable_prefix_caching) << "block " << i << " hashed with caching off";
      TANDEM_CHECK_EQ(block.tokens.size(), static_cast<size_t>(config_.block_size));
      TANDEM_CHECK_EQ(block.hash, chain_hash_(block.parent_hash, block.tokens)) << "block " << i;
      TANDEM_CHECK(block.registration != kNoRegistration && block.registration < next_registration_);
      TANDEM_CHECK(block.parent_registration < block.registration) << "block " << i;
      TANDEM_CHECK(registrations.insert(block.registration).second) << "block " << i;
      TANDEM_CHECK(identities.emplace(block.parent_registration, block.tokens).second)
          << "block " << i << " duplicates a registered block";
      size_t entries = 0;
      auto [begin, end] = hash_index_.equal_range(block.hash);
      for (auto it = begin; it != end; ++it) entries += it->second == static_cast<BlockId>(i);
      TANDEM_CHECK_EQ(entries, size_t{1}) << "hash index entries of block " << i;
    } else {
      TANDEM_CHECK(block.tokens.empty()) << "unhashed block " << i << " keeps tokens";
      TANDEM_CHECK_EQ(block.registration, kNoRegistration);
    }
  }
  TANDEM_CHECK_EQ(static_cast<size_t>(num_hashed), hash_index_.size());
  TANDEM_CHECK_EQ(static_cast<size_t>(num_free), free_list_.size());
  TANDEM_CHECK_EQ(static_cast<size_t>(num_cached), cached_lru_.size());
  TANDEM_CHECK_EQ(num_in_use, num_in_use_);
  TANDEM_CHECK_EQ(static_cast<size_t>(num_free + num_cached + num_in_use), total);
  TANDEM_CHECK_LE(prefix_hit_tokens_, prefix_queries_tokens_);
}

}  // namespace tandem
