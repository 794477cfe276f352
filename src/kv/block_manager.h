// BlockManager: the bookkeeping of one worker's paged KV cache. It holds ids and reference counts,
// never pointers to KV memory: the backend owns the memory, kernels get block tables.
//
// Block states (every block is in exactly one):
//   free     ref_count == 0, no hash       -> on the free list
//   cached   ref_count == 0, hashed        -> evictable, in LRU order (least recently freed first)
//   in use   ref_count  > 0 (hashed or not) -> in at least one sequence's block table
// Invariant, checked by CheckInvariants(): free + cached + in_use == total.
//
// Automatic prefix caching: once every token of a full block has been computed, the block is keyed
// by a hash chain (hash of the parent block's key and this block's tokens) and its tokens are kept,
// so a later sequence with the same prefix takes a reference instead of recomputing it. Lookups
// compare the stored tokens, so a hash collision can never serve wrong KV. Allocation takes free
// blocks first, then evicts the least recently used cached block.
//
// Not thread-safe: owned by the engine thread.
#pragma once

#include <cstdint>
#include <list>
#include <span>
#include <unordered_map>
#include <vector>

#include "tandem/status.h"
#include "tandem/types.h"

namespace tandem {

struct BlockManagerConfig {
  int32_t num_blocks = 0;
  int32_t block_size = 16;  // tokens per block
  bool enable_prefix_caching = true;
};

struct BlockManagerStats {
  int32_t num_total = 0;
  int32_t num_free = 0;    // never used or hash dropped
  int32_t num_cached = 0;  // ref_count 0, still holding a reusable prefix
  int32_t num_in_use = 0;  // ref_count > 0
  int64_t prefix_queries_tokens = 0;  // tokens looked up in AllocateSequence
  int64_t prefix_hit_tokens = 0;      // of those, tokens served from the cache
};

class BlockManager {
 public:
  explicit BlockManager(BlockManagerConfig config);

  const BlockManagerConfig& config() const { return config_; }
  int32_t block_size() const { return config_.block_size; }

  // Blocks needed to hold `num_tokens` tokens.
  int32_t BlocksForTokens(int64_t num_tokens) const;

  // Blocks that an allocation could take right now: free + cached (evictable).
  int32_t NumAvailableBlocks() const;

  // Tokens of `prompt` that a new sequence would find in the prefix cache: whole blocks only, and
  // always leaving at least one token to compute (the last prompt token must run to produce logits).
  int32_t NumCachedPrefixTokens(std::span<const TokenId> prompt) const;

  // First allocation for `seq` (which must hold no blocks): takes references on the cached prefix
  // of `prompt` and fresh blocks so the table covers `num_tokens` tokens (num_tokens >= the cached
  // prefix). Returns the number of prompt tokens already cached (their KV need not be computed).
  // All or nothing: ResourceExhausted leaves every block as it was.
  StatusOr<int32_t> AllocateSequence(SeqId seq, std::span<const TokenId> prompt, int64_t num_tokens);

  // Grows `seq`'s table to cover `num_tokens` tokens. All or nothing; ResourceExhausted if the
  // blocks are not available. A no-op if the table is already large enough.
  Status AppendSlots(SeqId seq, int64_t num_tokens);

  // Declares that KV for tokens[0, num_computed) of `seq` is now in the cache: newly completed full
  // blocks enter the prefix cache. `tokens` is the sequence's whole token list (prompt + output).
  void CommitComputed(SeqId seq, std::span<const TokenId> tokens, int64_t num_computed);

  // Releases every block of `seq` (tail blocks first, so they are evicted first). Unknown ids are a
  // no-op, so abort paths may call it unconditionally.
  void FreeSequence(SeqId seq);

  bool HasSequence(SeqId seq) const;
  // The block table of `seq`, in token order. Empty if `seq` holds none.
  std::span<const BlockId> BlockTable(SeqId seq) const;

  // Drops every cached (evictable) prefix: those blocks become free.
  void ResetPrefixCache();

  BlockManagerStats Stats() const;
  // TANDEM_CHECKs the state invariants (counts, ref counts against tables, hash index, lists).
  void CheckInvariants() const;

 private:
  // Test-only access (tests/kv): replaces the chain hash to force collisions, reads block state.
  friend class BlockManagerTestPeer;

  // Key of a full block: a hash of its parent's key and its tokens (kRootKey for the first block).
  using ChainHashFn = uint64_t (*)(uint64_t parent_key, std::span<const TokenId> tokens);
  static constexpr uint64_t kRootKey = 0;

  // A registered block's identity is (parent registration, tokens): registrations are unique for
  // the life of the manager, so identity never depends on the hash being collision-free.
  static constexpr uint64_t kNoRegistration = 0;  // also the parent registration of a first block

  struct Block {
    int32_t ref_count = 0;
    bool hashed = false;
    uint64_t hash = 0;            // chain key, valid while hashed
    std::vector<TokenId> tokens;  // the block's tokens, kept while hashed (collision check)
    uint64_t parent_hash = 0;     // parent's chain key, valid while hashed
    uint64_t registration = kNoRegistration;         // unique id of this registration
    uint64_t parent_registration = kNoRegistration;  // the parent's, or kNoRegistration at the root
    std::list<BlockId>::iterator lru_pos;  // valid while cached
  };

  // Where a sequence's hash chain stands: the registered block that its next full block follows.
  struct ChainPos {
    uint64_t key = kRootKey;
    uint64_t registration = kNoRegistration;
  };

  // Hash key of a full block given its parent's key.
  static uint64_t ChainHash(uint64_t parent, std::span<const TokenId> tokens);
  // Finds a registered (cached or in-use) block holding exactly `tokens` after `parent`, or -1.
  BlockId LookupCached(const ChainPos& parent, uint64_t hash, std::span<const TokenId> tokens) const;
  // The registered blocks that serve the prefix of `prompt` (capped so one token is left).
  std::vector<BlockId> MatchPrefix(std::span<const TokenId> prompt) const;
  // Takes one block off the free list, else evicts the LRU cached block. CHECKs availability.
  BlockId TakeBlock();
  // Drops the hash of a cached block and puts it on the free list (cached -> free).
  void DropCached(BlockId id);
  // Removes `id`'s entry from the hash index and clears its prefix-cache fields.
  void Unhash(BlockId id);
  // Drops one reference; at zero the block becomes cached (hashed) or free (unhashed).
  void Release(BlockId id);

  BlockManagerConfig config_;  // Constant after construction
  ChainHashFn chain_hash_ = &ChainHash;
  std::vector<Block> blocks_;
  std::vector<BlockId> free_list_;  // taken from the back
  std::list<BlockId> cached_lru_;   // front = evicted first
  std::unordered_multimap<uint64_t, BlockId> hash_index_;
  struct SeqBlocks {
    std::vector<BlockId> table;
    int32_t num_hashed = 0;  // leading blocks whose content is registered (here or, if a duplicate,
                             // in the block that was registered first)
    ChainPos chain;          // chain position after those blocks
  };
  std::unordered_map<SeqId, SeqBlocks> seqs_;
  int32_t num_in_use_ = 0;  // kept apart from the lists so CheckInvariants can cross-check
  uint64_t next_registration_ = kNoRegistration + 1;
  int64_t prefix_queries_tokens_ = 0;
  int64_t prefix_hit_tokens_ = 0;
};

}  // namespace tandem
