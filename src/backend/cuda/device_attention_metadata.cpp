#include "backend/cuda/device_attention_metadata.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "tandem/check.h"

namespace tandem {
namespace {

size_t AlignUp(size_t n) { return (n + 15) / 16 * 16; }

template <typename T>
bool SameBytes(const std::byte* base, size_t offset, std::span<const T> span, size_t count) {
  return span.size() >= count &&
         (count == 0 || std::memcmp(base + offset, span.data(), count * sizeof(T)) == 0);
}

}  // namespace

bool DeviceAttentionMetadata::Matches(const AttentionMetadata& meta, int32_t tile_tokens,
                                      int64_t num_blocks) const {
  if (!valid_ || meta.num_seqs != num_seqs_ || meta.num_tokens != num_tokens_ ||
      meta.max_blocks_per_seq != max_blocks_per_seq_ || meta.block_size != block_size_ ||
      tile_tokens != tile_tokens_ || num_blocks != num_blocks_) {
    return false;
  }
  const std::byte* h = upload_.host();
  const size_t s = static_cast<size_t>(num_seqs_), t = static_cast<size_t>(num_tokens_);
  return SameBytes(h, slots_off_, meta.slot_mapping, t) && SameBytes(h, positions_off_, meta.positions, t) &&
         SameBytes(h, tables_off_, meta.block_tables, s * static_cast<size_t>(max_blocks_per_seq_)) &&
         SameBytes(h, query_start_off_, meta.query_start, s + 1) &&
         SameBytes(h, context_lens_off_, meta.context_lens, s);
}

Status ValidateAttentionMetadata(const AttentionMetadata& m, int64_t num_blocks) {
  const size_t s = static_cast<size_t>(std::max(m.num_seqs, 0));
  const size_t t = static_cast<size_t>(std::max(m.num_tokens, 0));
  if (m.num_seqs < 0 || m.num_tokens < 0 || m.block_size <= 0 || m.max_blocks_per_seq < 0) {
    return InvalidArgumentError("attention metadata: negative counts or block_size <= 0");
  }
  if (m.query_start.size() < s + 1 || m.context_lens.size() < s || m.positions.size() < t ||
      m.slot_mapping.size() < t || m.block_tables.size() < s * static_cast<size_t>(m.max_blocks_per_seq)) {
    return InvalidArgumentError("attention metadata: a span is shorter than num_seqs/num_tokens require");
  }
  if (m.query_start[0] != 0 || m.query_start[s] != m.num_tokens) {
    return InvalidArgumentError("attention metadata: query_start must run from 0 to num_tokens");
  }
  const int64_t num_slots = num_blocks * m.block_size;
  for (size_t i = 0; i < s; ++i) {
    const int32_t begin = m.query_start[i], end = m.query_start[i + 1];
    const int32_t ctx = m.context_lens[i];
    if (end < begin) return InvalidArgumentError("attention metadata: query_start decreases");
    if (ctx < 0 || static_cast<int64_t>(ctx) > static_cast<int64_t>(m.max_blocks_per_seq) * m.block_size) {
      return OutOfRangeError("attention metadata: sequence " + std::to_string(i) + " has context " +
                             std::to_string(ctx) + " beyond its block table");
    }
    for (int32_t tok = begin; tok < end; ++tok) {
      const int32_t pos = m.positions[tok];
      if (pos < 0 || pos >= ctx) {
        return OutOfRangeError("attention metadata: token " + std::to_string(tok) + " at position " +
                               std::to_string(pos) + " outside its context of " + std::to_string(ctx));
      }
      const int64_t slot = m.slot_mapping[tok];
      if (slot >= num_slots) {
        return OutOfRangeError("attention metadata: slot " + std::to_string(slot) + " beyond the cache's " +
                               std::to_string(num_slots) + " slots");
      }
    }
    const int32_t used_blocks = (ctx + m.block_size - 1) / m.block_size;
    const int32_t* row = m.block_tables.data() + i * static_cast<size_t>(m.max_blocks_per_seq);
    for (int32_t b = 0; b < used_blocks; ++b) {
      if (row[b] < 0 || row[b] >= num_blocks) {
        return OutOfRangeError("attention metadata: block id " + std::to_string(row[b]) +
                               " outside the cache's " + std::to_string(num_blocks) + " blocks");
      }
    }
  }
  return OkStatus();
}

StatusOr<DeviceAttentionView> DeviceAttentionMetadata::Prepare(const AttentionMetadata& meta,
                                                               int32_t tile_tokens, int64_t num_blocks) {
  TANDEM_CHECK_GE(tile_tokens, 1);
  if (Matches(meta, tile_tokens, num_blocks)) return view_;
  valid_ = false;
  TANDEM_RETURN_IF_ERROR(ValidateAttentionMetadata(meta, num_blocks));

  const size_t s = static_cast<size_t>(meta.num_seqs), t = static_cast<size_t>(meta.num_tokens);
  const size_t tables = s * static_cast<size_t>(meta.max_blocks_per_seq);
  size_t num_items = 0;
  for (size_t i = 0; i < s; ++i) {
    const int32_t len = meta.query_start[i + 1] - meta.query_start[i];
    num_items += static_cast<size_t>((len + tile_tokens - 1) / tile_tokens);
  }
  size_t off = 0;
  slots_off_ = off;        off = AlignUp(off + t * sizeof(int64_t));
  positions_off_ = off;    off = AlignUp(off + t * sizeof(int32_t));
  tables_off_ = off;       off = AlignUp(off + tables * sizeof(int32_t));
  query_start_off_ = off;  off = AlignUp(off + (s + 1) * sizeof(int32_t));
  context_lens_off_ = off; off = AlignUp(off + s * sizeof(int32_t));
  work_off_ = off;         off = AlignUp(off + 3 * num_items * sizeof(int32_t));

  TANDEM_ASSIGN_OR_RETURN(std::byte * h, upload_.BeginWrite(off));
  auto put = [&](size_t offset, const void* src, size_t bytes) {
    if (bytes > 0) std::memcpy(h + offset, src, bytes);
  };
  put(slots_off_, meta.slot_mapping.data(), t * sizeof(int64_t));
  put(positions_off_, meta.positions.data(), t * sizeof(int32_t));
  put(tables_off_, meta.block_tables.data(), tables * sizeof(int32_t));
  put(query_start_off_, meta.query_start.data(), (s + 1) * sizeof(int32_t));
  put(context_lens_off_, meta.context_lens.data(), s * sizeof(int32_t));
  int32_t* work = reinterpret_cast<int32_t*>(h + work_off_);
  size_t item = 0;
  for (size_t i = 0; i < s; ++i) {
    for (int32_t tok = meta.query_start[i]; tok < meta.query_start[i + 1]; tok += tile_tokens) {
      work[3 * item] = static_cast<int32_t>(i);
      work[3 * item + 1] = tok;
      work[3 * item + 2] = std::min(tile_tokens, meta.query_start[i + 1] - tok);
      ++item;
    }
  }
  TANDEM_RETURN_IF_ERROR(upload_.Commit(off));

  int32_t max_position = -1;
  for (size_t i = 0; i < t; ++i) max_position = std::max(max_position, meta.positions[i]);
  const std::byte* d = static_cast<const std::byte*>(upload_.device());
  view_.slot_mapping = reinterpret_cast<const int64_t*>(d + slots_off_);
  view_.positions = reinterpret_cast<const int32_t*>(d + positions_off_);
  view_.block_tables = reinterpret_cast<const int32_t*>(d + tables_off_);
  view_.work_items = reinterpret_cast<const int32_t*>(d + work_off_);
  view_.num_work_items = static_cast<int32_t>(num_items);
  view_.max_position = max_position;
  num_seqs_ = meta.num_seqs;
  num_tokens_ = meta.num_tokens;
  max_blocks_per_seq_ = meta.max_blocks_per_seq;
  block_size_ = meta.block_size;
  tile_tokens_ = tile_tokens;
  num_blocks_ = num_blocks;
  valid_ = true;
  return view_;
}

}  // namespace tandem
