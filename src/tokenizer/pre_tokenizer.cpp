#include "tokenizer/pre_tokenizer.h"

#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "tokenizer/unicode.h"

namespace tandem {
namespace {

using nlohmann::json;

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

// Turns (range, is_match) parts covering the text into words, as HF NormalizedString::split does.
void EmitParts(std::string_view text, const std::vector<std::pair<uint32_t, uint32_t>>& byte_parts,
               const std::vector<bool>& is_match, SplitBehavior behavior,
               std::vector<std::string>* out) {
  std::vector<std::pair<uint32_t, uint32_t>> result;
  const size_t n = byte_parts.size();
  switch (behavior) {
    case SplitBehavior::kRemoved:
      for (size_t i = 0; i < n; ++i) {
        if (!is_match[i]) result.push_back(byte_parts[i]);
      }
      break;
    case SplitBehavior::kIsolated: result = byte_parts; break;
    case SplitBehavior::kMergedWithPrevious: {
      bool previous_match = false;
      for (size_t i = 0; i < n; ++i) {
        if (is_match[i] && !previous_match && !result.empty()) {
          result.back().second = byte_parts[i].second;
        } else {
          result.push_back(byte_parts[i]);
        }
        previous_match = is_match[i];
      }
      break;
    }
    case SplitBehavior::kMergedWithNext: {
      bool previous_match = false;
      for (size_t k = n; k-- > 0;) {
        if (is_match[k] && !previous_match && !result.empty()) {
          result.back().first = byte_parts[k].first;
        } else {
          result.push_back(byte_parts[k]);
        }
        previous_match = is_match[k];
      }
      std::reverse(result.begin(), result.end());
      break;
    }
    case SplitBehavior::kContiguous: {
      bool previous_match = false;
      for (size_t i = 0; i < n; ++i) {
        if (is_match[i] == previous_match && !result.empty()) {
          result.back().second = byte_parts[i].second;
        } else {
          result.push_back(byte_parts[i]);
        }
        previous_match = is_match[i];
      }
      break;
    }
  }
  for (const auto& [b, e] : result) {
    if (e > b) out->emplace_back(text.substr(b, e - b));
  }
}

// Builds the covering parts from code point matches.
void PartsFromMatches(const Utf8Text& decoded, const std::vector<std::pair<uint32_t, uint32_t>>& matches,
                      bool invert, std::vector<std::pair<uint32_t, uint32_t>>* parts,
                      std::vector<bool>* is_match) {
  uint32_t prev = 0;
  const uint32_t total = decoded.offsets.back();
  for (const auto& [b, e] : matches) {
    uint32_t bb = decoded.offsets[b], be = decoded.offsets[e];
    if (bb != prev) {
      parts->emplace_back(prev, bb);
      is_match->push_back(invert);
    }
    parts->emplace_back(bb, be);
    is_match->push_back(!invert);
    prev = be;
  }
  if (prev != total) {
    parts->emplace_back(prev, total);
    is_match->push_back(invert);
  }
}

class RegexSplit final : public PreTokenizer {
 public:
  RegexSplit(std::unique_ptr<Regex> regex, SplitBehavior behavior, bool invert)
      : regex_(std::move(regex)), behavior_(behavior), invert_(invert) {}

  void Split(std::string_view piece, bool, PreTokenizeScratch* scratch,
             std::vector<std::string>* out) const override {
    scratch->text.Assign(piece);
    scratch->matches.clear();
    regex_->FindAll(scratch->text, &scratch->matches);
    if (behavior_ == SplitBehavior::kIsolated && !invert_) {
      // Fast path: matches and the gaps between them, in order.
      uint32_t prev = 0;
      const auto& off = scratch->text.offsets;
      for (const auto& [b, e] : scratch->matches) {
        if (off[b] != prev) out->emplace_back(piece.substr(prev, off[b] - prev));
        out->emplace_back(piece.substr(off[b], off[e] - off[b]));
        prev = off[e];
      }
      if (prev != piece.size()) out->emplace_back(piece.substr(prev));
      return;
    }
    std::vector<std::pair<uint32_t, uint32_t>> parts;
    std::vector<bool> is_match;
    PartsFromMatches(scratch->text, scratch->matches, invert_, &parts, &is_match);
    EmitParts(piece, parts, is_match, behavior_, out);
  }

