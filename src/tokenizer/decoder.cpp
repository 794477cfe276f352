#include "tokenizer/decoder.h"

#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "tokenizer/byte_level.h"
#include "tokenizer/unicode.h"

namespace tandem {
namespace {

using nlohmann::json;

constexpr std::string_view kReplacementUtf8 = "\xEF\xBF\xBD";

class ByteLevelStep final : public DecodeStep {
 public:
  std::unique_ptr<DecodeStep> Clone() const override { return std::make_unique<ByteLevelStep>(); }
  void Push(DecodePiece piece, std::vector<DecodePiece>* out) override {
    auto bytes = byte_level::ToBytes(piece.text);
    // HF: a token with a character outside the byte alphabet is taken as its UTF-8 bytes.
    DecodePiece result{bytes ? std::move(*bytes) : std::move(piece.text), started_};
    started_ = true;  // ByteLevel returns one string: everything after is fused
    out->push_back(std::move(result));
  }

 private:
  bool started_ = false;
};

class JoinSpaceStep final : public DecodeStep {
 public:
  std::unique_ptr<DecodeStep> Clone() const override { return std::make_unique<JoinSpaceStep>(); }
  void Push(DecodePiece piece, std::vector<DecodePiece>* out) override {
    if (started_ && !piece.continues) piece.text.insert(0, " ");
    started_ = true;
    piece.continues = true;
    out->push_back(std::move(piece));
  }

 private:
  bool started_ = false;
};

class ReplaceStep final : public DecodeStep {
 public:
  ReplaceStep(std::string pattern, std::string content)
      : pattern_(std::move(pattern)), content_(std::move(content)) {}
  std::unique_ptr<DecodeStep> Clone() const override {
    return std::make_unique<ReplaceStep>(pattern_, content_);
  }
  void Push(DecodePiece piece, std::vector<DecodePiece>* out) override {
    if (!pattern_.empty()) {
      std::string result;
      size_t pos = 0;
      while (true) {
        size_t hit = piece.text.find(pattern_, pos);
        if (hit == std::string::npos) break;
        result.append(piece.text, pos, hit - pos);
        result.append(content_);
        pos = hit + pattern_.size();
      }
      result.append(piece.text, pos);
      piece.text = std::move(result);
    }
    out->push_back(std::move(piece));
  }

 private:
  std::string pattern_, content_;
};

class ByteFallbackStep final : public DecodeStep {
 public:
  std::unique_ptr<DecodeStep> Clone() const override { return std::make_unique<ByteFallbackStep>(); }
  void Push(DecodePiece piece, std::vector<DecodePiece>* out) override {
    const std::string& t = piece.text;
    if (t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>' && IsHex(t[3]) && IsHex(t[4])) {
      bytes_.push_back(static_cast<char>(std::stoi(t.substr(3, 2), nullptr, 16)));
      if (bytes_.size() == 1) first_continues_ = piece.continues;
      return;
    }
    Flush(out);
    out->push_back(std::move(piece));
  }
  void Flush(std::vector<DecodePiece>* out) override {
    if (bytes_.empty()) return;
    if (unicode::IsValidUtf8(bytes_)) {
      out->push_back({bytes_, first_continues_});
    } else {
      for (size_t i = 0; i < bytes_.size(); ++i) {
        out->push_back({std::string(kReplacementUtf8), i == 0 && first_continues_});
      }
    }
    bytes_.clear();
  }

 private:
  static bool IsHex(char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
  }
  std::string bytes_;
  bool first_continues_ = false;
};

class FuseStep final : public DecodeStep {
 public:
  std::unique_ptr<DecodeStep> Clone() const override { return std::make_unique<FuseStep>(); }
  void Push(DecodePiece piece, std::vector<DecodePiece>* out) override {
    piece.continues = started_;
    started_ = true;
    out->push_back(std::move(piece));
  }

