#include "model/model_config.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <optional>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace tandem {
namespace {

using Json = nlohmann::json;

constexpr std::string_view kSupportedArchitectures =
    "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM";

// Typed, validated access to the fields of one JSON object; every error names the file and field.
class FieldReader {
 public:
  FieldReader(const Json& obj, std::string source, std::string prefix = "")
      : obj_(obj), source_(std::move(source)), prefix_(std::move(prefix)) {}

  Status Error(std::string_view field, std::string_view what) const {
    return InvalidArgumentError(fmt::format("{}: {}{} {}", source_, prefix_, field, what));
  }
  std::string Name(std::string_view field) const { return prefix_ + std::string(field); }

  // The field, or nullptr when absent or null.
  const Json* Find(std::string_view field) const {
    auto it = obj_.find(field);
    if (it == obj_.end() || it->is_null()) return nullptr;
    return &*it;
  }

  StatusOr<std::optional<int64_t>> OptionalInt(std::string_view field) const {
    const Json* v = Find(field);
    if (v == nullptr) return std::optional<int64_t>();
    if (v->is_number_integer() && !(v->is_number_unsigned() && v->get<uint64_t>() > INT64_MAX)) {
      return std::optional<int64_t>(v->get<int64_t>());
    }
    // Some exporters write integral values as floats ("max_position_embeddings": 4096.0).
    if (v->is_number_float()) {
      double d = v->get<double>();
      if (std::isfinite(d) && d == std::floor(d) && std::abs(d) < 9.0e15) {
        return std::optional<int64_t>(static_cast<int64_t>(d));
      }
    }
    return Error(field, fmt::format("must be an integer, got {}", v->dump()));
  }

  // A required integer in [min, max].
  StatusOr<int64_t> Int(std::string_view field, int64_t min, int64_t max = INT64_MAX) const {
    TANDEM_ASSIGN_OR_RETURN(std::optional<int64_t> v, OptionalInt(field));
    if (!v) return Error(field, "is required");
    TANDEM_RETURN_IF_ERROR(CheckRange(field, *v, min, max));
    return *v;
  }
  StatusOr<int64_t> IntOr(std::string_view field, int64_t fallback, int64_t min,
                          int64_t max = INT64_MAX) const {
    TANDEM_ASSIGN_OR_RETURN(std::optional<int64_t> v, OptionalInt(field));
    if (!v) return fallback;
    TANDEM_RETURN_IF_ERROR(CheckRange(field, *v, min, max));
    return *v;
  }

  StatusOr<std::optional<double>> OptionalDouble(std::string_view field) const {
    const Json* v = Find(field);
    if (v == nullptr) return std::optional<double>();
    if (!v->is_number()) return Error(field, fmt::format("must be a number, got {}", v->dump()));
    double d = v->get<double>();
    if (!std::isfinite(d)) return Error(field, "must be finite");
    return std::optional<double>(d);
  }
  // A number > 0 (or >= 0 when `allow_zero`), `fallback` when absent.
  StatusOr<double> PositiveDoubleOr(std::string_view field, double fallback,
                                    bool allow_zero = false) const {
    TANDEM_ASSIGN_OR_RETURN(std::optional<double> v, OptionalDouble(field));
    if (!v) return fallback;
    if (*v < 0.0 || (*v == 0.0 && !allow_zero)) {
      return Error(field, fmt::format("must be {} 0, got {}", allow_zero ? ">=" : ">", *v));
    }
    return *v;
  }

  StatusOr<bool> BoolOr(std::string_view field, bool fallback) const {
    const Json* v = Find(field);
    if (v == nullptr) return fallback;
    if (!v->is_boolean()) return Error(field, fmt::format("must be true or false, got {}", v->dump()));
    return v->get<bool>();
  }

  StatusOr<std::optional<std::string>> OptionalString(std::string_view field) const {
    const Json* v = Find(field);
    if (v == nullptr) return std::optional<std::string>();
    if (!v->is_string()) return Error(field, fmt::format("must be a string, got {}", v->dump()));
    return std::optional<std::string>(v->get<std::string>());
  }

  // An int, a list of ints, or null/absent (empty).
  StatusOr<std::vector<int64_t>> IntList(std::string_view field) const {
    std::vector<int64_t> out;
    const Json* v = Find(field);
    if (v == nullptr) return out;
    auto one = [&](const Json& x) -> Status {
      if (!x.is_number_integer() || (x.is_number_integer() && !x.is_number_unsigned() &&
                                     x.get<int64_t>() < 0)) {
        return Error(field, fmt::format("must be a non-negative integer or a list of them, got {}",
                                        v->dump()));
      }
      out.push_back(x.get<int64_t>());
      return OkStatus();
    };
    if (v->is_array()) {
      for (const Json& x : *v) TANDEM_RETURN_IF_ERROR(one(x));
    } else {
      TANDEM_RETURN_IF_ERROR(one(*v));
    }
    return out;
  }

