// IncrementalDecoder: streaming detokenization for one sequence. Step(id) returns the text that
// became final with that id (possibly empty); Flush() returns the rest. It never emits an
// incomplete UTF-8 sequence, and concat(Step(ids)...) + Flush() == Tokenizer::Decode(ids).
// Borrows the Tokenizer (which must outlive it); one thread at a time.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "tokenizer/decoder.h"
#include "tokenizer/tokenizer.h"

namespace tandem {

class IncrementalDecoder {
 public:
  explicit IncrementalDecoder(const Tokenizer& tokenizer, bool skip_special_tokens = false);

  std::string Step(int32_t id);
  std::string Flush();

 private:
  const Tokenizer& tokenizer_;
  bool skip_special_tokens_;
  std::unique_ptr<DecodeStream> stream_;
};

}  // namespace tandem
