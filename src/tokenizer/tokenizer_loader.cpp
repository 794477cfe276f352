// Building a Tokenizer: from tokenizer.json (+ tokenizer_config.json, generation_config.json) or
// from a GGUF VocabSpec.
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "tokenizer/bpe_model.h"
#include "tokenizer/decoder.h"
#include "tokenizer/normalizer.h"
#include "tokenizer/pre_tokenizer.h"
#include "tokenizer/tokenizer.h"

namespace tandem {

using nlohmann::json;

class TokenizerLoader {
 public:
  static StatusOr<std::unique_ptr<Tokenizer>> FromJson(std::string_view tokenizer_json,
                                                       std::string_view config_json,
                                                       std::string_view generation_json);
  static StatusOr<std::unique_ptr<Tokenizer>> FromVocabSpec(const VocabSpec& spec);

 private:
  static Status LoadModel(const json& root, Tokenizer* t);
  static Status LoadPostProcessor(const json& pp, Tokenizer* t);
  static Status LoadConfigs(const json& config, const json& generation, Tokenizer* t);
};

namespace {

StatusOr<std::string> ReadFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFoundError(fmt::format("cannot open {}", path.string()));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// "<s>" or {"content": "<s>", ...} (tokenizer_config.json token fields).
std::string TokenString(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) {
    return v["content"].get<std::string>();
  }
  return "";
}

// Pre-tokenizer regexes for GGUF `tokenizer.ggml.pre` names, as in the models' tokenizer.json.
constexpr std::string_view kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr std::string_view kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

StatusOr<std::vector<std::string>> RegexesForPre(const std::string& pre) {
  if (pre == "default" || pre == "gpt2" || pre == "gpt-2" || pre == "phi-2" || pre == "olmo") {
    return std::vector<std::string>{std::string(kGpt2Pattern)};
  }
  if (pre == "llama3" || pre == "llama-bpe" || pre == "llama-v3" || pre == "smaug-bpe" ||
      pre == "dbrx") {
    return std::vector<std::string>{std::string(kLlama3Pattern)};
  }
  if (pre == "qwen2" || pre == "deepseek-r1-qwen") {
    return std::vector<std::string>{std::string(kQwen2Pattern)};
  }
  if (pre == "smollm" || pre == "starcoder" || pre == "refact") {
    return std::vector<std::string>{R"(\p{N})", std::string(kGpt2Pattern)};
  }
  if (pre == "deepseek-coder") {
    return std::vector<std::string>{R"([\r\n])", R"(\s?\p{L}+)", R"(\s?\p{P}+)",
                                    "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+", R"(\p{N})"};
  }
  if (pre == "deepseek-llm") {
    return std::vector<std::string>{
        R"([\r\n])",
        "\\s?[A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-"
        "\u02af\u0370-\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1"
        "\u03a3-\u03f5\u03f7-\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-"
        "\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a\u1e00-\u1f15"
        "\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d"
        "\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb"
        "\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d"
        "\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f\u2145-\u2149\u214e"
        "\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d\ua680-"
        "\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06\ufb13-\ufb17"
        "\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3\U000104d8-"
        "\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df\U0001e900-"
        "\U0001e943]+",
        "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+", R"(\s+$)",
        "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+", R"(\p{N}+)"};
  }
  return InvalidArgumentError(fmt::format(
      "tokenizer.ggml.pre \"{}\" is not supported (supported: default, gpt2, llama-bpe, llama3, "
      "qwen2, smollm, starcoder, deepseek-llm, deepseek-coder)",
      pre));
}

}  // namespace

