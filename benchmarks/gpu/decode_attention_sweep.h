// The split-KV decode attention kernel alone, launched directly (no backend, no metadata upload):
// each variant (CUDA-core kernel with the old and the new split policy, tensor-core kernel at
// several split counts) timed as R back-to-back launches between two events, so the
// host's submission gaps stay out, rotating over table sets of disjoint blocks so consecutive
// launches never find a previous launch's K/V in L2. Also one launch between events (what the
// engine table measures through CudaBackend::Attention) and a cross-check of the new kernel's
// output against the old one's.
#pragma once

#include <vector>

#include "backend/cuda/cuda_backend.h"
#include "model/model_config.h"

namespace tandem::bench {

// Prints the sweep's tables to stdout; `read_bw` (bytes/s) is the HBM read limit of the same run.
Status RunDecodeAttentionSweep(CudaBackend& backend, const ModelConfig& c, double read_bw,
                               const std::vector<int>& batches, int ctx);

}  // namespace tandem::bench
