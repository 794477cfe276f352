// GgufWeightSource: a llama-architecture GGUF file as a WeightSource with Hugging Face names and
// shapes. Tensors are dequantized on Get() (matrices to bf16 or f32, 1-D tensors to f32), and the
// rows of Q and K projections are put back in Hugging Face order (llama.cpp's converter
// interleaves the two rotary halves of every head: `permute(w, n_head)` in convert_hf_to_gguf.py).
//
//   token_embd.weight        -> model.embed_tokens.weight
//   blk.N.attn_norm.weight   -> model.layers.N.input_layernorm.weight
//   blk.N.attn_{q,k,v,output}.{weight,bias} -> model.layers.N.self_attn.{q,k,v,o}_proj.*
//   blk.N.ffn_norm.weight    -> model.layers.N.post_attention_layernorm.weight
//   blk.N.ffn_{gate,up,down}.{weight,bias}  -> model.layers.N.mlp.{gate,up,down}_proj.*
//   output_norm.weight       -> model.norm.weight
//   output.weight            -> lm_head.weight (absent when the embeddings are tied)
//
// Immutable after Open(); Get() may be called from several threads. Each Get() dequantizes anew
// (callers fetch each tensor once, to upload it); views of tensors stored in the requested dtype
// point into the mapping and keep the file alive.
#pragma once

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "model/gguf_file.h"
#include "model/model_config.h"
#include "model/weight_source.h"

namespace tandem {

struct GgufWeightSourceOptions {
  DType matrix_dtype = DType::kBF16;  // dtype of tensors with 2+ dims: kBF16 or kF32
  int num_threads = 1;                // dequantization threads per Get()
};

class GgufWeightSource final : public WeightSource {
 public:
  // Opens `path` and maps its tensors. Errors: those of GgufFile::Open and ModelConfigFromGguf, a
  // tensor whose ggml type cannot be dequantized, Q/K rows not divisible into heads.
  static StatusOr<std::unique_ptr<GgufWeightSource>> Open(const std::filesystem::path& path,
                                                          GgufWeightSourceOptions options = {});
  static StatusOr<std::unique_ptr<GgufWeightSource>> Create(std::shared_ptr<const GgufFile> file,
                                                            GgufWeightSourceOptions options = {});

  StatusOr<HostTensor> Get(std::string_view name) const override;
  bool Contains(std::string_view name) const override;
  std::vector<std::string> TensorNames() const override;
  std::string Describe() const override;

  const GgufFile& file() const { return *file_; }
  const ModelConfig& config() const { return config_; }

  // The Hugging Face name of a llama GGUF tensor name, nullopt for names outside the mapping.
  static std::optional<std::string> HfName(std::string_view gguf_name);

 private:
  struct Entry {
    const GgufTensorInfo* info = nullptr;
    int64_t rope_heads = 0;  // > 0: undo the converter's rotary permutation with this many heads
  };

  GgufWeightSource() = default;

  std::shared_ptr<const GgufFile> file_;
  GgufWeightSourceOptions options_;
  ModelConfig config_;
  std::vector<std::string> names_;  // HF names in file order
  std::unordered_map<std::string, Entry> entries_;
};

// Row order that undoes llama.cpp's `permute(w, n_head)` for a [n_rows, ...] Q or K tensor:
// output row h*hd + i*hd/2 + j is GGUF row h*hd + 2*j + i (hd = n_rows / n_heads). Requires
// n_rows % (2 * n_heads) == 0.
std::vector<int64_t> UnpermuteRopeRows(int64_t n_rows, int64_t n_heads);

}  // namespace tandem
