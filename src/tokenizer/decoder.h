// Decoder: the `decoder` section of a HF tokenizer.json (ByteLevel, Replace, ByteFallback, Fuse,
// Strip, Metaspace, Sequence; none = join with spaces), run as a stream.
//
// HF decoders work on the whole token list; here every step is a small state machine that sees
// tokens one at a time, so the same code serves Tokenizer::Decode (push all, then flush) and
// IncrementalDecoder (push one at a time). Text is released only when no later token can change
// it: an incomplete UTF-8 sequence or a run of <0xNN> byte tokens is held until it is settled.
// Hence the concatenation of streamed output equals the one-shot decode by construction.
// A Decoder is immutable and shared; a DecodeStream belongs to one thread.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "tandem/status.h"

namespace tandem {

// One token on its way through the steps; `continues` marks text fused onto the previous token.
struct DecodePiece {
  std::string text;
  bool continues = false;
};

class DecodeStep {
 public:
  virtual ~DecodeStep() = default;
  virtual std::unique_ptr<DecodeStep> Clone() const = 0;  // fresh state, same configuration
  virtual void Push(DecodePiece piece, std::vector<DecodePiece>* out) = 0;
  virtual void Flush(std::vector<DecodePiece>* out) { (void)out; }
};

class DecodeStream {
 public:
  explicit DecodeStream(std::vector<std::unique_ptr<DecodeStep>> steps) : steps_(std::move(steps)) {}
  // Appends to *out the text that became final.
  void Push(std::string_view token, std::string* out);
  void Flush(std::string* out);

 private:
  void Run(size_t first_step, std::vector<DecodePiece> pieces, bool flush, std::string* out);
  void Sink(std::string_view bytes, std::string* out);

  std::vector<std::unique_ptr<DecodeStep>> steps_;
  std::string pending_;  // bytes not yet released (a possibly incomplete UTF-8 sequence)
};

class Decoder {
 public:
  // `config` may be null (tokens joined with a space, as HF does without a decoder).
  static StatusOr<std::unique_ptr<Decoder>> FromJson(const nlohmann::json& config);
  static std::unique_ptr<Decoder> ByteLevel();
  // Replace(U+2581 -> ' '), ByteFallback, Fuse, Strip(' ', 1, 0): SentencePiece-style vocabularies.
  static std::unique_ptr<Decoder> SentencePiece(bool strip_leading_space);

  std::unique_ptr<DecodeStream> NewStream() const;

 private:
  std::vector<std::unique_ptr<DecodeStep>> steps_;
};

}  // namespace tandem