 private:
  bool started_ = false;
};

// Strips up to `start` leading and `stop` trailing `content` characters of every token.
class StripStep final : public DecodeStep {
 public:
  StripStep(uint32_t content, size_t start, size_t stop) : content_(content), start_(start), stop_(stop) {}
  std::unique_ptr<DecodeStep> Clone() const override {
    return std::make_unique<StripStep>(content_, start_, stop_);
  }
  void Push(DecodePiece piece, std::vector<DecodePiece>* out) override {
    if (!piece.continues) {
      EndToken(out);
      stripped_ = 0;
      in_prefix_ = true;
    }
    std::string text;
    for (size_t pos = 0; pos < piece.text.size();) {
      uint32_t cp = unicode::DecodeUtf8(piece.text, &pos);
      if (in_prefix_ && cp == content_ && stripped_ < start_) {
        ++stripped_;
        continue;
      }
      in_prefix_ = false;
      if (stop_ > 0) {
        if (cp == content_) {
          ++held_count_;
          unicode::AppendUtf8(cp, &held_);
          continue;
        }
        text += held_;
        held_.clear();
        held_count_ = 0;
      }
      unicode::AppendUtf8(cp, &text);
    }
    piece.text = std::move(text);
    token_open_ = true;
    out->push_back(std::move(piece));
  }
  void Flush(std::vector<DecodePiece>* out) override { EndToken(out); }

 private:
  void EndToken(std::vector<DecodePiece>* out) {
    if (!token_open_) return;
    token_open_ = false;
    if (held_count_ > 0) {
      size_t keep = held_count_ > stop_ ? held_count_ - stop_ : 0;
      std::string text;
      for (size_t i = 0; i < keep; ++i) unicode::AppendUtf8(content_, &text);
      out->push_back({std::move(text), true});
    }
    held_.clear();
    held_count_ = 0;
  }
  uint32_t content_;
  size_t start_, stop_;
  size_t stripped_ = 0;
  bool in_prefix_ = true;
  bool token_open_ = false;
  std::string held_;
  size_t held_count_ = 0;
};

class MetaspaceStep final : public DecodeStep {
 public:
  MetaspaceStep(std::string replacement, bool prepend)
      : replacement_(std::move(replacement)), prepend_(prepend) {}
  std::unique_ptr<DecodeStep> Clone() const override {
    return std::make_unique<MetaspaceStep>(replacement_, prepend_);
  }
  void Push(DecodePiece piece, std::vector<DecodePiece>* out) override {
    if (!piece.continues) ++index_;
    const bool first = index_ == 1;
    std::string result;
    size_t pos = 0;
    while (!replacement_.empty()) {
      size_t hit = piece.text.find(replacement_, pos);
      if (hit == std::string::npos) break;
      result.append(piece.text, pos, hit - pos);
      if (!(first && prepend_)) result.push_back(' ');
      pos = hit + replacement_.size();
    }
    result.append(piece.text, pos);
    piece.text = std::move(result);
    out->push_back(std::move(piece));
  }

