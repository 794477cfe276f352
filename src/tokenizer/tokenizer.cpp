#include "tokenizer/tokenizer.h"

#include "tokenizer/bpe_model.h"
#include "tokenizer/decoder.h"
#include "tokenizer/normalizer.h"
#include "tokenizer/pre_tokenizer.h"

namespace tandem {

struct EncodeScratch {
  PreTokenizeScratch pre;
  std::vector<std::string> words;
  std::vector<TextSegment> segments;
  std::vector<TextSegment> sub_segments;
};

Tokenizer::Tokenizer() = default;
Tokenizer::~Tokenizer() = default;

void Tokenizer::Finish() {
  int32_t size = model_->size();
  for (const AddedToken& t : added_->tokens()) size = std::max(size, t.id + 1);
  vocab_size_ = size;
  id_to_token_.assign(size, nullptr);
  special_.assign(size, 0);
  for (int32_t id = 0; id < model_->size(); ++id) {
    if (!model_->IdToToken(id).empty()) id_to_token_[id] = &model_->IdToToken(id);
  }
  for (const AddedToken& t : added_->tokens()) {
    if (t.id < 0) continue;
    id_to_token_[t.id] = &t.content;
  }
  // HF skips by content: any id whose string is a special token's content.
  for (const AddedToken& t : added_->tokens()) {
    if (!t.special) continue;
    special_[t.id] = 1;
    if (auto id = model_->TokenToId(t.content)) special_[*id] = 1;
  }
}

void Tokenizer::EncodeText(std::string_view text, bool at_start, EncodeScratch* scratch,
                           std::vector<int32_t>* ids) const {
  if (text.empty()) return;
  if (!pre_tokenizer_) {
    model_->Encode(text, ids);
    return;
  }
  scratch->words.clear();
  pre_tokenizer_->Run(text, at_start, &scratch->pre, &scratch->words);
  for (const std::string& w : scratch->words) model_->Encode(w, ids);
}

std::vector<int32_t> Tokenizer::Encode(std::string_view text, const EncodeOptions& options) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  if (options.add_special_tokens) ids.insert(ids.end(), prefix_ids_.begin(), prefix_ids_.end());
  EncodeScratch scratch;
  added_->SplitRaw(text, options.parse_special, &scratch.segments);
  for (const TextSegment& seg : scratch.segments) {
    if (seg.token_id >= 0) {
      ids.push_back(seg.token_id);
      continue;
    }
    std::string_view piece = text.substr(seg.begin, seg.end - seg.begin);
    if (piece.empty()) continue;
    std::string normalized;
    if (normalizer_) {
      normalized = normalizer_->Apply(piece);
      piece = normalized;
    }
    if (!added_->has_normalized()) {
      EncodeText(piece, seg.begin == 0, &scratch, &ids);
      continue;
    }
    scratch.sub_segments.clear();
    added_->SplitNormalized(piece, options.parse_special, &scratch.sub_segments);
    for (const TextSegment& sub : scratch.sub_segments) {
      if (sub.token_id >= 0) {
        ids.push_back(sub.token_id);
      } else {
        EncodeText(piece.substr(sub.begin, sub.end - sub.begin), seg.begin == 0 && sub.begin == 0,
                   &scratch, &ids);
      }
    }
  }
  if (options.add_special_tokens) ids.insert(ids.end(), suffix_ids_.begin(), suffix_ids_.end());
  return ids;
}

const std::string* Tokenizer::DecoderToken(int32_t id, bool skip_special_tokens) const {
  if (id < 0 || id >= vocab_size_) return nullptr;
  if (skip_special_tokens && special_[id]) return nullptr;
  return id_to_token_[id];
}

std::string Tokenizer::Decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  auto stream = decoder_->NewStream();
  std::string out;
  for (int32_t id : ids) {
    if (const std::string* token = DecoderToken(id, skip_special_tokens)) stream->Push(*token, &out);
  }
  stream->Flush(&out);
  return out;
}

std::optional<int32_t> Tokenizer::TokenToId(std::string_view token) const {
  for (const AddedToken& t : added_->tokens()) {
    if (t.content == token) return t.id;
  }
  return model_->TokenToId(token);
}

std::optional<std::string> Tokenizer::IdToToken(int32_t id) const {
  if (id < 0 || id >= vocab_size_ || id_to_token_[id] == nullptr) return std::nullopt;
  return *id_to_token_[id];
}

bool Tokenizer::IsSpecial(int32_t id) const {
  return id >= 0 && id < vocab_size_ && special_[id] != 0;
}

}  // namespace tandem