 private:
  std::unique_ptr<Regex> regex_;
  SplitBehavior behavior_;
  bool invert_;
};

class ByteLevelPreTokenizer final : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, std::unique_ptr<Regex> regex)
      : add_prefix_space_(add_prefix_space), regex_(std::move(regex)) {}

  void Split(std::string_view piece, bool, PreTokenizeScratch* scratch,
             std::vector<std::string>* out) const override {
    std::string prefixed;
    if (add_prefix_space_ && (piece.empty() || piece[0] != ' ')) {
      prefixed = " " + std::string(piece);
      piece = prefixed;
    }
    if (!regex_) {
      if (!piece.empty()) out->emplace_back(piece);
      return;
    }
    scratch->text.Assign(piece);
    scratch->matches.clear();
    regex_->FindAll(scratch->text, &scratch->matches);
    uint32_t prev = 0;
    const auto& off = scratch->text.offsets;
    for (const auto& [b, e] : scratch->matches) {
      if (off[b] != prev) out->emplace_back(piece.substr(prev, off[b] - prev));
      out->emplace_back(piece.substr(off[b], off[e] - off[b]));
      prev = off[e];
    }
    if (prev != piece.size()) out->emplace_back(piece.substr(prev));
  }
  bool IsIdentity() const override { return !add_prefix_space_ && !regex_; }
  bool IsByteLevel() const override { return true; }

 private:
  bool add_prefix_space_;
  std::unique_ptr<Regex> regex_;
};

class MetaspacePreTokenizer final : public PreTokenizer {
 public:
  enum class Prepend { kAlways, kFirst, kNever };
  MetaspacePreTokenizer(std::string replacement, Prepend prepend, bool split)
      : replacement_(std::move(replacement)), prepend_(prepend), split_(split) {}

  void Split(std::string_view piece, bool at_start, PreTokenizeScratch*,
             std::vector<std::string>* out) const override {
    std::string text;
    text.reserve(piece.size() + 8);
    for (char c : piece) {
      if (c == ' ') {
        text += replacement_;
      } else {
        text.push_back(c);
      }
    }
    const bool starts = text.compare(0, replacement_.size(), replacement_) == 0;
    if (!starts && (prepend_ == Prepend::kAlways || (prepend_ == Prepend::kFirst && at_start))) {
      text.insert(0, replacement_);
    }
    if (!split_) {
      if (!text.empty()) out->push_back(std::move(text));
      return;
    }
    // MergedWithNext on the replacement character.
    size_t start = 0;
    size_t pos = text.find(replacement_, 1);
    while (pos != std::string::npos) {
      if (pos > start) out->push_back(text.substr(start, pos - start));
      start = pos;
      pos = text.find(replacement_, pos + replacement_.size());
    }
    if (start < text.size()) out->push_back(text.substr(start));
  }

 private:
  std::string replacement_;
  Prepend prepend_;
  bool split_;
};

// Digits, Whitespace and WhitespaceSplit: character-class splits.
class CharSplit final : public PreTokenizer {
 public:
  enum class Kind { kDigitsIndividual, kDigitsContiguous, kWhitespaceSplit };
  explicit CharSplit(Kind kind) : kind_(kind) {}