Status TokenizerLoader::LoadModel(const json& root, Tokenizer* t) {
  const json& model = root.at("model");
  const std::string type = model.value("type", "BPE");
  if (type != "BPE") {
    return UnimplementedError(fmt::format("tokenizer model type \"{}\" is not supported (only BPE)", type));
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (model.contains(key) && model[key].is_string() && !model[key].get<std::string>().empty()) {
      return UnimplementedError(fmt::format("BPE {} is not supported", key));
    }
  }
  std::vector<std::string> vocab;
  for (const auto& [token, id_json] : model.at("vocab").items()) {
    int64_t id = id_json.get<int64_t>();
    if (id < 0 || id > 16'000'000) {
      return InvalidArgumentError(fmt::format("vocab id {} of token \"{}\" is out of range", id, token));
    }
    if (static_cast<size_t>(id) >= vocab.size()) vocab.resize(id + 1);
    vocab[id] = token;
  }
  std::vector<std::pair<std::string, std::string>> merges;
  if (model.contains("merges")) {
    merges.reserve(model["merges"].size());
    for (const json& m : model["merges"]) {
      if (m.is_array() && m.size() == 2) {
        merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
      } else if (m.is_string()) {
        const std::string s = m.get<std::string>();
        size_t sp = s.find(' ', 1);
        if (sp == std::string::npos) return InvalidArgumentError(fmt::format("bad BPE merge \"{}\"", s));
        merges.emplace_back(s.substr(0, sp), s.substr(sp + 1));
      } else {
        return InvalidArgumentError("BPE merges must be strings \"a b\" or pairs [a, b]");
      }
    }
  }
  BpeOptions options;
  options.byte_level = t->pre_tokenizer_ && t->pre_tokenizer_->IsByteLevel();
  options.ignore_merges = model.value("ignore_merges", false);
  options.byte_fallback = model.value("byte_fallback", false);
  options.fuse_unk = model.value("fuse_unk", false);
  if (model.contains("unk_token") && model["unk_token"].is_string()) {
    const std::string unk = model["unk_token"].get<std::string>();
    for (size_t id = 0; id < vocab.size(); ++id) {
      if (vocab[id] == unk) options.unk_id = static_cast<int32_t>(id);
    }
  }
  TANDEM_ASSIGN_OR_RETURN(t->model_, BpeModel::Create(std::move(vocab), merges, options));
  return OkStatus();
}

Status TokenizerLoader::LoadPostProcessor(const json& pp, Tokenizer* t) {
  if (pp.is_null()) return OkStatus();
  const std::string type = pp.value("type", "");
  if (type == "Sequence") {
    for (const json& p : pp.at("processors")) TANDEM_RETURN_IF_ERROR(LoadPostProcessor(p, t));
    return OkStatus();
  }
  if (type == "ByteLevel") return OkStatus();
  if (type == "TemplateProcessing") {
    t->prefix_ids_.clear();
    t->suffix_ids_.clear();
    bool seen_sequence = false;
    for (const json& item : pp.at("single")) {
      if (item.contains("Sequence")) {
        seen_sequence = true;
        continue;
      }
      const std::string name = item.at("SpecialToken").at("id").get<std::string>();
      const json& special = pp.at("special_tokens").at(name);
      for (const json& id : special.at("ids")) {
        (seen_sequence ? t->suffix_ids_ : t->prefix_ids_).push_back(id.get<int32_t>());
      }
    }
    return OkStatus();
  }
  if (type == "RobertaProcessing" || type == "BertProcessing") {
    t->prefix_ids_ = {pp.at("cls").at(1).get<int32_t>()};
    t->suffix_ids_ = {pp.at("sep").at(1).get<int32_t>()};
    return OkStatus();
  }
  return UnimplementedError(fmt::format("post_processor type \"{}\" is not supported", type));
}

