#include "model/llama_model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <unordered_map>

#include "common/half.h"
#include "model/rope.h"
#include "model/tensor_specs.h"

namespace tandem {
namespace {

enum ScratchSlot : size_t {
  kHidden,     // x: embeddings / sub-layer output [T, H]
  kResidual,   // residual stream [T, H]
  kNormed,     // normalized input to a sub-layer [T, H]
  kQkv,        // fused q|k|v projection [T, q_dim + 2 kv_dim]
  kQ,          // rotated q [T, q_dim]
  kAttnOut,
  kGateUp,     // fused gate|up projection [T, 2 I]
  kAct,
  kRows,       // gathered final hidden rows [R, H]
  kLogits,     // [R, V]
  kNumSlots,
};

bool IsFloatDType(DType d) { return d == DType::kF32 || d == DType::kBF16 || d == DType::kF16; }

}  // namespace

StatusOr<std::unique_ptr<LlamaModel>> LlamaModel::Load(const ModelConfig& config,
                                                       const WeightSource& weights,
                                                       Backend& backend, int64_t max_positions) {
  if (config.head_dim % 2 != 0) {
    return InvalidArgumentError("head_dim must be even for rotary embeddings, got " +
                                std::to_string(config.head_dim));
  }
  if (max_positions <= 0) return InvalidArgumentError("max_positions must be positive");
  auto model = std::unique_ptr<LlamaModel>(new LlamaModel(config, backend));
  model->max_positions_ = max_positions;
  model->attention_params_.num_heads = static_cast<int32_t>(config.num_heads);
  model->attention_params_.num_kv_heads = static_cast<int32_t>(config.num_kv_heads);
  model->attention_params_.head_dim = static_cast<int32_t>(config.head_dim);
  model->attention_params_.scale = 1.0f / std::sqrt(static_cast<float>(config.head_dim));
  model->attention_params_.sliding_window =
      config.sliding_window ? static_cast<int32_t>(*config.sliding_window) : 0;
  // Before any upload: an attention shape the backend cannot run is a load-time error.
  TANDEM_RETURN_IF_ERROR(backend.CheckSupported(model->attention_params_)
                             .WithContext(std::string(ModelArchName(config.arch)) + " model"));
  TANDEM_RETURN_IF_ERROR(model->UploadAll(weights));

  // RoPE tables, computed on the host once.
  const RopeFrequencies freqs = ComputeRopeFrequencies(config);
  std::vector<float> cos, sin;
  ComputeRopeTables(freqs, max_positions, &cos, &sin);
  const int64_t half = freqs.rotary_dim / 2;
  for (auto* table : {&model->rope_.cos, &model->rope_.sin}) {
    *table = Tensor(nullptr, DType::kF32, {max_positions, half});
    TANDEM_ASSIGN_OR_RETURN(auto buffer, backend.Allocate(table->nbytes()));
    table->data = buffer->data();
    model->rope_storage_.push_back(std::move(buffer));
  }
  TANDEM_RETURN_IF_ERROR(backend.CopyToDevice(cos.data(), model->rope_.cos));
  TANDEM_RETURN_IF_ERROR(backend.CopyToDevice(sin.data(), model->rope_.sin));
  model->rope_.rotary_dim = freqs.rotary_dim;

  model->scratch_.resize(kNumSlots);
  return model;
}

namespace {

// The rows of `parts` (each [rows_i, cols...], same trailing dims) stacked into one host tensor
// that owns its bytes: in their common dtype, or f32 when they differ (exact for f16/bf16).
HostTensor ConcatRows(const std::vector<HostTensor>& parts, const std::string& name) {
  HostTensor out;
  out.name = name;
  out.source = parts[0].source;
  out.dtype = parts[0].dtype;
  for (const HostTensor& t : parts) {
    if (t.dtype != out.dtype) out.dtype = DType::kF32;
  }
  out.shape = parts[0].shape;
  out.shape[0] = 0;
  for (const HostTensor& t : parts) out.shape[0] += t.shape[0];
  auto bytes = std::shared_ptr<std::byte[]>(new std::byte[out.nbytes()]);
  std::byte* dst = bytes.get();
  for (const HostTensor& t : parts) {
    if (t.dtype == out.dtype) {
      std::memcpy(dst, t.data, t.nbytes());
      dst += t.nbytes();
      continue;
    }
    float* f = reinterpret_cast<float*>(dst);
    const auto* h = reinterpret_cast<const uint16_t*>(t.data);
    for (int64_t i = 0; i < t.numel(); ++i) {
      switch (t.dtype) {
        case DType::kF32: f[i] = reinterpret_cast<const float*>(t.data)[i]; break;
        case DType::kBF16: f[i] = Bf16ToF32(h[i]); break;
        default: f[i] = F16ToF32(h[i]); break;
      }
    }
    dst += static_cast<size_t>(t.numel()) * sizeof(float);
  }
  out.data = bytes.get();
  out.keepalive = std::shared_ptr<const void>(bytes, bytes.get());
  return out;
}

}  // namespace

StatusOr<HostTensor> LlamaModel::GetChecked(const WeightSource& weights, const ExpectedTensor& spec) const {
  auto host = weights.Get(spec.name);
  if (!host.ok()) {
    return host.status().WithContext("loading " + weights.Describe());
  }
  if (host->shape != spec.shape) {
    std::string got, want;
    for (int64_t d : host->shape) got += (got.empty() ? "" : ", ") + std::to_string(d);
    for (int64_t d : spec.shape) want += (want.empty() ? "" : ", ") + std::to_string(d);
    return InvalidArgumentError(host->source + ": tensor " + spec.name + " has shape [" + got +
                                "], the config requires [" + want + "]");
  }
  if (!IsFloatDType(host->dtype)) {
    return InvalidArgumentError(host->source + ": tensor " + spec.name + " has dtype " +
                                std::string(DTypeName(host->dtype)) +
                                "; weights must be F32, BF16 or F16");
  }
  return host;
}

StatusOr<Tensor> LlamaModel::Upload(const HostTensor& host) {
  std::unique_ptr<DeviceBuffer> storage;
  TANDEM_ASSIGN_OR_RETURN(Tensor t, backend_.UploadWeight(host, &storage));
  if (storage) {
    weight_storage_.push_back(std::move(storage));
  } else if (host.keepalive) {
    // A zero-copy backend reads the host bytes in place: keep them alive with the model.
    host_keepalive_.push_back(host.keepalive);
  }
  return t;
}

Status LlamaModel::UploadAll(const WeightSource& weights) {
  // Projections that read the same input are fused into one weight (rows stacked): q|k|v and
  // gate|up, biases likewise. Their parts are only read on the host, never uploaded alone.
  const std::vector<std::pair<std::string, std::vector<std::string>>> fusions = {
      {"self_attn.qkv_proj", {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"}},
      {"mlp.gate_up_proj", {"mlp.gate_proj", "mlp.up_proj"}},
  };
  std::unordered_map<std::string, const ExpectedTensor*> fused_parts;  // part name -> spec
  std::unordered_map<std::string, Tensor> uploaded;
  const std::vector<ExpectedTensor> specs = LlamaFamilyTensorSpecs(config_);
  for (const ExpectedTensor& spec : specs) {
    bool is_part = false;
    for (const auto& [fused, parts] : fusions) {
      for (const std::string& part : parts) {
        is_part = is_part || spec.name.find("." + part + ".") != std::string::npos;
      }
    }
    if (is_part) {
      fused_parts[spec.name] = &spec;
      continue;
    }
    TANDEM_ASSIGN_OR_RETURN(HostTensor host, GetChecked(weights, spec));
    TANDEM_ASSIGN_OR_RETURN(uploaded[spec.name], Upload(host));
  }
  // One layer and one fused tensor at a time, so at most one fused host copy is alive at once
  // (beyond the zero-copy backend's, which the model keeps).
  for (int64_t l = 0; l < config_.num_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    for (const auto& [fused, parts] : fusions) {
      for (const char* suffix : {".weight", ".bias"}) {
        std::vector<HostTensor> hosts;
        for (const std::string& part : parts) {
          auto it = fused_parts.find(p + part + suffix);
          if (it == fused_parts.end()) continue;
          TANDEM_ASSIGN_OR_RETURN(HostTensor host, GetChecked(weights, *it->second));
          hosts.push_back(std::move(host));
        }
        if (hosts.empty()) continue;
        if (hosts.size() != parts.size()) {
          return InvalidArgumentError(weights.Describe() + ": layer " + std::to_string(l) + " has " +
                                      std::string(suffix + 1) + " for only some of " + fused);
        }
        TANDEM_ASSIGN_OR_RETURN(uploaded[p + fused + suffix], Upload(ConcatRows(hosts, p + fused + suffix)));
      }
    }
  }
  auto get = [&](const std::string& name) {
    auto it = uploaded.find(name);
    return it == uploaded.end() ? Tensor() : it->second;
  };
  embed_tokens_ = get("model.embed_tokens.weight");
  final_norm_ = get("model.norm.weight");
  lm_head_ = config_.tie_word_embeddings ? embed_tokens_ : get("lm_head.weight");
  layers_.resize(config_.num_layers);
  for (int64_t l = 0; l < config_.num_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    LayerWeights& w = layers_[l];
    w.input_norm = get(p + "input_layernorm.weight");
    w.post_norm = get(p + "post_attention_layernorm.weight");
    w.qkv = get(p + "self_attn.qkv_proj.weight");
    w.qkv_bias = get(p + "self_attn.qkv_proj.bias");
    w.o = get(p + "self_attn.o_proj.weight");
    w.o_bias = get(p + "self_attn.o_proj.bias");
    w.gate_up = get(p + "mlp.gate_up_proj.weight");
    w.gate_up_bias = get(p + "mlp.gate_up_proj.bias");
    w.down = get(p + "mlp.down_proj.weight");
    w.down_bias = get(p + "mlp.down_proj.bias");
  }
  return OkStatus();
}

StatusOr<Tensor> LlamaModel::Scratch(size_t slot, DType dtype, std::initializer_list<int64_t> dims) {
  Tensor t(nullptr, dtype, dims);
  auto& buffer = scratch_[slot];
  if (!buffer || buffer->size() < t.nbytes()) {
    // Grow with headroom so a slowly growing batch does not reallocate every step. Recorded
    // graphs read the old address: they go.
    TANDEM_ASSIGN_OR_RETURN(buffer, backend_.Allocate(t.nbytes() + t.nbytes() / 2));
    if (graphs_enabled_) backend_.ClearDecodeGraphs();
  }
  t.data = buffer->data();
  return t;
}

Status LlamaModel::ReserveWorkspace(int64_t max_tokens, int64_t max_rows) {
  const DType act = backend_.activation_dtype();
  const int64_t hidden = config_.hidden_size;
  const int64_t q_dim = config_.num_heads * config_.head_dim;
  const int64_t kv_dim = config_.num_kv_heads * config_.head_dim;
  const int64_t inter = config_.intermediate_size;
  const std::pair<size_t, Tensor> slots[] = {
      {kHidden, Tensor(nullptr, act, {max_tokens, hidden})},
      {kResidual, Tensor(nullptr, act, {max_tokens, hidden})},
      {kNormed, Tensor(nullptr, act, {max_tokens, hidden})},
      {kQkv, Tensor(nullptr, act, {max_tokens, q_dim + 2 * kv_dim})},
      {kQ, Tensor(nullptr, act, {max_tokens, q_dim})},
      // Also holds the final norm's output rows [R, H].
      {kAttnOut, Tensor(nullptr, act, {max_tokens, std::max(q_dim, hidden)})},
      {kGateUp, Tensor(nullptr, act, {max_tokens, 2 * inter})},
      {kAct, Tensor(nullptr, act, {max_tokens, inter})},
      {kRows, Tensor(nullptr, act, {max_rows, hidden})},
      {kLogits, Tensor(nullptr, DType::kF32, {max_rows, config_.vocab_size})},
  };
  reserved_tokens_ = std::max(reserved_tokens_, max_tokens);
  reserved_rows_ = std::max(reserved_rows_, max_rows);
  for (const auto& [slot, shape] : slots) {
    auto& buffer = scratch_[slot];
    if (!buffer || buffer->size() < shape.nbytes()) {
      TANDEM_ASSIGN_OR_RETURN(buffer, backend_.Allocate(shape.nbytes()));
      if (graphs_enabled_) backend_.ClearDecodeGraphs();
    }
  }
  return OkStatus();
}

Status LlamaModel::Forward(const ModelInput& input, const KvCache& cache,
                           std::vector<float>* logits) {
  TANDEM_ASSIGN_OR_RETURN(Tensor out, ForwardToBackend(input, cache));
  logits->resize(static_cast<size_t>(out.dim(0) * config_.vocab_size));
  if (out.dim(0) == 0) return OkStatus();
  return backend_.CopyToHost(out, logits->data());
}

StatusOr<Tensor> LlamaModel::ForwardToBackend(const ModelInput& input, const KvCache& cache) {
  const int64_t num_tokens = static_cast<int64_t>(input.token_ids.size());
  const int64_t num_rows = static_cast<int64_t>(input.logits_rows.size());
  TANDEM_CHECK_EQ(num_tokens, input.attention.num_tokens);
  if (!input.after_layer_kv && IsGraphableDecode(input)) return ForwardDecodeGraph(input, cache);
  const int64_t hidden = config_.hidden_size;
  const DType act = backend_.activation_dtype();
  const float eps = static_cast<float>(config_.rms_norm_eps);

  TANDEM_RETURN_IF_ERROR(RunLayers(input.token_ids, input.attention, cache, input.after_layer_kv));
  if (num_rows == 0) return Tensor(nullptr, DType::kF32, {0, config_.vocab_size});
  TANDEM_ASSIGN_OR_RETURN(Tensor x, Scratch(kHidden, act, {num_tokens, hidden}));
  TANDEM_ASSIGN_OR_RETURN(Tensor residual, Scratch(kResidual, act, {num_tokens, hidden}));
  // Only the rows that need logits go through the final norm and the LM head.
  TANDEM_ASSIGN_OR_RETURN(Tensor rows_x, Scratch(kRows, act, {num_rows, hidden}));
  TANDEM_ASSIGN_OR_RETURN(Tensor rows_res, Scratch(kNormed, act, {num_rows, hidden}));
  TANDEM_ASSIGN_OR_RETURN(Tensor out, Scratch(kLogits, DType::kF32, {num_rows, config_.vocab_size}));
  TANDEM_RETURN_IF_ERROR(backend_.GatherRows(residual, input.logits_rows, rows_res));
  if (FusedStep(num_tokens)) {
    // The residual stream is complete; num_rows <= num_tokens, so the LM head fuses too.
    TANDEM_RETURN_IF_ERROR(backend_.NormLinear(rows_res, final_norm_, eps, lm_head_, Tensor(), out));
    return out;
  }
  TANDEM_RETURN_IF_ERROR(backend_.GatherRows(x, input.logits_rows, rows_x));
  TANDEM_ASSIGN_OR_RETURN(Tensor rows_normed, Scratch(kAttnOut, act, {num_rows, hidden}));
  TANDEM_RETURN_IF_ERROR(backend_.RmsNorm(rows_x, rows_res, final_norm_, eps, rows_normed));
  TANDEM_RETURN_IF_ERROR(backend_.Linear(rows_normed, lm_head_, Tensor(), out));
  return out;
}

bool LlamaModel::FusedStep(int64_t num_tokens) const {
  const int64_t k_dims[] = {config_.hidden_size, config_.num_heads * config_.head_dim, config_.intermediate_size};
  return backend_.FusesSmallBatch(num_tokens, k_dims);
}

Status LlamaModel::RunLayers(std::span<const int32_t> token_ids, const AttentionMetadata& meta,
                             const KvCache& cache, const std::function<Status(int32_t)>& after_layer_kv) {
  const int64_t num_tokens = static_cast<int64_t>(token_ids.size());
  const int64_t hidden = config_.hidden_size;
  const int64_t q_dim = config_.num_heads * config_.head_dim;
  const int64_t kv_dim = config_.num_kv_heads * config_.head_dim;
  const int64_t inter = config_.intermediate_size;
  const DType act = backend_.activation_dtype();
  const float eps = static_cast<float>(config_.rms_norm_eps);

  TANDEM_ASSIGN_OR_RETURN(Tensor x, Scratch(kHidden, act, {num_tokens, hidden}));
  TANDEM_ASSIGN_OR_RETURN(Tensor residual, Scratch(kResidual, act, {num_tokens, hidden}));
  TANDEM_ASSIGN_OR_RETURN(Tensor normed, Scratch(kNormed, act, {num_tokens, hidden}));
  TANDEM_ASSIGN_OR_RETURN(Tensor qkv, Scratch(kQkv, act, {num_tokens, q_dim + 2 * kv_dim}));
  TANDEM_ASSIGN_OR_RETURN(Tensor q, Scratch(kQ, act, {num_tokens, q_dim}));
  TANDEM_ASSIGN_OR_RETURN(Tensor attn, Scratch(kAttnOut, act, {num_tokens, q_dim}));
  TANDEM_ASSIGN_OR_RETURN(Tensor gate_up, Scratch(kGateUp, act, {num_tokens, 2 * inter}));
  TANDEM_ASSIGN_OR_RETURN(Tensor mlp_act, Scratch(kAct, act, {num_tokens, inter}));

  // Fused (a few rows): the embeddings start the residual stream; each GEMV normalizes its input
  // or adds its output into the stream itself (Backend::FusesSmallBatch).
  const bool fused = FusedStep(num_tokens);
  TANDEM_RETURN_IF_ERROR(backend_.Embedding(token_ids, embed_tokens_, fused ? residual : x));
  for (int64_t l = 0; l < config_.num_layers; ++l) {
    const LayerWeights& w = layers_[l];
    // Attention block. The first layer starts the residual stream from the embeddings.
    if (fused) {
      TANDEM_RETURN_IF_ERROR(backend_.NormLinear(residual, w.input_norm, eps, w.qkv, w.qkv_bias, qkv));
    } else if (l == 0) {
      TANDEM_RETURN_IF_ERROR(backend_.Copy(x, residual));
      TANDEM_RETURN_IF_ERROR(backend_.RmsNorm(x, Tensor(), w.input_norm, eps, normed));
    } else {
      TANDEM_RETURN_IF_ERROR(backend_.RmsNorm(x, residual, w.input_norm, eps, normed));
    }
    if (!fused) TANDEM_RETURN_IF_ERROR(backend_.Linear(normed, w.qkv, w.qkv_bias, qkv));
    const KvLayerView kv = cache.layer(static_cast<int32_t>(l));
    if (after_layer_kv) {
      // The layer's K/V must be in the cache before the hook (it streams them out).
      TANDEM_RETURN_IF_ERROR(backend_.RopeAndWriteKv(qkv, q, rope_, attention_params_, meta, kv));
      TANDEM_RETURN_IF_ERROR(after_layer_kv(static_cast<int32_t>(l)));
      TANDEM_RETURN_IF_ERROR(backend_.Attention(q, kv, attention_params_, meta, attn));
    } else {
      TANDEM_RETURN_IF_ERROR(backend_.RopeWriteKvAttention(qkv, q, rope_, attention_params_, meta, kv, attn));
    }
    if (fused) {
      TANDEM_RETURN_IF_ERROR(backend_.LinearAddResidual(attn, w.o, w.o_bias, residual));
      TANDEM_RETURN_IF_ERROR(
          backend_.NormLinearSiluMul(residual, w.post_norm, eps, w.gate_up, w.gate_up_bias, mlp_act));
      TANDEM_RETURN_IF_ERROR(backend_.LinearAddResidual(mlp_act, w.down, w.down_bias, residual));
      continue;
    }
    TANDEM_RETURN_IF_ERROR(backend_.Linear(attn, w.o, w.o_bias, x));
    // MLP block.
    TANDEM_RETURN_IF_ERROR(backend_.RmsNorm(x, residual, w.post_norm, eps, normed));
    TANDEM_RETURN_IF_ERROR(backend_.Linear(normed, w.gate_up, w.gate_up_bias, gate_up));
    TANDEM_RETURN_IF_ERROR(backend_.SiluMul(gate_up, mlp_act));
    TANDEM_RETURN_IF_ERROR(backend_.Linear(mlp_act, w.down, w.down_bias, x));
  }
  return OkStatus();
}

// --- decode graphs ---------------------------------------------------------------------------------

namespace {

// Table widths are padded to a power of two (at least 16 blocks, at most the reservation): the
// graph key holds (width exponent, batch bucket).
constexpr int32_t kMinGraphTableWidth = 16;
constexpr int32_t kGraphKeyWidthShift = 20;

// The padded width for tables of `blocks` blocks, and its exponent (width = 16 << exponent, but
// for the last one, capped at max_blocks).
std::pair<int32_t, int32_t> PaddedTableWidth(int32_t blocks, int32_t max_blocks) {
  int32_t exponent = 0;
  while ((kMinGraphTableWidth << exponent) < blocks) ++exponent;
  return {std::min(kMinGraphTableWidth << exponent, max_blocks), exponent};
}

}  // namespace

std::vector<int32_t> LlamaModel::DecodeGraphBuckets(int32_t max_batch) {
  std::vector<int32_t> buckets;
  for (int32_t b : {1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256}) {
    if (b < max_batch) buckets.push_back(b);
  }
  for (int32_t b = 384; b < max_batch; b += 128) buckets.push_back(b);
  if (max_batch >= 1) buckets.push_back(max_batch);
  return buckets;
}

Status LlamaModel::EnableDecodeGraphs(const DecodeGraphOptions& options) {
  if (options.max_batch < 1 || options.block_size < 1) {
    return InvalidArgumentError("decode graphs need max_batch >= 1 and block_size >= 1");
  }
  if (options.max_batch > reserved_tokens_ || options.max_batch > reserved_rows_) {
    return InvalidArgumentError("decode graphs of up to " + std::to_string(options.max_batch) +
                                " sequences need a workspace reserved for as many tokens and rows (have " +
                                std::to_string(reserved_tokens_) + " tokens, " + std::to_string(reserved_rows_) +
                                " rows)");
  }
  if (!backend_.SupportsDecodeGraphs()) {
    return UnimplementedError(std::string(backend_.name()) + " backend: no decode graphs");
  }
  const int64_t max_blocks = (max_positions_ + options.block_size - 1) / options.block_size;
  if (max_blocks > (int64_t{1} << 24)) return InvalidArgumentError("decode graphs: max_positions too large");
  graph_max_blocks_ = static_cast<int32_t>(max_blocks);
  TANDEM_RETURN_IF_ERROR(backend_.ReserveDecodeGraphs(options.max_batch, graph_max_blocks_, options.block_size,
                                                      attention_params_));
  graph_options_ = options;
  graph_buckets_ = DecodeGraphBuckets(options.max_batch);
  const size_t b = static_cast<size_t>(options.max_batch);
  graph_ids_.assign(b, 0);
  graph_positions_.assign(b, 0);
  graph_slots_.assign(b, -1);
  graph_query_start_.resize(b + 1);
  for (size_t i = 0; i <= b; ++i) graph_query_start_[i] = static_cast<int32_t>(i);
  graph_context_lens_.assign(b, 1);
  graph_tables_.assign(b * static_cast<size_t>(graph_max_blocks_), 0);
  graphs_enabled_ = true;
  return OkStatus();
}

bool LlamaModel::IsGraphableDecode(const ModelInput& input) const {
  const AttentionMetadata& m = input.attention;
  if (!graphs_enabled_ || m.num_seqs < 1 || m.num_seqs > graph_options_.max_batch ||
      m.num_tokens != m.num_seqs || m.block_size != graph_options_.block_size ||
      m.max_blocks_per_seq < 1 || m.max_blocks_per_seq > graph_max_blocks_ ||
      input.logits_rows.size() != static_cast<size_t>(m.num_seqs)) {
    return false;
  }
  for (int32_t i = 0; i < m.num_seqs; ++i) {
    if (m.query_start[i] != i || input.logits_rows[i] != i) return false;
  }
  return true;
}

StatusOr<Tensor> LlamaModel::ForwardDecodeGraph(const ModelInput& input, const KvCache& cache) {
  const AttentionMetadata& m = input.attention;
  const int32_t n = m.num_seqs;
  const int32_t batch = *std::lower_bound(graph_buckets_.begin(), graph_buckets_.end(), n);
  const auto [width, width_exponent] = PaddedTableWidth(m.max_blocks_per_seq, graph_max_blocks_);
  // The padded batch: rows past n read token 0 at position 0 through block 0 and write nowhere
  // (slot -1); their logits are never returned.
  for (int32_t i = 0; i < batch; ++i) {
    const bool real = i < n;
    const int32_t id = real ? input.token_ids[i] : 0;
    TANDEM_CHECK(id >= 0 && id < config_.vocab_size) << "token id " << id;
    const int32_t pos = real ? m.positions[i] : 0;
    if (pos >= max_positions_) {
      return OutOfRangeError("position " + std::to_string(pos) + " beyond the model's " +
                             std::to_string(max_positions_) + " positions");
    }
    graph_ids_[i] = id;
    graph_positions_[i] = pos;
    graph_slots_[i] = real ? m.slot_mapping[i] : -1;
    graph_context_lens_[i] = real ? m.context_lens[i] : 1;
    int32_t* row = graph_tables_.data() + static_cast<size_t>(i) * width;
    const int32_t copied = real ? m.max_blocks_per_seq : 0;
    if (real) std::copy_n(m.block_tables.data() + static_cast<size_t>(i) * copied, copied, row);
    std::fill(row + copied, row + width, 0);
  }
  AttentionMetadata padded;
  padded.num_seqs = batch;
  padded.num_tokens = batch;
  padded.query_start = std::span<const int32_t>(graph_query_start_.data(), static_cast<size_t>(batch) + 1);
  padded.context_lens = std::span<const int32_t>(graph_context_lens_.data(), static_cast<size_t>(batch));
  padded.block_tables =
      std::span<const int32_t>(graph_tables_.data(), static_cast<size_t>(batch) * static_cast<size_t>(width));
  padded.max_blocks_per_seq = width;
  padded.positions = std::span<const int32_t>(graph_positions_.data(), static_cast<size_t>(batch));
  padded.slot_mapping = std::span<const int64_t>(graph_slots_.data(), static_cast<size_t>(batch));
  padded.block_size = m.block_size;
  padded.max_query_len = 1;
  padded.max_context_len = m.max_context_len;
  const std::span<const int32_t> ids(graph_ids_.data(), static_cast<size_t>(batch));
  TANDEM_RETURN_IF_ERROR(backend_.StageDecodeInputs(ids, padded, cache.shape().num_blocks));

  // The recorded step: every layer, then the final norm and the LM head over all `batch` rows.
  struct Step {
    std::span<const int32_t> ids;
    const AttentionMetadata* meta;
    const KvCache* cache;
    int32_t batch;
  } step{ids, &padded, &cache, batch};
  const auto record = [this, &step]() -> Status {
    const int64_t rows = step.batch;
    const DType act = backend_.activation_dtype();
    const float eps = static_cast<float>(config_.rms_norm_eps);
    TANDEM_RETURN_IF_ERROR(RunLayers(step.ids, *step.meta, *step.cache, nullptr));
    TANDEM_ASSIGN_OR_RETURN(Tensor x, Scratch(kHidden, act, {rows, config_.hidden_size}));
    TANDEM_ASSIGN_OR_RETURN(Tensor residual, Scratch(kResidual, act, {rows, config_.hidden_size}));
    TANDEM_ASSIGN_OR_RETURN(Tensor logits, Scratch(kLogits, DType::kF32, {rows, config_.vocab_size}));
    if (FusedStep(rows)) return backend_.NormLinear(residual, final_norm_, eps, lm_head_, Tensor(), logits);
    TANDEM_ASSIGN_OR_RETURN(Tensor normed, Scratch(kNormed, act, {rows, config_.hidden_size}));
    TANDEM_RETURN_IF_ERROR(backend_.RmsNorm(x, residual, final_norm_, eps, normed));
    return backend_.Linear(normed, lm_head_, Tensor(), logits);
  };
  const int32_t key = (width_exponent << kGraphKeyWidthShift) | batch;
  TANDEM_RETURN_IF_ERROR(backend_.RunDecodeGraph(key, graph_options_.capture, record));
  TANDEM_ASSIGN_OR_RETURN(Tensor logits, Scratch(kLogits, DType::kF32, {batch, config_.vocab_size}));
  return logits.Rows(0, n);
}

}  // namespace tandem
