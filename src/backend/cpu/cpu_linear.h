// CPU matrix products for the reference backend: out[T, N] = x[T, K] @ w[N, K]^T (+ bias), x and out
// float32, w float32 / bf16 / fp16 (converted on the fly, never copied whole).
//
// Each output element is a float32 dot product accumulated in 16 fixed lanes and summed in a fixed
// order, so a row's result does not depend on how many other rows share the batch (seeded sampling
// stays reproducible under any batch mix).
#pragma once

#include "backend/tensor.h"
#include "common/thread_pool.h"

namespace tandem::cpu {

void Linear(const Tensor& x, const Tensor& w, const Tensor& bias, Tensor out, ThreadPool& pool);

}  // namespace tandem::cpu