Status TokenizerLoader::LoadConfigs(const json& config, const json& generation, Tokenizer* t) {
  if (config.is_object()) {
    if (config.contains("bos_token")) t->bos_token_ = TokenString(config["bos_token"]);
    if (config.contains("eos_token")) t->eos_token_ = TokenString(config["eos_token"]);
    if (config.contains("chat_template")) {
      const json& ct = config["chat_template"];
      if (ct.is_string()) {
        t->chat_template_ = ct.get<std::string>();
      } else if (ct.is_array()) {
        for (const json& named : ct) {
          if (named.value("name", "") == "default" || t->chat_template_.empty()) {
            t->chat_template_ = named.value("template", "");
          }
        }
      }
    }
    // add_bos_token / add_eos_token, when given, decide what add_special_tokens adds.
    const bool has_bos = config.contains("add_bos_token") && config["add_bos_token"].is_boolean();
    const bool has_eos = config.contains("add_eos_token") && config["add_eos_token"].is_boolean();
    if (has_bos || has_eos) {
      auto bos = t->bos_token_.empty() ? std::nullopt : t->TokenToId(t->bos_token_);
      auto eos = t->eos_token_.empty() ? std::nullopt : t->TokenToId(t->eos_token_);
      bool add_bos = has_bos ? config["add_bos_token"].get<bool>()
                             : (bos && std::find(t->prefix_ids_.begin(), t->prefix_ids_.end(), *bos) !=
                                           t->prefix_ids_.end());
      bool add_eos = has_eos ? config["add_eos_token"].get<bool>()
                             : (eos && std::find(t->suffix_ids_.begin(), t->suffix_ids_.end(), *eos) !=
                                           t->suffix_ids_.end());
      t->prefix_ids_.clear();
      t->suffix_ids_.clear();
      if (add_bos && bos) t->prefix_ids_.push_back(*bos);
      if (add_eos && eos) t->suffix_ids_.push_back(*eos);
    }
  }
  if (!t->bos_token_.empty()) t->bos_id_ = t->TokenToId(t->bos_token_);
  if (!t->eos_token_.empty()) {
    if (auto id = t->TokenToId(t->eos_token_)) t->eos_ids_.push_back(*id);
  }
  if (generation.is_object()) {
    if (!t->bos_id_ && generation.contains("bos_token_id") && generation["bos_token_id"].is_number_integer()) {
      t->bos_id_ = generation["bos_token_id"].get<int32_t>();
    }
    if (generation.contains("eos_token_id")) {
      const json& e = generation["eos_token_id"];
      std::vector<int32_t> ids;
      if (e.is_number_integer()) ids.push_back(e.get<int32_t>());
      if (e.is_array()) {
        for (const json& v : e) {
          if (v.is_number_integer()) ids.push_back(v.get<int32_t>());
        }
      }
      for (int32_t id : ids) {
        if (std::find(t->eos_ids_.begin(), t->eos_ids_.end(), id) == t->eos_ids_.end()) {
          t->eos_ids_.push_back(id);
        }
      }
    }
  }
  if (t->bos_token_.empty() && t->bos_id_) t->bos_token_ = t->IdToToken(*t->bos_id_).value_or("");
  if (t->eos_token_.empty() && !t->eos_ids_.empty()) {
    t->eos_token_ = t->IdToToken(t->eos_ids_[0]).value_or("");
  }
  return OkStatus();
}

StatusOr<std::unique_ptr<Tokenizer>> TokenizerLoader::FromJson(std::string_view tokenizer_json,
                                                              std::string_view config_json,
                                                              std::string_view generation_json) {
  std::unique_ptr<Tokenizer> t(new Tokenizer());
  json root, config, generation;
  try {
    root = json::parse(tokenizer_json);
    if (!config_json.empty()) config = json::parse(config_json);
    if (!generation_json.empty()) generation = json::parse(generation_json);
  } catch (const json::exception& e) {
    return InvalidArgumentError(fmt::format("invalid JSON: {}", e.what()));
  }
  try {
    if (root.contains("normalizer") && !root["normalizer"].is_null()) {
      TANDEM_ASSIGN_OR_RETURN(t->normalizer_, Normalizer::FromJson(root["normalizer"]));
    }
    if (root.contains("pre_tokenizer") && !root["pre_tokenizer"].is_null()) {
      TANDEM_ASSIGN_OR_RETURN(t->pre_tokenizer_, PreTokenizer::FromJson(root["pre_tokenizer"]));
    }
    TANDEM_RETURN_IF_ERROR(LoadModel(root, t.get()));
    std::vector<AddedToken> added;
    if (root.contains("added_tokens")) {
      for (const json& a : root["added_tokens"]) {
        AddedToken token;
        token.id = a.at("id").get<int32_t>();
        token.content = a.at("content").get<std::string>();
        token.single_word = a.value("single_word", false);
        token.lstrip = a.value("lstrip", false);
        token.rstrip = a.value("rstrip", false);
        token.normalized = a.value("normalized", true);
        token.special = a.value("special", false);
        if (token.id < 0) return InvalidArgumentError(fmt::format("added token \"{}\" has id {}", token.content, token.id));
        added.push_back(std::move(token));
      }
    }
    const Normalizer* normalizer = t->normalizer_.get();
    t->added_ = std::make_unique<AddedVocabulary>(std::move(added), [normalizer](const std::string& s) {
      return normalizer ? normalizer->Apply(s) : s;
    });
    TANDEM_ASSIGN_OR_RETURN(t->decoder_, Decoder::FromJson(root.value("decoder", json())));
    TANDEM_RETURN_IF_ERROR(LoadPostProcessor(root.value("post_processor", json()), t.get()));
    t->Finish();
    TANDEM_RETURN_IF_ERROR(LoadConfigs(config, generation, t.get()));
  } catch (const json::exception& e) {
    return InvalidArgumentError(fmt::format("tokenizer.json: {}", e.what()));
  }
  return t;
}

