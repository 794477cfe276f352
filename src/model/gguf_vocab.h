// VocabSpec (the tokenizer as plain data) from GGUF metadata: tokenizer.ggml.* and
// tokenizer.chat_template.
#pragma once

#include "model/gguf_file.h"
#include "tandem/status.h"
#include "tokenizer/vocab_spec.h"

namespace tandem {

// `tokenizer.ggml.model` must be "gpt2" (byte-level BPE; merges required) or "llama"; token types
// and scores, when present, must have one entry per token; bos/eos/eot ids must index the token
// list (out-of-range unknown/padding ids are dropped with a warning). Errors name the file and key.
StatusOr<VocabSpec> VocabSpecFromGguf(const GgufFile& file);

}  // namespace tandem
