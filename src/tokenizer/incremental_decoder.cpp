#include "tokenizer/incremental_decoder.h"

namespace tandem {

IncrementalDecoder::IncrementalDecoder(const Tokenizer& tokenizer, bool skip_special_tokens)
    : tokenizer_(tokenizer),
      skip_special_tokens_(skip_special_tokens),
      stream_(tokenizer.decoder().NewStream()) {}

std::string IncrementalDecoder::Step(int32_t id) {
  std::string out;
  if (const std::string* token = tokenizer_.DecoderToken(id, skip_special_tokens_)) {
    stream_->Push(*token, &out);
  }
  return out;
}

std::string IncrementalDecoder::Flush() {
  std::string out;
  stream_->Flush(&out);
  return out;
}

}  // namespace tandem