StatusOr<std::unique_ptr<Tokenizer>> TokenizerLoader::FromVocabSpec(const VocabSpec& spec) {
  std::unique_ptr<Tokenizer> t(new Tokenizer());
  if (spec.tokens.empty()) return InvalidArgumentError("GGUF vocabulary has no tokens");
  if (!spec.token_types.empty() && spec.token_types.size() != spec.tokens.size()) {
    return InvalidArgumentError(fmt::format("GGUF vocabulary: {} token types for {} tokens",
                                            spec.token_types.size(), spec.tokens.size()));
  }
  const bool byte_level = spec.model == "gpt2";
  if (!byte_level && spec.model != "llama") {
    return UnimplementedError(fmt::format(
        "tokenizer.ggml.model \"{}\" is not supported (supported: gpt2, llama)", spec.model));
  }
  auto type_of = [&](size_t id) {
    return spec.token_types.empty() ? VocabTokenType::kNormal : spec.token_types[id];
  };
  std::vector<std::pair<std::string, std::string>> merges;
  for (const std::string& m : spec.merges) {
    size_t sp = m.find(' ', 1);
    if (sp == std::string::npos) return InvalidArgumentError(fmt::format("bad GGUF merge \"{}\"", m));
    merges.emplace_back(m.substr(0, sp), m.substr(sp + 1));
  }
  if (!byte_level && merges.empty()) {
    // SentencePiece BPE: derive merges from scores as HF's converter does (higher score first).
    std::unordered_map<std::string, int32_t> ids;
    for (size_t i = 0; i < spec.tokens.size(); ++i) ids.emplace(spec.tokens[i], static_cast<int32_t>(i));
    struct M { float score; int32_t l, r; };
    std::vector<M> found;
    for (size_t i = 0; i < spec.tokens.size(); ++i) {
      if (type_of(i) != VocabTokenType::kNormal) continue;
      const std::string& tok = spec.tokens[i];
      for (size_t cut = 1; cut < tok.size(); ++cut) {
        if ((static_cast<uint8_t>(tok[cut]) & 0xC0) == 0x80) continue;
        auto l = ids.find(tok.substr(0, cut));
        auto r = ids.find(tok.substr(cut));
        if (l == ids.end() || r == ids.end()) continue;
        float score = i < spec.scores.size() ? spec.scores[i] : -static_cast<float>(i);
        found.push_back({score, l->second, r->second});
      }
    }
    std::stable_sort(found.begin(), found.end(), [](const M& a, const M& b) {
      if (a.score != b.score) return a.score > b.score;
      return a.l != b.l ? a.l < b.l : a.r < b.r;
    });
    for (const M& m : found) merges.emplace_back(spec.tokens[m.l], spec.tokens[m.r]);
  }
  if (byte_level) {
    TANDEM_ASSIGN_OR_RETURN(auto regexes, RegexesForPre(spec.pre));
    TANDEM_ASSIGN_OR_RETURN(t->pre_tokenizer_, PreTokenizer::FromRegexes(regexes, true));
    t->decoder_ = Decoder::ByteLevel();
  } else {
    json meta = {{"type", "Metaspace"},
                 {"replacement", "\u2581"},
                 {"prepend_scheme", spec.add_space_prefix ? "first" : "never"},
                 {"split", false}};
    TANDEM_ASSIGN_OR_RETURN(t->pre_tokenizer_, PreTokenizer::FromJson(meta));
    t->decoder_ = Decoder::SentencePiece(spec.add_space_prefix);
  }
  BpeOptions options;
  options.byte_level = byte_level;
  options.byte_fallback = !byte_level;
  options.fuse_unk = !byte_level;
  options.ignore_merges = spec.pre == "llama-bpe" || spec.pre == "llama3";
  options.unk_id = spec.unknown_id;
  TANDEM_ASSIGN_OR_RETURN(t->model_, BpeModel::Create(spec.tokens, merges, options));
  std::vector<AddedToken> added;
  for (size_t i = 0; i < spec.tokens.size(); ++i) {
    VocabTokenType type = type_of(i);
    if (type != VocabTokenType::kControl && type != VocabTokenType::kUserDefined) continue;
    AddedToken token;
    token.id = static_cast<int32_t>(i);
    token.content = spec.tokens[i];
    token.special = type == VocabTokenType::kControl;
    added.push_back(std::move(token));
  }
  t->added_ = std::make_unique<AddedVocabulary>(std::move(added), [](const std::string& s) { return s; });
  t->Finish();
  if (spec.add_bos && spec.bos_id) t->prefix_ids_.push_back(*spec.bos_id);
  if (spec.add_eos && spec.eos_id) t->suffix_ids_.push_back(*spec.eos_id);
  t->bos_id_ = spec.bos_id;
  if (spec.eos_id) t->eos_ids_.push_back(*spec.eos_id);
  if (spec.eot_id && spec.eot_id != spec.eos_id) t->eos_ids_.push_back(*spec.eot_id);
  if (spec.bos_id) t->bos_token_ = t->IdToToken(*spec.bos_id).value_or("");
  if (spec.eos_id) t->eos_token_ = t->IdToToken(*spec.eos_id).value_or("");
  t->chat_template_ = spec.chat_template;
  return t;
}

StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJson(std::string_view tokenizer_json,
                                                        std::string_view tokenizer_config_json,
                                                        std::string_view generation_config_json) {
  return TokenizerLoader::FromJson(tokenizer_json, tokenizer_config_json, generation_config_json);
}

StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromVocabSpec(const VocabSpec& spec) {
  return TokenizerLoader::FromVocabSpec(spec);
}

StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromDirectory(const std::filesystem::path& dir) {
  const auto tokenizer_path = dir / "tokenizer.json";
  if (!std::filesystem::exists(tokenizer_path)) {
    return NotFoundError(fmt::format("{} not found (expected a model or tokenizer directory)",
                                     tokenizer_path.string()));
  }
  TANDEM_ASSIGN_OR_RETURN(std::string tokenizer_json, ReadFile(tokenizer_path));
  std::string config_json, generation_json;
  if (std::filesystem::exists(dir / "tokenizer_config.json")) {
    TANDEM_ASSIGN_OR_RETURN(config_json, ReadFile(dir / "tokenizer_config.json"));
  }
  if (std::filesystem::exists(dir / "generation_config.json")) {
    TANDEM_ASSIGN_OR_RETURN(generation_json, ReadFile(dir / "generation_config.json"));
  }
  auto result = FromJson(tokenizer_json, config_json, generation_json);
  if (!result.ok()) return result.status().WithContext(dir.string());
  if (std::filesystem::exists(dir / "chat_template.jinja")) {
    TANDEM_ASSIGN_OR_RETURN(std::string tmpl, ReadFile(dir / "chat_template.jinja"));
    (*result)->chat_template_ = std::move(tmpl);
  }
  return result;
}

}  // namespace tandem
