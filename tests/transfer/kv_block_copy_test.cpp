// CpuBackend::GatherKvBlocks / ScatterKvBlocks: the host layout ([layer][K|V][block]...), round
// trips into different block ids, and bad block ids.
#include <gtest/gtest.h>

#include <cstring>
#include <numeric>
#include <random>

#include "backend/cpu/cpu_backend.h"
#include "kv/kv_cache.h"

namespace tandem {
namespace {

KvCacheShape Shape(int32_t blocks) {
  KvCacheShape s;
  s.num_layers = 3;
  s.num_blocks = blocks;
  s.block_size = 4;
  s.num_kv_heads = 2;
  s.head_dim = 8;
  return s;
}

std::vector<KvLayerView> Layers(const KvCache& cache) {
  std::vector<KvLayerView> v;
  for (int32_t l = 0; l < cache.shape().num_layers; ++l) v.push_back(cache.layer(l));
  return v;
}

TEST(KvBlockCopyTest, GatherLayoutAndScatterRoundTrip) {
  CpuBackend backend(CpuBackendConfig{1});
  auto src = KvCache::Create(backend, Shape(10));
  auto dst = KvCache::Create(backend, Shape(6));
  ASSERT_TRUE(src.ok() && dst.ok());
  auto src_layers = Layers(**src);
  auto dst_layers = Layers(**dst);
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-1, 1);
  for (auto& l : src_layers) {
    for (Tensor* t : {&l.k, &l.v}) {
      for (int64_t i = 0; i < t->numel(); ++i) t->as<float>()[i] = u(rng);
    }
  }
  const std::vector<int32_t> from = {7, 2, 9};
  const std::vector<int32_t> to = {0, 5, 3};
  const size_t bb = KvBlockBytes(src_layers[0]);
  std::vector<std::byte> host(KvBlocksHostBytes(src_layers, from.size()));
  ASSERT_EQ(host.size(), 3u * 2 * 3 * bb);
  ASSERT_TRUE(backend.GatherKvBlocks(src_layers, from, host.data()).ok());
  // Layer 1, V, second listed block (id 2).
  const size_t offset = (1 * 2 + 1) * from.size() * bb + 1 * bb;
  EXPECT_EQ(std::memcmp(host.data() + offset,
                        static_cast<std::byte*>(src_layers[1].v.data) + 2 * bb, bb), 0);
  ASSERT_TRUE(backend.ScatterKvBlocks(host.data(), to, dst_layers).ok());
  for (size_t l = 0; l < src_layers.size(); ++l) {
    for (size_t i = 0; i < from.size(); ++i) {
      for (auto [s, d] : {std::pair(&src_layers[l].k, &dst_layers[l].k), std::pair(&src_layers[l].v, &dst_layers[l].v)}) {
        EXPECT_EQ(std::memcmp(static_cast<std::byte*>(s->data) + from[i] * bb,
                              static_cast<std::byte*>(d->data) + to[i] * bb, bb), 0)
            << "layer " << l << " block " << i;
      }
    }
  }
}

TEST(KvBlockCopyTest, BadBlockIdIsAnError) {
  CpuBackend backend(CpuBackendConfig{1});
  auto cache = KvCache::Create(backend, Shape(4));
  ASSERT_TRUE(cache.ok());
  auto layers = Layers(**cache);
  std::vector<std::byte> host(KvBlocksHostBytes(layers, 1));
  const std::vector<int32_t> bad = {4};
  EXPECT_EQ(backend.GatherKvBlocks(layers, bad, host.data()).code(), StatusCode::kOutOfRange);
  EXPECT_EQ(backend.ScatterKvBlocks(host.data(), bad, layers).code(), StatusCode::kOutOfRange);
}

}  // namespace
}  // namespace tandem