  void Split(std::string_view piece, bool, PreTokenizeScratch* scratch,
             std::vector<std::string>* out) const override {
    std::vector<std::pair<uint32_t, uint32_t>> parts;
    std::vector<bool> is_match;
    for (size_t pos = 0; pos < piece.size();) {
      size_t start = pos;
      uint32_t cp = unicode::DecodeUtf8(piece, &pos);
      bool m = kind_ == Kind::kWhitespaceSplit ? unicode::IsWhitespace(cp) : unicode::IsNumber(cp);
      parts.emplace_back(start, pos);
      is_match.push_back(m);
    }
    SplitBehavior behavior = kind_ == Kind::kWhitespaceSplit ? SplitBehavior::kRemoved
                             : kind_ == Kind::kDigitsIndividual ? SplitBehavior::kIsolated
                                                                : SplitBehavior::kContiguous;
    if (behavior == SplitBehavior::kIsolated) {
      // Merge runs of non-matching characters first (HF splits on matches only).
      std::vector<std::pair<uint32_t, uint32_t>> merged;
      std::vector<bool> merged_match;
      for (size_t i = 0; i < parts.size(); ++i) {
        if (!is_match[i] && !merged.empty() && !merged_match.back()) {
          merged.back().second = parts[i].second;
        } else {
          merged.push_back(parts[i]);
          merged_match.push_back(is_match[i]);
        }
      }
      parts.swap(merged);
      is_match.swap(merged_match);
    } else if (behavior == SplitBehavior::kRemoved) {
      std::vector<std::pair<uint32_t, uint32_t>> merged;
      std::vector<bool> merged_match;
      for (size_t i = 0; i < parts.size(); ++i) {
        if (!merged.empty() && merged_match.back() == is_match[i]) {
          merged.back().second = parts[i].second;
        } else {
          merged.push_back(parts[i]);
          merged_match.push_back(is_match[i]);
        }
      }
      parts.swap(merged);
      is_match.swap(merged_match);
    }
    EmitParts(piece, parts, is_match, behavior, out);
  }

 private:
  Kind kind_;
};

class SequencePreTokenizer final : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> steps) {
    for (auto& s : steps) {
      byte_level_ = byte_level_ || s->IsByteLevel();
      if (!s->IsIdentity()) steps_.push_back(std::move(s));
    }
  }
  void Split(std::string_view piece, bool at_start, PreTokenizeScratch* scratch,
             std::vector<std::string>* out) const override {
    if (steps_.empty()) {
      if (!piece.empty()) out->emplace_back(piece);
      return;
    }
    std::vector<std::string> current{std::string(piece)};
    std::vector<std::string> next;
    for (size_t s = 0; s < steps_.size(); ++s) {
      std::vector<std::string>* target = s + 1 == steps_.size() ? out : &next;
      for (size_t i = 0; i < current.size(); ++i) {
        steps_[s]->Split(current[i], at_start && i == 0, scratch, target);
      }
      if (target == &next) {
        current.swap(next);
        next.clear();
      }
    }
  }
  bool IsIdentity() const override { return steps_.empty(); }
  bool IsByteLevel() const override { return byte_level_; }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> steps_;
  bool byte_level_ = false;
};