 private:
  Status CheckRange(std::string_view field, int64_t v, int64_t min, int64_t max) const {
    if (v < min || v > max) {
      if (max == INT64_MAX) return Error(field, fmt::format("must be >= {}, got {}", min, v));
      return Error(field, fmt::format("must be in [{}, {}], got {}", min, max, v));
    }
    return OkStatus();
  }

  const Json& obj_;
  std::string source_;
  std::string prefix_;
};

StatusOr<Json> ParseJsonObject(std::string_view text, std::string_view source) {
  Json j;
  try {
    j = Json::parse(text);
  } catch (const Json::exception& e) {
    return InvalidArgumentError(fmt::format("{}: malformed JSON: {}", source, e.what()));
  }
  if (!j.is_object()) {
    return InvalidArgumentError(fmt::format("{}: must be a JSON object, got {}", source, j.type_name()));
  }
  return j;
}

StatusOr<std::string> ReadTextFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFoundError(fmt::format("{}: cannot open file", path.string()));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return DataLossError(fmt::format("{}: read failed", path.string()));
  return ss.str();
}

StatusOr<ModelArch> ParseArchitecture(const Json& j, std::string_view source, std::string* name) {
  auto it = j.find("architectures");
  if (it != j.end() && !it->is_null()) {
    if (!it->is_array() || it->empty() || !(*it)[0].is_string()) {
      return InvalidArgumentError(fmt::format(
          "{}: architectures must be a non-empty list of names (supported: {})", source,
          kSupportedArchitectures));
    }
    *name = (*it)[0].get<std::string>();
    if (*name == "LlamaForCausalLM") return ModelArch::kLlama;
    if (*name == "MistralForCausalLM") return ModelArch::kMistral;
    if (*name == "Qwen2ForCausalLM") return ModelArch::kQwen2;
    return InvalidArgumentError(fmt::format("{}: architectures: unsupported architecture '{}' "
                                            "(supported: {})",
                                            source, *name, kSupportedArchitectures));
  }
  // No `architectures`: fall back to model_type.
  auto mt = j.find("model_type");
  if (mt != j.end() && mt->is_string()) {
    std::string type = mt->get<std::string>();
    if (type == "llama") { *name = "LlamaForCausalLM"; return ModelArch::kLlama; }
    if (type == "mistral") { *name = "MistralForCausalLM"; return ModelArch::kMistral; }
    if (type == "qwen2") { *name = "Qwen2ForCausalLM"; return ModelArch::kQwen2; }
    return InvalidArgumentError(fmt::format("{}: model_type '{}' is not supported (supported "
                                            "architectures: {})",
                                            source, type, kSupportedArchitectures));
  }
  return InvalidArgumentError(fmt::format("{}: architectures is missing (supported: {})", source,
                                          kSupportedArchitectures));
}

StatusOr<DType> ParseCheckpointDType(const FieldReader& r) {
  for (std::string_view field : {"dtype", "torch_dtype"}) {
    TANDEM_ASSIGN_OR_RETURN(std::optional<std::string> v, r.OptionalString(field));
    if (!v) continue;
    std::string s = *v;
    if (s.rfind("torch.", 0) == 0) s = s.substr(6);
    if (s == "bfloat16") return DType::kBF16;
    if (s == "float16" || s == "half") return DType::kF16;
    if (s == "float32" || s == "float") return DType::kF32;
    return r.Error(field, fmt::format("'{}' is not supported (bfloat16, float16 or float32)", *v));
  }
  return DType::kBF16;
}

