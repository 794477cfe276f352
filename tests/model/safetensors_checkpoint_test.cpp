#include "model/safetensors_checkpoint.h"

#include <gtest/gtest.h>

#include "support/golden.h"
#include "support/testdata.h"

namespace tandem {
namespace {

using testing::ModelDir;

TEST(SafetensorsCheckpointTest, OpensTinyLlama) {
  auto ckpt = SafetensorsCheckpoint::Open(ModelDir("tiny-llama"));
  ASSERT_TRUE(ckpt.ok()) << ckpt.status().ToString();
  EXPECT_TRUE((*ckpt)->Contains("model.embed_tokens.weight"));
  auto t = (*ckpt)->Get("model.embed_tokens.weight");
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  EXPECT_EQ(t->dtype, DType::kBF16);
  EXPECT_EQ(t->shape.size(), 2u);
  EXPECT_NE(t->data, nullptr);
  auto missing = (*ckpt)->Get("no.such.tensor");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("no.such.tensor"), std::string::npos);
  EXPECT_NE(missing.status().message().find("model.safetensors"), std::string::npos);
}

TEST(GoldensTest, LoadsTypedTensors) {
  testing::Goldens goldens("tiny-llama");
  ASSERT_TRUE(goldens.ok());
  EXPECT_GE(goldens.NumPrompts(), 1);
  auto ids = goldens.Int64("p2.input_ids");
  ASSERT_EQ(ids.shape.size(), 1u);
  EXPECT_EQ(ids.numel(), ids.shape[0]);
  auto logits = goldens.Float("p2.last_logits");
  ASSERT_EQ(logits.shape.size(), 1u);
  EXPECT_EQ(logits.numel(), logits.shape[0]);
  auto top = goldens.Float("p2.all_top16_values");
  ASSERT_EQ(top.shape.size(), 2u);
  EXPECT_EQ(static_cast<int64_t>(top.Row(0).size()), top.shape[1]);
}

}  // namespace
}  // namespace tandem