StatusOr<SplitBehavior> ParseBehavior(const std::string& name) {
  if (name == "Removed") return SplitBehavior::kRemoved;
  if (name == "Isolated") return SplitBehavior::kIsolated;
  if (name == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (name == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (name == "Contiguous") return SplitBehavior::kContiguous;
  return InvalidArgumentError(fmt::format("pre_tokenizer Split: unknown behavior \"{}\"", name));
}

std::string EscapeRegex(std::string_view literal) {
  std::string out;
  for (char c : literal) {
    if (std::string_view(R"(\^$.|?*+()[]{}-)").find(c) != std::string_view::npos) out.push_back('\\');
    out.push_back(c);
  }
  return out;
}

StatusOr<std::unique_ptr<PreTokenizer>> Build(const json& config) {
  if (!config.is_object() || !config.contains("type") || !config["type"].is_string()) {
    return InvalidArgumentError("pre_tokenizer: expected an object with a string \"type\"");
  }
  const std::string type = config["type"].get<std::string>();
  if (type == "ByteLevel") {
    std::unique_ptr<Regex> regex;
    if (config.value("use_regex", true)) {
      TANDEM_ASSIGN_OR_RETURN(regex, Regex::Compile(kGpt2Pattern));
    }
    return std::unique_ptr<PreTokenizer>(
        new ByteLevelPreTokenizer(config.value("add_prefix_space", true), std::move(regex)));
  }
  if (type == "Split") {
    const json& pattern = config.at("pattern");
    std::string regex_text = pattern.contains("Regex") ? pattern["Regex"].get<std::string>()
                                                       : EscapeRegex(pattern.at("String").get<std::string>());
    TANDEM_ASSIGN_OR_RETURN(auto regex, Regex::Compile(regex_text));
    TANDEM_ASSIGN_OR_RETURN(auto behavior, ParseBehavior(config.value("behavior", "Isolated")));
    return std::unique_ptr<PreTokenizer>(
        new RegexSplit(std::move(regex), behavior, config.value("invert", false)));
  }
  if (type == "Metaspace") {
    std::string replacement = config.value("replacement", "\u2581");
    auto prepend = MetaspacePreTokenizer::Prepend::kAlways;
    if (config.contains("prepend_scheme")) {
      std::string scheme = config["prepend_scheme"].get<std::string>();
      if (scheme == "first") prepend = MetaspacePreTokenizer::Prepend::kFirst;
      if (scheme == "never") prepend = MetaspacePreTokenizer::Prepend::kNever;
    } else if (config.contains("add_prefix_space") && !config["add_prefix_space"].get<bool>()) {
      prepend = MetaspacePreTokenizer::Prepend::kNever;
    }
    return std::unique_ptr<PreTokenizer>(
        new MetaspacePreTokenizer(replacement, prepend, config.value("split", true)));
  }
  if (type == "Digits") {
    return std::unique_ptr<PreTokenizer>(new CharSplit(config.value("individual_digits", false)
                                                           ? CharSplit::Kind::kDigitsIndividual
                                                           : CharSplit::Kind::kDigitsContiguous));
  }
  if (type == "WhitespaceSplit") {
    return std::unique_ptr<PreTokenizer>(new CharSplit(CharSplit::Kind::kWhitespaceSplit));
  }
  if (type == "Whitespace") {
    TANDEM_ASSIGN_OR_RETURN(auto regex, Regex::Compile(R"(\w+|[^\w\s]+)"));
    return std::unique_ptr<PreTokenizer>(new RegexSplit(std::move(regex), SplitBehavior::kRemoved, true));
  }
  if (type == "Sequence") {
    std::vector<std::unique_ptr<PreTokenizer>> steps;
    for (const json& step : config.at("pretokenizers")) {
      TANDEM_ASSIGN_OR_RETURN(auto p, Build(step));
      steps.push_back(std::move(p));
    }
    return std::unique_ptr<PreTokenizer>(new SequencePreTokenizer(std::move(steps)));
  }
  return UnimplementedError(fmt::format(
      "pre_tokenizer type \"{}\" is not supported (supported: ByteLevel, Split, Metaspace, Digits, "
      "Whitespace, WhitespaceSplit, Sequence)",
      type));
}

}  // namespace

void PreTokenizer::Run(std::string_view text, bool at_start, PreTokenizeScratch* scratch,
                       std::vector<std::string>* words) const {
  Split(text, at_start, scratch, words);
}

StatusOr<std::unique_ptr<PreTokenizer>> PreTokenizer::FromJson(const json& config) {
  try {
    TANDEM_ASSIGN_OR_RETURN(auto p, Build(config));
    if (config.value("type", "") == "Sequence") return p;
    std::vector<std::unique_ptr<PreTokenizer>> one;
    one.push_back(std::move(p));
    return std::unique_ptr<PreTokenizer>(new SequencePreTokenizer(std::move(one)));
  } catch (const json::exception& e) {
    return InvalidArgumentError(fmt::format("pre_tokenizer: {}", e.what()));
  }
}

StatusOr<std::unique_ptr<PreTokenizer>> PreTokenizer::FromRegexes(
    const std::vector<std::string>& regexes, bool byte_level) {
  std::vector<std::unique_ptr<PreTokenizer>> steps;
  for (const auto& r : regexes) {
    TANDEM_ASSIGN_OR_RETURN(auto regex, Regex::Compile(r));
    steps.push_back(std::unique_ptr<PreTokenizer>(
        new RegexSplit(std::move(regex), SplitBehavior::kIsolated, false)));
  }
  if (byte_level) steps.push_back(std::unique_ptr<PreTokenizer>(new ByteLevelPreTokenizer(false, nullptr)));
  return std::unique_ptr<PreTokenizer>(new SequencePreTokenizer(std::move(steps)));
}

}  // namespace tandem