// Reads the rope type and its scaling fields from `params` (the `rope_scaling` or
// `rope_parameters` object; its own rope_theta, if any, was already read by the caller).
Status ParseRopeScaling(const FieldReader& p, int64_t max_position_embeddings, RopeConfig* rope) {
  TANDEM_ASSIGN_OR_RETURN(std::optional<std::string> type, p.OptionalString("rope_type"));
  std::string_view type_field = "rope_type";
  if (!type) {
    TANDEM_ASSIGN_OR_RETURN(type, p.OptionalString("type"));
    type_field = "type";
  }
  const std::string t = type.value_or("default");
  if (t == "default") {
    rope->type = RopeType::kDefault;
  } else if (t == "linear") {
    rope->type = RopeType::kLinear;
  } else if (t == "dynamic") {
    rope->type = RopeType::kDynamic;
  } else if (t == "llama3") {
    rope->type = RopeType::kLlama3;
  } else if (t == "yarn") {
    rope->type = RopeType::kYarn;
  } else {
    return p.Error(type_field,
                   fmt::format("'{}' is not supported (default, linear, dynamic, llama3, yarn)", t));
  }

  TANDEM_ASSIGN_OR_RETURN(std::optional<double> factor, p.OptionalDouble("factor"));
  if (factor && *factor <= 0.0) return p.Error("factor", fmt::format("must be > 0, got {}", *factor));
  if (rope->type != RopeType::kDefault && !factor) {
    return p.Error("factor", fmt::format("is required for rope type '{}'", t));
  }
  rope->factor = rope->type == RopeType::kDefault ? 1.0 : *factor;

  TANDEM_ASSIGN_OR_RETURN(rope->partial_rotary_factor,
                          p.PositiveDoubleOr("partial_rotary_factor", 1.0));
  if (rope->partial_rotary_factor > 1.0) {
    return p.Error("partial_rotary_factor",
                   fmt::format("must be in (0, 1], got {}", rope->partial_rotary_factor));
  }

  if (rope->type == RopeType::kLlama3) {
    for (std::string_view f : {"low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}) {
      if (p.Find(f) == nullptr) return p.Error(f, "is required for rope type 'llama3'");
    }
    TANDEM_ASSIGN_OR_RETURN(rope->low_freq_factor, p.PositiveDoubleOr("low_freq_factor", 1.0));
    TANDEM_ASSIGN_OR_RETURN(rope->high_freq_factor, p.PositiveDoubleOr("high_freq_factor", 4.0));
    if (rope->high_freq_factor <= rope->low_freq_factor) {
      return p.Error("high_freq_factor",
                     fmt::format("({}) must be greater than low_freq_factor ({})",
                                 rope->high_freq_factor, rope->low_freq_factor));
    }
  }
  if (rope->type == RopeType::kLlama3 || rope->type == RopeType::kYarn) {
    TANDEM_ASSIGN_OR_RETURN(rope->original_max_position_embeddings,
                            p.IntOr("original_max_position_embeddings", max_position_embeddings, 1));
  }
  if (rope->type == RopeType::kYarn) {
    TANDEM_ASSIGN_OR_RETURN(rope->beta_fast, p.PositiveDoubleOr("beta_fast", 32.0));
    TANDEM_ASSIGN_OR_RETURN(rope->beta_slow, p.PositiveDoubleOr("beta_slow", 1.0));
    TANDEM_ASSIGN_OR_RETURN(std::optional<double> attention_factor,
                            p.OptionalDouble("attention_factor"));
    if (attention_factor && *attention_factor <= 0.0) {
      return p.Error("attention_factor", fmt::format("must be > 0, got {}", *attention_factor));
    }
    rope->attention_factor = attention_factor;
  }
  return OkStatus();
}

Status ParseRope(const Json& j, const FieldReader& r, std::string_view source,
                 int64_t max_position_embeddings, RopeConfig* rope) {
  auto params = j.find("rope_parameters");
  if (params != j.end() && !params->is_null()) {
    // Newer form: {"rope_theta", "rope_type", scaling fields...} in one object.
    if (!params->is_object()) {
      return r.Error("rope_parameters", "must be an object");
    }
    FieldReader p(*params, std::string(source), "rope_parameters.");
    TANDEM_ASSIGN_OR_RETURN(std::optional<double> theta, p.OptionalDouble("rope_theta"));
    if (!theta) {
      // Tolerate a top-level rope_theta beside rope_parameters.
      TANDEM_ASSIGN_OR_RETURN(theta, r.OptionalDouble("rope_theta"));
    }
    rope->theta = theta.value_or(10000.0);
    if (rope->theta <= 0.0) return p.Error("rope_theta", fmt::format("must be > 0, got {}", rope->theta));
    return ParseRopeScaling(p, max_position_embeddings, rope);
  }

  // Classic form: top-level rope_theta, optional rope_scaling object (null when unscaled).
  TANDEM_ASSIGN_OR_RETURN(rope->theta, r.PositiveDoubleOr("rope_theta", 10000.0));
  auto scaling = j.find("rope_scaling");
  if (scaling == j.end() || scaling->is_null()) {
    TANDEM_ASSIGN_OR_RETURN(rope->partial_rotary_factor,
                            r.PositiveDoubleOr("partial_rotary_factor", 1.0));
    if (rope->partial_rotary_factor > 1.0) {
      return r.Error("partial_rotary_factor",
                     fmt::format("must be in (0, 1], got {}", rope->partial_rotary_factor));
    }
    return OkStatus();
  }
  if (!scaling->is_object()) return r.Error("rope_scaling", "must be an object or null");
  FieldReader p(*scaling, std::string(source), "rope_scaling.");
  TANDEM_RETURN_IF_ERROR(ParseRopeScaling(p, max_position_embeddings, rope));
  if (p.Find("partial_rotary_factor") == nullptr) {
    TANDEM_ASSIGN_OR_RETURN(rope->partial_rotary_factor,
                            r.PositiveDoubleOr("partial_rotary_factor", 1.0));
    if (rope->partial_rotary_factor > 1.0) {
      return r.Error("partial_rotary_factor",
                     fmt::format("must be in (0, 1], got {}", rope->partial_rotary_factor));
    }
  }
  return OkStatus();
}

Status ParseSlidingWindow(const FieldReader& r, ModelConfig* c) {
  if (c->arch == ModelArch::kLlama) return OkStatus();
  TANDEM_ASSIGN_OR_RETURN(std::optional<int64_t> window, r.OptionalInt("sliding_window"));
  if (window && *window <= 0) {
    return r.Error("sliding_window", fmt::format("must be > 0 or null, got {}", *window));
  }
  if (c->arch == ModelArch::kMistral) {
    c->sliding_window = window;
    return OkStatus();
  }
  // Qwen2: the window applies only with use_sliding_window, and then only to the layers from
  // max_window_layers on.
  TANDEM_ASSIGN_OR_RETURN(bool use, r.BoolOr("use_sliding_window", false));
  if (!use || !window) return OkStatus();
  TANDEM_ASSIGN_OR_RETURN(int64_t max_window_layers, r.IntOr("max_window_layers", 0, 0));
  if (max_window_layers >= c->num_layers) return OkStatus();  // no layer uses the window
  if (max_window_layers != 0) {
    return r.Error("max_window_layers",
                   fmt::format("({}) with use_sliding_window: a sliding window on only some of the "
                               "{} layers is not supported (use 0 or >= num_hidden_layers)",
                               max_window_layers, c->num_layers));
  }
  c->sliding_window = window;
  return OkStatus();
}

}  // namespace

StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text, std::string_view source) {
  TANDEM_ASSIGN_OR_RETURN(Json j, ParseJsonObject(json_text, source));
  const std::string src(source);
  FieldReader r(j, src);
  ModelConfig c;
  TANDEM_ASSIGN_OR_RETURN(c.arch, ParseArchitecture(j, source, &c.architecture));

  TANDEM_ASSIGN_OR_RETURN(c.vocab_size, r.Int("vocab_size", 1));
  TANDEM_ASSIGN_OR_RETURN(c.hidden_size, r.Int("hidden_size", 1));
  TANDEM_ASSIGN_OR_RETURN(c.intermediate_size, r.Int("intermediate_size", 1));
  TANDEM_ASSIGN_OR_RETURN(c.num_layers, r.Int("num_hidden_layers", 1));
  TANDEM_ASSIGN_OR_RETURN(c.num_heads, r.Int("num_attention_heads", 1));
  TANDEM_ASSIGN_OR_RETURN(c.num_kv_heads, r.IntOr("num_key_value_heads", c.num_heads, 1));
  if (c.num_heads % c.num_kv_heads != 0) {
    return r.Error("num_attention_heads",
                   fmt::format("({}) must be a multiple of num_key_value_heads ({})", c.num_heads,
                               c.num_kv_heads));
  }
  TANDEM_ASSIGN_OR_RETURN(std::optional<int64_t> head_dim, r.OptionalInt("head_dim"));
  if (head_dim) {
    if (*head_dim <= 0) return r.Error("head_dim", fmt::format("must be >= 1, got {}", *head_dim));
    c.head_dim = *head_dim;
  } else {
    if (c.hidden_size % c.num_heads != 0) {
      return r.Error("hidden_size",
                     fmt::format("({}) must be a multiple of num_attention_heads ({}) when "
                                 "head_dim is not given",
                                 c.hidden_size, c.num_heads));
    }
    c.head_dim = c.hidden_size / c.num_heads;
  }

  // Defaults follow the transformers config classes.
  const int64_t default_max_pos = c.arch == ModelArch::kQwen2     ? 32768
                                  : c.arch == ModelArch::kMistral ? 4096 * 32
                                                                  : 2048;
  TANDEM_ASSIGN_OR_RETURN(c.max_position_embeddings,
                          r.IntOr("max_position_embeddings", default_max_pos, 1));
  TANDEM_ASSIGN_OR_RETURN(c.rms_norm_eps, r.PositiveDoubleOr("rms_norm_eps", 1e-6));

  TANDEM_ASSIGN_OR_RETURN(std::optional<std::string> act, r.OptionalString("hidden_act"));
  if (act && *act != "silu") {
    return r.Error("hidden_act", fmt::format("'{}' is not supported (only silu)", *act));
  }

  TANDEM_RETURN_IF_ERROR(ParseRope(j, r, source, c.max_position_embeddings, &c.rope));
  TANDEM_ASSIGN_OR_RETURN(c.tie_word_embeddings, r.BoolOr("tie_word_embeddings", false));

  switch (c.arch) {
    case ModelArch::kLlama: {
      TANDEM_ASSIGN_OR_RETURN(bool bias, r.BoolOr("attention_bias", false));
      c.attention_bias = bias;
      c.attention_output_bias = bias;
      TANDEM_ASSIGN_OR_RETURN(c.mlp_bias, r.BoolOr("mlp_bias", false));
      break;
    }
    case ModelArch::kMistral:  // transformers builds Mistral without biases whatever the config says
      break;
    case ModelArch::kQwen2:
      c.attention_bias = true;
      break;
  }
  TANDEM_RETURN_IF_ERROR(ParseSlidingWindow(r, &c));
  TANDEM_ASSIGN_OR_RETURN(c.dtype, ParseCheckpointDType(r));

  TANDEM_ASSIGN_OR_RETURN(std::vector<int64_t> bos, r.IntList("bos_token_id"));
  if (bos.size() > 1) return r.Error("bos_token_id", "must be a single id");
  if (!bos.empty()) c.bos_token_id = bos[0];
  TANDEM_ASSIGN_OR_RETURN(c.eos_token_ids, r.IntList("eos_token_id"));
  return c;
}