 private:
  std::string replacement_;
  bool prepend_;
  size_t index_ = 0;
};

StatusOr<std::unique_ptr<DecodeStep>> BuildStep(const json& config,
                                                std::vector<std::unique_ptr<DecodeStep>>* steps) {
  const std::string type = config.at("type").get<std::string>();
  if (type == "Sequence") {
    for (const json& d : config.at("decoders")) {
      TANDEM_ASSIGN_OR_RETURN(auto step, BuildStep(d, steps));
      if (step) steps->push_back(std::move(step));
    }
    return std::unique_ptr<DecodeStep>();
  }
  if (type == "ByteLevel") return std::unique_ptr<DecodeStep>(new ByteLevelStep());
  if (type == "ByteFallback") return std::unique_ptr<DecodeStep>(new ByteFallbackStep());
  if (type == "Fuse") return std::unique_ptr<DecodeStep>(new FuseStep());
  if (type == "Replace") {
    const json& pattern = config.at("pattern");
    if (!pattern.contains("String")) {
      return UnimplementedError("decoder Replace with a Regex pattern is not supported");
    }
    return std::unique_ptr<DecodeStep>(
        new ReplaceStep(pattern["String"].get<std::string>(), config.at("content").get<std::string>()));
  }
  if (type == "Strip") {
    std::string content = config.at("content").get<std::string>();
    size_t pos = 0;
    uint32_t cp = content.empty() ? ' ' : unicode::DecodeUtf8(content, &pos);
    return std::unique_ptr<DecodeStep>(
        new StripStep(cp, config.value("start", size_t{0}), config.value("stop", size_t{0})));
  }
  if (type == "Metaspace") {
    bool prepend = true;
    if (config.contains("prepend_scheme")) {
      prepend = config["prepend_scheme"].get<std::string>() != "never";
    } else if (config.contains("add_prefix_space")) {
      prepend = config["add_prefix_space"].get<bool>();
    }
    return std::unique_ptr<DecodeStep>(
        new MetaspaceStep(config.value("replacement", "\u2581"), prepend));
  }
  return UnimplementedError(fmt::format(
      "decoder type \"{}\" is not supported (supported: ByteLevel, Replace, ByteFallback, Fuse, "
      "Strip, Metaspace, Sequence)",
      type));
}

}  // namespace

void DecodeStream::Sink(std::string_view bytes, std::string* out) {
  pending_.append(bytes);
  // Hold back a trailing, still incomplete (but so far valid) UTF-8 sequence.
  size_t keep_from = pending_.size();
  for (size_t back = 1; back <= 3 && back <= pending_.size(); ++back) {
    size_t i = pending_.size() - back;
    bool complete;
    size_t len = unicode::Utf8SubpartLength(pending_, i, &complete);
    if (len == 0) continue;
    if (!complete && i + len == pending_.size()) keep_from = i;
    break;
  }
  if (keep_from == 0) return;
  out->append(unicode::Utf8Lossy(std::string_view(pending_).substr(0, keep_from)));
  pending_.erase(0, keep_from);
}

void DecodeStream::Run(size_t first_step, std::vector<DecodePiece> pieces, bool flush,
                       std::string* out) {
  for (size_t s = first_step; s < steps_.size(); ++s) {
    std::vector<DecodePiece> next;
    for (auto& p : pieces) steps_[s]->Push(std::move(p), &next);
    if (flush) steps_[s]->Flush(&next);
    pieces.swap(next);
  }
  for (const auto& p : pieces) Sink(p.text, out);
}

void DecodeStream::Push(std::string_view token, std::string* out) {
  std::vector<DecodePiece> pieces;
  pieces.push_back({std::string(token), false});
  Run(0, std::move(pieces), false, out);
}

void DecodeStream::Flush(std::string* out) {
  Run(0, {}, true, out);
  if (!pending_.empty()) {
    out->append(unicode::Utf8Lossy(pending_));
    pending_.clear();
  }
}

StatusOr<std::unique_ptr<Decoder>> Decoder::FromJson(const json& config) {
  std::unique_ptr<Decoder> decoder(new Decoder());
  if (config.is_null()) {
    decoder->steps_.push_back(std::make_unique<JoinSpaceStep>());
    return decoder;
  }
  try {
    TANDEM_ASSIGN_OR_RETURN(auto step, BuildStep(config, &decoder->steps_));
    if (step) decoder->steps_.push_back(std::move(step));
  } catch (const json::exception& e) {
    return InvalidArgumentError(fmt::format("decoder: {}", e.what()));
  }
  return decoder;
}

std::unique_ptr<Decoder> Decoder::ByteLevel() {
  std::unique_ptr<Decoder> decoder(new Decoder());
  decoder->steps_.push_back(std::make_unique<ByteLevelStep>());
  return decoder;
}

std::unique_ptr<Decoder> Decoder::SentencePiece(bool strip_leading_space) {
  std::unique_ptr<Decoder> decoder(new Decoder());
  decoder->steps_.push_back(std::make_unique<ReplaceStep>("\u2581", " "));
  decoder->steps_.push_back(std::make_unique<ByteFallbackStep>());
  decoder->steps_.push_back(std::make_unique<FuseStep>());
  if (strip_leading_space) decoder->steps_.push_back(std::make_unique<StripStep>(' ', 1, 0));
  return decoder;
}

std::unique_ptr<DecodeStream> Decoder::NewStream() const {
  std::vector<std::unique_ptr<DecodeStep>> steps;
  for (const auto& s : steps_) steps.push_back(s->Clone());
  return std::make_unique<DecodeStream>(std::move(steps));
}

}  // namespace tandem
