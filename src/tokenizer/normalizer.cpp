#include "tokenizer/normalizer.h"

#include <fmt/format.h>

#include <nlohmann/json.hpp>
#include <vector>

#include "tokenizer/regex.h"
#include "tokenizer/unicode.h"

namespace tandem {
namespace {

using nlohmann::json;

class UnicodeNormalizer final : public Normalizer {
 public:
  explicit UnicodeNormalizer(unicode::NormalizationForm form) : form_(form) {}
  std::string Apply(std::string_view text) const override { return unicode::Normalize(text, form_); }

 private:
  unicode::NormalizationForm form_;
};

class LowercaseNormalizer final : public Normalizer {
 public:
  std::string Apply(std::string_view text) const override { return unicode::Lowercase(text); }
};

class StripNormalizer final : public Normalizer {
 public:
  StripNormalizer(bool left, bool right) : left_(left), right_(right) {}
  std::string Apply(std::string_view text) const override {
    size_t begin = 0, end = text.size();
    if (left_) {
      while (begin < end) {
        size_t pos = begin;
        if (!unicode::IsWhitespace(unicode::DecodeUtf8(text, &pos))) break;
        begin = pos;
      }
    }
    if (right_) {
      while (end > begin) {
        size_t start = end - 1;
        while (start > begin && (static_cast<uint8_t>(text[start]) & 0xC0) == 0x80) --start;
        size_t pos = start;
        if (!unicode::IsWhitespace(unicode::DecodeUtf8(text, &pos))) break;
        end = start;
      }
    }
    return std::string(text.substr(begin, end - begin));
  }

 private:
  bool left_, right_;
};

class StripAccentsNormalizer final : public Normalizer {
 public:
  std::string Apply(std::string_view text) const override {
    std::string out;
    for (size_t pos = 0; pos < text.size();) {
      uint32_t cp = unicode::DecodeUtf8(text, &pos);
      if (unicode::GetCategory(cp) != unicode::kMn) unicode::AppendUtf8(cp, &out);
    }
    return out;
  }
};

class PrependNormalizer final : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prepend) : prepend_(std::move(prepend)) {}
  std::string Apply(std::string_view text) const override {
    if (text.empty()) return std::string();
    return prepend_ + std::string(text);
  }

 private:
  std::string prepend_;
};

class ReplaceNormalizer final : public Normalizer {
 public:
  ReplaceNormalizer(std::string literal, std::unique_ptr<Regex> regex, std::string content)
      : literal_(std::move(literal)), regex_(std::move(regex)), content_(std::move(content)) {}
  std::string Apply(std::string_view text) const override {
    std::string out;
    out.reserve(text.size());
    if (!regex_) {
      if (literal_.empty()) return std::string(text);
      size_t pos = 0;
      while (true) {
        size_t hit = text.find(literal_, pos);
        if (hit == std::string_view::npos) break;
        out.append(text.substr(pos, hit - pos));
        out.append(content_);
        pos = hit + literal_.size();
      }
      out.append(text.substr(pos));
      return out;
    }
    Utf8Text decoded;
    decoded.Assign(text);
    std::vector<std::pair<uint32_t, uint32_t>> matches;
    regex_->FindAll(decoded, &matches);
    uint32_t prev = 0;
    for (const auto& [b, e] : matches) {
      out.append(text.substr(prev, decoded.offsets[b] - prev));
      out.append(content_);
      prev = decoded.offsets[e];
    }
    out.append(text.substr(prev));
    return out;
  }

 private:
  std::string literal_;
  std::unique_ptr<Regex> regex_;
  std::string content_;
};

class SequenceNormalizer final : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> steps)
      : steps_(std::move(steps)) {}
  std::string Apply(std::string_view text) const override {
    std::string current(text);
    for (const auto& step : steps_) current = step->Apply(current);
    return current;
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> steps_;
};

StatusOr<std::unique_ptr<Normalizer>> Build(const json& config) {
  if (!config.is_object() || !config.contains("type") || !config["type"].is_string()) {
    return InvalidArgumentError("normalizer: expected an object with a string \"type\"");
  }
  const std::string type = config["type"].get<std::string>();
  if (type == "NFC") return std::unique_ptr<Normalizer>(new UnicodeNormalizer(unicode::NormalizationForm::kNfc));
  if (type == "NFD") return std::unique_ptr<Normalizer>(new UnicodeNormalizer(unicode::NormalizationForm::kNfd));
  if (type == "NFKC") return std::unique_ptr<Normalizer>(new UnicodeNormalizer(unicode::NormalizationForm::kNfkc));
  if (type == "NFKD") return std::unique_ptr<Normalizer>(new UnicodeNormalizer(unicode::NormalizationForm::kNfkd));
  if (type == "Lowercase") return std::unique_ptr<Normalizer>(new LowercaseNormalizer());
  if (type == "StripAccents") return std::unique_ptr<Normalizer>(new StripAccentsNormalizer());
  if (type == "Strip") {
    return std::unique_ptr<Normalizer>(new StripNormalizer(config.value("strip_left", true),
                                                           config.value("strip_right", true)));
  }
  if (type == "Prepend") {
    return std::unique_ptr<Normalizer>(new PrependNormalizer(config.at("prepend").get<std::string>()));
  }
  if (type == "Replace") {
    const json& pattern = config.at("pattern");
    std::string content = config.at("content").get<std::string>();
    if (pattern.contains("String")) {
      return std::unique_ptr<Normalizer>(
          new ReplaceNormalizer(pattern["String"].get<std::string>(), nullptr, content));
    }
    TANDEM_ASSIGN_OR_RETURN(auto regex, Regex::Compile(pattern.at("Regex").get<std::string>()));
    return std::unique_ptr<Normalizer>(new ReplaceNormalizer("", std::move(regex), content));
  }
  if (type == "Sequence") {
    std::vector<std::unique_ptr<Normalizer>> steps;
    for (const json& step : config.at("normalizers")) {
      TANDEM_ASSIGN_OR_RETURN(auto n, Build(step));
      steps.push_back(std::move(n));
    }
    return std::unique_ptr<Normalizer>(new SequenceNormalizer(std::move(steps)));
  }
  return UnimplementedError(fmt::format(
      "normalizer type \"{}\" is not supported (supported: NFC, NFD, NFKC, NFKD, Lowercase, Strip, "
      "StripAccents, Replace, Prepend, Sequence)",
      type));
}

}  // namespace

StatusOr<std::unique_ptr<Normalizer>> Normalizer::FromJson(const json& config) {
  try {
    return Build(config);
  } catch (const json::exception& e) {
    return InvalidArgumentError(fmt::format("normalizer: {}", e.what()));
  }
}

}  // namespace tandem