StatusOr<ModelConfig> LoadModelConfig(const std::filesystem::path& dir) {
  const std::filesystem::path config_path = dir / "config.json";
  std::error_code ec;
  if (!std::filesystem::exists(config_path, ec)) {
    return NotFoundError(fmt::format("{}: no such file (is {} a Hugging Face model directory?)",
                                     config_path.string(), dir.string()));
  }
  TANDEM_ASSIGN_OR_RETURN(std::string text, ReadTextFile(config_path));
  TANDEM_ASSIGN_OR_RETURN(ModelConfig config, ParseModelConfig(text, config_path.string()));

  const std::filesystem::path gen_path = dir / "generation_config.json";
  if (!std::filesystem::exists(gen_path, ec)) return config;
  const std::string gen_name = gen_path.string();
  TANDEM_ASSIGN_OR_RETURN(std::string gen_text, ReadTextFile(gen_path));
  TANDEM_ASSIGN_OR_RETURN(Json gen, ParseJsonObject(gen_text, gen_name));
  FieldReader g(gen, gen_name);
  TANDEM_ASSIGN_OR_RETURN(std::vector<int64_t> eos, g.IntList("eos_token_id"));
  for (int64_t id : eos) {
    if (std::find(config.eos_token_ids.begin(), config.eos_token_ids.end(), id) ==
        config.eos_token_ids.end()) {
      config.eos_token_ids.push_back(id);
    }
  }
  if (!config.bos_token_id) {
    TANDEM_ASSIGN_OR_RETURN(std::vector<int64_t> bos, g.IntList("bos_token_id"));
    if (bos.size() > 1) return g.Error("bos_token_id", "must be a single id");
    if (!bos.empty()) config.bos_token_id = bos[0];
  }
  return config;
}

std::string_view ModelArchName(ModelArch arch) {
  switch (arch) {
    case ModelArch::kLlama: return "llama";
    case ModelArch::kMistral: return "mistral";
    case ModelArch::kQwen2: return "qwen2";
  }
  return "unknown";
}

std::string_view RopeTypeName(RopeType type) {
  switch (type) {
    case RopeType::kDefault: return "default";
    case RopeType::kLinear: return "linear";
    case RopeType::kDynamic: return "dynamic";
    case RopeType::kLlama3: return "llama3";
    case RopeType::kYarn: return "yarn";
  }
  return "unknown";
}

}  // namespace tandem
