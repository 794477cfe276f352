#include "model/gguf_weight_source.h"

#include <charconv>
#include <cstring>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "model/gguf_dequant.h"
#include "model/gguf_model_config.h"
#include "tandem/check.h"

namespace tandem {
namespace {

struct NameRule {
  std::string_view gguf;  // suffix after "blk.N."
  std::string_view hf;    // suffix after "model.layers.N."
};

constexpr NameRule kLayerRules[] = {
    {"attn_norm.weight", "input_layernorm.weight"},
    {"attn_q.weight", "self_attn.q_proj.weight"},
    {"attn_q.bias", "self_attn.q_proj.bias"},
    {"attn_k.weight", "self_attn.k_proj.weight"},
    {"attn_k.bias", "self_attn.k_proj.bias"},
    {"attn_v.weight", "self_attn.v_proj.weight"},
    {"attn_v.bias", "self_attn.v_proj.bias"},
    {"attn_output.weight", "self_attn.o_proj.weight"},
    {"attn_output.bias", "self_attn.o_proj.bias"},
    {"ffn_norm.weight", "post_attention_layernorm.weight"},
    {"ffn_gate.weight", "mlp.gate_proj.weight"},
    {"ffn_gate.bias", "mlp.gate_proj.bias"},
    {"ffn_up.weight", "mlp.up_proj.weight"},
    {"ffn_up.bias", "mlp.up_proj.bias"},
    {"ffn_down.weight", "mlp.down_proj.weight"},
    {"ffn_down.bias", "mlp.down_proj.bias"},
};

bool StartsWith(std::string_view s, std::string_view prefix) {
  return s.substr(0, prefix.size()) == prefix;
}

}  // namespace

std::vector<int64_t> UnpermuteRopeRows(int64_t n_rows, int64_t n_heads) {
  TANDEM_CHECK(n_heads > 0 && n_rows % (2 * n_heads) == 0) << n_rows << " rows, " << n_heads;
  const int64_t head_dim = n_rows / n_heads;
  const int64_t half = head_dim / 2;
  std::vector<int64_t> order(static_cast<size_t>(n_rows));
  for (int64_t h = 0; h < n_heads; ++h) {
    for (int64_t i = 0; i < 2; ++i) {
      for (int64_t j = 0; j < half; ++j) {
        order[static_cast<size_t>(h * head_dim + i * half + j)] = h * head_dim + 2 * j + i;
      }
    }
  }
  return order;
}

std::optional<std::string> GgufWeightSource::HfName(std::string_view g) {
  if (g == "token_embd.weight") return "model.embed_tokens.weight";
  if (g == "output_norm.weight") return "model.norm.weight";
  if (g == "output.weight") return "lm_head.weight";
  if (!StartsWith(g, "blk.")) return std::nullopt;
  std::string_view rest = g.substr(4);
  const size_t dot = rest.find('.');
  if (dot == std::string_view::npos || dot == 0) return std::nullopt;
  int64_t layer = -1;
  const auto [ptr, ec] = std::from_chars(rest.data(), rest.data() + dot, layer);
  if (ec != std::errc() || ptr != rest.data() + dot || layer < 0) return std::nullopt;
  const std::string_view suffix = rest.substr(dot + 1);
  for (const NameRule& rule : kLayerRules) {
    if (suffix == rule.gguf) return fmt::format("model.layers.{}.{}", layer, rule.hf);
  }
  return std::nullopt;
}

StatusOr<std::unique_ptr<GgufWeightSource>> GgufWeightSource::Open(
    const std::filesystem::path& path, GgufWeightSourceOptions options) {
  TANDEM_ASSIGN_OR_RETURN(std::shared_ptr<const GgufFile> file, GgufFile::Open(path));
  return Create(std::move(file), options);
}

StatusOr<std::unique_ptr<GgufWeightSource>> GgufWeightSource::Create(
    std::shared_ptr<const GgufFile> file, GgufWeightSourceOptions options) {
  TANDEM_CHECK(file != nullptr);
  if (options.matrix_dtype != DType::kBF16 && options.matrix_dtype != DType::kF32) {
    return InvalidArgumentError(fmt::format("GGUF matrix dtype must be BF16 or F32, got {}",
                                            DTypeName(options.matrix_dtype)));
  }
  std::unique_ptr<GgufWeightSource> source(new GgufWeightSource());
  TANDEM_ASSIGN_OR_RETURN(source->config_, ModelConfigFromGguf(*file));
  source->options_ = options;
  const std::string where = file->path().string();
  for (const GgufTensorInfo& info : file->tensors()) {
    std::optional<std::string> hf = HfName(info.name);
    if (!hf) {
      spdlog::warn("{}: ignoring tensor '{}' (not part of the llama mapping)", where, info.name);
      continue;
    }
    const GgmlTypeTraits& traits = GetGgmlTypeTraits(info.type);
    if (!traits.dequantizable) {
      return UnimplementedError(fmt::format(
          "{}: tensor '{}' is {}, which Tandem cannot dequantize (supported: F32, F16, BF16, "
          "Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q6_K)", where, info.name, traits.name));
    }
    Entry entry{&info, 0};
    const bool is_q = info.name.find(".attn_q.") != std::string::npos;
    const bool is_k = info.name.find(".attn_k.") != std::string::npos;
    if (is_q || is_k) {
      entry.rope_heads = is_q ? source->config_.num_heads : source->config_.num_kv_heads;
      const int64_t rows = info.ne.size() == 1 ? info.ne[0] : info.shape()[0];
      if (rows % (2 * entry.rope_heads) != 0) {
        return InvalidArgumentError(fmt::format(
            "{}: tensor '{}' has {} rows, not divisible into {} heads of even size", where,
            info.name, rows, entry.rope_heads));
      }
      if (info.ne.size() == 1 && traits.block_size != 1) {
        return UnimplementedError(fmt::format("{}: quantized 1-D tensor '{}' ({}) is not supported",
                                              where, info.name, traits.name));
      }
      if (info.ne.size() > 2) {
        return InvalidArgumentError(fmt::format("{}: tensor '{}' has {} dimensions, expected 2",
                                                where, info.name, info.ne.size()));
      }
    }
    source->names_.push_back(*hf);
    source->entries_.emplace(std::move(*hf), entry);
  }
  source->file_ = std::move(file);
  return source;
}

StatusOr<HostTensor> GgufWeightSource::Get(std::string_view name) const {
  auto it = entries_.find(std::string(name));
  if (it == entries_.end()) {
    return NotFoundError(fmt::format("tensor '{}' is not in {}", name, Describe()));
  }
  const GgufTensorInfo& info = *it->second.info;
  const int64_t rope_heads = it->second.rope_heads;
  HostTensor t;
  t.name = std::string(name);
  t.source = file_->path().string();
  t.shape = info.shape();
  t.dtype = info.ne.size() == 1 ? DType::kF32 : options_.matrix_dtype;
  const std::span<const std::byte> src = file_->TensorData(info);

  const bool same_dtype = (info.type == GgmlType::kF32 && t.dtype == DType::kF32) ||
                          (info.type == GgmlType::kBF16 && t.dtype == DType::kBF16);
  if (same_dtype && rope_heads == 0) {  // zero-copy view into the mapping
    t.data = src.data();
    t.keepalive = file_;
    return t;
  }

  DequantizeParams p;
  p.type = info.type;
  p.src = src;
  if (info.ne.size() == 1 && rope_heads > 0) {
    p.n_rows = info.ne[0];  // a permuted bias: one element per row (plain types only)
    p.n_cols = 1;
  } else {
    p.n_cols = info.ne[0];
    p.n_rows = p.n_cols == 0 ? 0 : info.numel() / p.n_cols;
  }
  std::vector<int64_t> order;
  if (rope_heads > 0) order = UnpermuteRopeRows(p.n_rows, rope_heads);
  p.row_order = order;
  p.out_dtype = t.dtype;
  p.num_threads = options_.num_threads;
  auto buffer = std::make_shared<std::vector<std::byte>>(t.nbytes());
  p.dst = *buffer;
  Status s = Dequantize(p);
  if (!s.ok()) return s.WithContext(fmt::format("{}: tensor '{}'", t.source, info.name));
  t.data = buffer->data();
  t.keepalive = std::move(buffer);
  return t;
}

bool GgufWeightSource::Contains(std::string_view name) const {
  return entries_.count(std::string(name)) != 0;
}

std::vector<std::string> GgufWeightSource::TensorNames() const { return names_; }

std::string GgufWeightSource::Describe() const {
  return fmt::format("{} (GGUF v{}, {} tensors)", file_->path().string(), file_->version(),
                     names_.size());
}

}  // namespace tandem
