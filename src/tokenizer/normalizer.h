// Normalizer: the `normalizer` section of a HF tokenizer.json (NFC, NFD, NFKC, NFKD, Lowercase,
// Strip, StripAccents, Replace, Prepend, Sequence). Immutable after construction; thread-safe.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include <nlohmann/json_fwd.hpp>

#include "tandem/status.h"

namespace tandem {

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual std::string Apply(std::string_view text) const = 0;

  // Builds from the JSON object (not null). Unknown types give an Unimplemented error naming them.
  static StatusOr<std::unique_ptr<Normalizer>> FromJson(const nlohmann::json& config);
};

}  // namespace tandem
