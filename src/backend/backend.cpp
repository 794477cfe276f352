// The default (host) implementations of Backend ops that a backend may override.
#include "backend/backend.h"

#include "tandem/check.h"

namespace tandem {

Status Backend::RopeWriteKvAttention(const Tensor& qkv, Tensor q_scratch, const RopeTables& rope,
                                     const AttentionParams& params, const AttentionMetadata& meta,
                                     KvLayerView cache, Tensor out) {
  TANDEM_RETURN_IF_ERROR(RopeAndWriteKv(qkv, q_scratch, rope, params, meta, cache));
  return Attention(q_scratch, cache, params, meta, out);
}

Status Backend::SampleRows(const Tensor& logits, std::span<const SampleInput> inputs,
                           std::span<SampleOutput> outputs) {
  return SampleRowsOnHost(logits, 0, inputs.size(), inputs, outputs);
}

Status Backend::SampleRowsOnHost(const Tensor& logits, size_t begin, size_t end,
                                 std::span<const SampleInput> inputs,
                                 std::span<SampleOutput> outputs) {
  TANDEM_CHECK_EQ(inputs.size(), outputs.size());
  TANDEM_CHECK(logits.dtype == DType::kF32 && logits.ndim == 2) << "logits must be f32 [R, V]";
  TANDEM_CHECK_EQ(static_cast<size_t>(logits.dim(0)), inputs.size());
  TANDEM_CHECK(begin <= end && end <= inputs.size());
  if (begin == end) return OkStatus();
  const size_t vocab = static_cast<size_t>(logits.dim(1));
  const Tensor rows = logits.Rows(static_cast<int64_t>(begin), static_cast<int64_t>(end));
  host_logits_.resize((end - begin) * vocab);
  TANDEM_RETURN_IF_ERROR(CopyToHost(rows, host_logits_.data()));
  for (size_t r = begin; r < end; ++r) {
    std::span<float> row(host_logits_.data() + (r - begin) * vocab, vocab);
    outputs[r] = SampleToken(row, inputs[r], &host_sampler_scratch_);
  }
  return OkStatus();
}

}  // namespace tandem
