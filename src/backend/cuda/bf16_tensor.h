// The CUDA backend's view of the model's activation tensors: bf16 on the device.
#pragma once

#include <cuda_bf16.h>

#include "backend/tensor.h"
#include "tandem/check.h"

namespace tandem {

inline __nv_bfloat16* Bf16(const Tensor& t) { return static_cast<__nv_bfloat16*>(t.data); }

// Ops receive activation-dtype tensors from the model: anything else is a programming error.
inline void CheckBf16(const Tensor& t, const char* what) {
  TANDEM_CHECK(t.dtype == DType::kBF16) << what << " must be bf16 on the CUDA backend, got " << DTypeName(t.dtype);
}

}  // namespace tandem
