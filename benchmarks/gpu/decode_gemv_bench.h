// Each decode-shaped GEMV alone (M = 1, the small-M kernel with the epilogue the fused decode layer
// uses), weights rotated through a 2 GiB pool so they come from HBM: one launch, back to back with
// and without programmatic launch on the register and streamed kernels, and the streamed kernel's
// phases from its CTAs' %globaltimer stamps (SmallMGemvParams::trace). Part of gpu_engine_bench.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "backend/cuda/cuda_backend.h"
#include "kernels/small_m_gemv.cuh"
#include "model/model_config.h"

namespace tandem::bench {

struct DecodeGemvRow {
  std::string name;
  int64_t n = 0, k = 0;  // weight rows (both halves for gate|up) x k
  kernels::SmallMGemvEpilogue epilogue = kernels::SmallMGemvEpilogue::kStore;
  bool norm = false, f32 = false;
  double single = 0;
  // [1 | 2 columns per warp | streamed | streamed, 3 / 2 / 1 slots filled before the wait][plain |
  // programmatic], seconds per launch
  double b2b[6][2] = {};
  // Streamed back to back with PDL, from the kernel's trace stamps (SmallMGemvParams::trace), us
  // after the previous launch's last CTA ended, averaged over launches: first CTA entry, median
  // entry, first CTA past the wait, median x staged, median and last CTA's segments done, last end.
  double phases[2][7] = {};  // the default slots filled before the wait, and 3
};

// The Llama-shaped rows of `c` (q, fused qkv, o, gate|up, down, LM head), measured on `backend`'s device.
StatusOr<std::vector<DecodeGemvRow>> MeasureDecodeGemvs(CudaBackend& backend, const ModelConfig& c, int num_sms);

// The two tables (times and % of `read_bw`, bytes/s; the streamed kernel's phases) to stdout.
void PrintDecodeGemvTables(const std::vector<DecodeGemvRow>& rows, double read_bw);

}  // namespace tandem::bench
