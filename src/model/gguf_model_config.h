// ModelConfig from GGUF metadata (llama architecture).
#pragma once

#include "model/gguf_file.h"
#include "model/gguf_vocab.h"  // VocabSpecFromGguf lived here first; callers may still expect it
#include "model/model_config.h"
#include "tandem/status.h"

namespace tandem {

// Reads `llama.*` hyper-parameters, bos/eos from `tokenizer.ggml.*_token_id`, and ties the
// embeddings when `output.weight` is absent. `dtype` is BF16 (what GgufWeightSource produces for
// matrices by default). Errors name the file and the key: an architecture other than "llama",
// missing or out-of-range fields, inconsistent head counts, llama3 rope factors (`rope_freqs.weight`,
// not supported yet), a rope dimension other than head_dim.
StatusOr<ModelConfig> ModelConfigFromGguf(const GgufFile& file);

}  // namespace tandem
