#include "model/gguf_type.h"

#include <array>

#include "tandem/check.h"

namespace tandem {
namespace {

constexpr int64_t kQK_K = 256;

// Block layouts from ggml (ggml-common.h); the same table as GGML_QUANT_SIZES in gguf-py.
constexpr std::array kTraits = {
    GgmlTypeTraits{GgmlType::kF32, "F32", 1, 4, true},
    GgmlTypeTraits{GgmlType::kF16, "F16", 1, 2, true},
    GgmlTypeTraits{GgmlType::kQ4_0, "Q4_0", 32, 2 + 16, true},
    GgmlTypeTraits{GgmlType::kQ4_1, "Q4_1", 32, 2 + 2 + 16, true},
    GgmlTypeTraits{GgmlType::kQ5_0, "Q5_0", 32, 2 + 4 + 16, true},
    GgmlTypeTraits{GgmlType::kQ5_1, "Q5_1", 32, 2 + 2 + 4 + 16, true},
    GgmlTypeTraits{GgmlType::kQ8_0, "Q8_0", 32, 2 + 32, true},
    GgmlTypeTraits{GgmlType::kQ8_1, "Q8_1", 32, 4 + 4 + 32, false},
    GgmlTypeTraits{GgmlType::kQ2_K, "Q2_K", 256, 2 + 2 + kQK_K / 16 + kQK_K / 4, false},
    GgmlTypeTraits{GgmlType::kQ3_K, "Q3_K", 256, 2 + kQK_K / 4 + kQK_K / 8 + 12, false},
    GgmlTypeTraits{GgmlType::kQ4_K, "Q4_K", 256, 2 + 2 + kQK_K / 2 + 12, true},
    GgmlTypeTraits{GgmlType::kQ5_K, "Q5_K", 256, 2 + 2 + kQK_K / 2 + kQK_K / 8 + 12, false},
    GgmlTypeTraits{GgmlType::kQ6_K, "Q6_K", 256, 2 + kQK_K / 2 + kQK_K / 4 + kQK_K / 16, true},
    GgmlTypeTraits{GgmlType::kQ8_K, "Q8_K", 256, 4 + kQK_K + kQK_K / 8, false},
    GgmlTypeTraits{GgmlType::kIQ2_XXS, "IQ2_XXS", 256, 2 + kQK_K / 4, false},
    GgmlTypeTraits{GgmlType::kIQ2_XS, "IQ2_XS", 256, 2 + kQK_K / 4 + kQK_K / 32, false},
    GgmlTypeTraits{GgmlType::kIQ3_XXS, "IQ3_XXS", 256, 2 + kQK_K / 4 + kQK_K / 8, false},
    GgmlTypeTraits{GgmlType::kIQ1_S, "IQ1_S", 256, 2 + kQK_K / 8 + kQK_K / 16, false},
    GgmlTypeTraits{GgmlType::kIQ4_NL, "IQ4_NL", 32, 2 + 16, false},
    GgmlTypeTraits{GgmlType::kIQ3_S, "IQ3_S", 256, 2 + kQK_K / 4 + kQK_K / 8 + kQK_K / 32 + 4,
                   false},
    GgmlTypeTraits{GgmlType::kIQ2_S, "IQ2_S", 256, 2 + kQK_K / 4 + kQK_K / 16, false},
    GgmlTypeTraits{GgmlType::kIQ4_XS, "IQ4_XS", 256, 2 + 2 + kQK_K / 2 + kQK_K / 64, false},
    GgmlTypeTraits{GgmlType::kI8, "I8", 1, 1, false},
    GgmlTypeTraits{GgmlType::kI16, "I16", 1, 2, false},
    GgmlTypeTraits{GgmlType::kI32, "I32", 1, 4, false},
    GgmlTypeTraits{GgmlType::kI64, "I64", 1, 8, false},
    GgmlTypeTraits{GgmlType::kF64, "F64", 1, 8, false},
    GgmlTypeTraits{GgmlType::kIQ1_M, "IQ1_M", 256, kQK_K / 8 + kQK_K / 16 + kQK_K / 32, false},
    GgmlTypeTraits{GgmlType::kBF16, "BF16", 1, 2, true},
    GgmlTypeTraits{GgmlType::kTQ1_0, "TQ1_0", 256, 2 + 4 * 13, false},
    GgmlTypeTraits{GgmlType::kTQ2_0, "TQ2_0", 256, 2 + 64, false},
    GgmlTypeTraits{GgmlType::kMXFP4, "MXFP4", 32, 1 + 16, false},
};

}  // namespace

const GgmlTypeTraits* FindGgmlTypeTraits(uint32_t id) {
  for (const GgmlTypeTraits& traits : kTraits) {
    if (static_cast<uint32_t>(traits.type) == id) return &traits;
  }
  return nullptr;
}

const GgmlTypeTraits& GetGgmlTypeTraits(GgmlType type) {
  const GgmlTypeTraits* traits = FindGgmlTypeTraits(static_cast<uint32_t>(type));
  TANDEM_CHECK(traits != nullptr) << "no traits for ggml type " << static_cast<uint32_t>(type);
  return *traits;
}

std::string GgmlTypeName(uint32_t id) {
  const GgmlTypeTraits* traits = FindGgmlTypeTraits(id);
  if (traits != nullptr) return std::string(traits->name);
  return "type " + std::to_string(id);
}

}  // namespace tandem
