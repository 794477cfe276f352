#include "model/llama_model.h"

#include <cmath>
#include <string>
#include <unordered_map>

#include "model/rope.h"
#include "model/tensor_specs.h"

namespace tandem {
namespace {

enum ScratchSlot : size_t {
  kHidden,     // x: embeddings / sub-layer output [T, H]
  kResidual,   // residual stream [T, H]
  kNormed,     // normalized input to a sub-layer [T, H]
  kQ,
  kK,
  kV,
  kAttnOut,
  kGate,
  kUp,
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

Status LlamaModel::UploadAll(const WeightSource& weights) {
  std::unordered_map<std::string, Tensor> uploaded;
  for (const ExpectedTensor& spec : LlamaFamilyTensorSpecs(config_)) {
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
    std::unique_ptr<DeviceBuffer> storage;
    TANDEM_ASSIGN_OR_RETURN(Tensor t, backend_.UploadWeight(*host, &storage));
    if (storage) weight_storage_.push_back(std::move(storage));
    // A zero-copy backend reads the host bytes in place: keep them alive with the model.
    if (host->keepalive) host_keepalive_.push_back(host->keepalive);
    uploaded[spec.name] = t;
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
    w.q = get(p + "self_attn.q_proj.weight");
    w.k = get(p + "self_attn.k_proj.weight");
    w.v = get(p + "self_attn.v_proj.weight");
    w.o = get(p + "self_attn.o_proj.weight");
    w.q_bias = get(p + "self_attn.q_proj.bias");
    w.k_bias = get(p + "self_attn.k_proj.bias");
    w.v_bias = get(p + "self_attn.v_proj.bias");
    w.o_bias = get(p + "self_attn.o_proj.bias");
    w.gate = get(p + "mlp.gate_proj.weight");
    w.up = get(p + "mlp.up_proj.weight");
    w.down = get(p + "mlp.down_proj.weight");
    w.gate_bias = get(p + "mlp.gate_proj.bias");
    w.up_bias = get(p + "mlp.up_proj.bias");
    w.down_bias = get(p + "mlp.down_proj.bias");
  }
  return OkStatus();
}

StatusOr<Tensor> LlamaModel::Scratch(size_t slot, DType dtype, std::initializer_list<int64_t> dims) {
  Tensor t(nullptr, dtype, dims);
  auto& buffer = scratch_[slot];
  if (!buffer || buffer->size() < t.nbytes()) {
    // Grow with headroom so a slowly growing batch does not reallocate every step.
    TANDEM_ASSIGN_OR_RETURN(buffer, backend_.Allocate(t.nbytes() + t.nbytes() / 2));
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
      {kQ, Tensor(nullptr, act, {max_tokens, q_dim})},
      {kK, Tensor(nullptr, act, {max_tokens, kv_dim})},
      {kV, Tensor(nullptr, act, {max_tokens, kv_dim})},
      {kAttnOut, Tensor(nullptr, act, {max_tokens, q_dim})},
      {kGate, Tensor(nullptr, act, {max_tokens, inter})},
      {kUp, Tensor(nullptr, act, {max_tokens, inter})},
      {kAct, Tensor(nullptr, act, {max_tokens, inter})},
      {kRows, Tensor(nullptr, act, {max_rows, hidden})},
      {kLogits, Tensor(nullptr, DType::kF32, {max_rows, config_.vocab_size})},
  };
  for (const auto& [slot, shape] : slots) {
    auto& buffer = scratch_[slot];
    if (!buffer || buffer->size() < shape.nbytes()) {
      TANDEM_ASSIGN_OR_RETURN(buffer, backend_.Allocate(shape.nbytes()));
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
  const int64_t hidden = config_.hidden_size;
  const int64_t q_dim = config_.num_heads * config_.head_dim;
  const int64_t kv_dim = config_.num_kv_heads * config_.head_dim;
  const int64_t inter = config_.intermediate_size;
  const DType act = backend_.activation_dtype();
  const float eps = static_cast<float>(config_.rms_norm_eps);

  TANDEM_ASSIGN_OR_RETURN(Tensor x, Scratch(kHidden, act, {num_tokens, hidden}));
  TANDEM_ASSIGN_OR_RETURN(Tensor residual, Scratch(kResidual, act, {num_tokens, hidden}));
  TANDEM_ASSIGN_OR_RETURN(Tensor normed, Scratch(kNormed, act, {num_tokens, hidden}));
  TANDEM_ASSIGN_OR_RETURN(Tensor q, Scratch(kQ, act, {num_tokens, q_dim}));
  TANDEM_ASSIGN_OR_RETURN(Tensor k, Scratch(kK, act, {num_tokens, kv_dim}));
  TANDEM_ASSIGN_OR_RETURN(Tensor v, Scratch(kV, act, {num_tokens, kv_dim}));
  TANDEM_ASSIGN_OR_RETURN(Tensor attn, Scratch(kAttnOut, act, {num_tokens, q_dim}));
  TANDEM_ASSIGN_OR_RETURN(Tensor gate, Scratch(kGate, act, {num_tokens, inter}));
  TANDEM_ASSIGN_OR_RETURN(Tensor up, Scratch(kUp, act, {num_tokens, inter}));
  TANDEM_ASSIGN_OR_RETURN(Tensor mlp_act, Scratch(kAct, act, {num_tokens, inter}));

  TANDEM_RETURN_IF_ERROR(backend_.Embedding(input.token_ids, embed_tokens_, x));
  for (int64_t l = 0; l < config_.num_layers; ++l) {
    const LayerWeights& w = layers_[l];
    // Attention block. The first layer starts the residual stream from the embeddings.
    if (l == 0) {
      TANDEM_RETURN_IF_ERROR(backend_.Copy(x, residual));
      TANDEM_RETURN_IF_ERROR(backend_.RmsNorm(x, Tensor(), w.input_norm, eps, normed));
    } else {
      TANDEM_RETURN_IF_ERROR(backend_.RmsNorm(x, residual, w.input_norm, eps, normed));
    }
    TANDEM_RETURN_IF_ERROR(backend_.Linear(normed, w.q, w.q_bias, q));
    TANDEM_RETURN_IF_ERROR(backend_.Linear(normed, w.k, w.k_bias, k));
    TANDEM_RETURN_IF_ERROR(backend_.Linear(normed, w.v, w.v_bias, v));
    const KvLayerView kv = cache.layer(static_cast<int32_t>(l));
    TANDEM_RETURN_IF_ERROR(
        backend_.RopeAndWriteKv(q, k, v, rope_, attention_params_, input.attention, kv));
    if (input.after_layer_kv) TANDEM_RETURN_IF_ERROR(input.after_layer_kv(static_cast<int32_t>(l)));
    TANDEM_RETURN_IF_ERROR(backend_.Attention(q, kv, attention_params_, input.attention, attn));
    TANDEM_RETURN_IF_ERROR(backend_.Linear(attn, w.o, w.o_bias, x));
    // MLP block.
    TANDEM_RETURN_IF_ERROR(backend_.RmsNorm(x, residual, w.post_norm, eps, normed));
    TANDEM_RETURN_IF_ERROR(backend_.Linear(normed, w.gate, w.gate_bias, gate));
    TANDEM_RETURN_IF_ERROR(backend_.Linear(normed, w.up, w.up_bias, up));
    TANDEM_RETURN_IF_ERROR(backend_.SiluMul(gate, up, mlp_act));
    TANDEM_RETURN_IF_ERROR(backend_.Linear(mlp_act, w.down, w.down_bias, x));
  }
  if (num_rows == 0) return Tensor(nullptr, DType::kF32, {0, config_.vocab_size});
  // Only the rows that need logits go through the final norm and the LM head.
  TANDEM_ASSIGN_OR_RETURN(Tensor rows_x, Scratch(kRows, act, {num_rows, hidden}));
  TANDEM_ASSIGN_OR_RETURN(Tensor rows_res, Scratch(kNormed, act, {num_rows, hidden}));
  TANDEM_RETURN_IF_ERROR(backend_.GatherRows(x, input.logits_rows, rows_x));
  TANDEM_RETURN_IF_ERROR(backend_.GatherRows(residual, input.logits_rows, rows_res));
  TANDEM_ASSIGN_OR_RETURN(Tensor rows_normed, Scratch(kAttnOut, act, {num_rows, hidden}));
  TANDEM_RETURN_IF_ERROR(backend_.RmsNorm(rows_x, rows_res, final_norm_, eps, rows_normed));
  TANDEM_ASSIGN_OR_RETURN(Tensor out, Scratch(kLogits, DType::kF32, {num_rows, config_.vocab_size}));
  TANDEM_RETURN_IF_ERROR(backend_.Linear(rows_normed, lm_head_, Tensor(), out));
  return out;
}

}  // namespace tandem
