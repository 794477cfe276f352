// The prefill engine's KvStreamer contract (transfer/kv_streamer.h), on the CPU backend with a
// streamer that really copies: each LayerWritten(l) gathers layer l of every begun request from
// the cache at that moment. If the engine called it before layer l's K/V were written, the decode
// engine would continue from wrong KV and its greedy tokens would differ from a colocated run's.
// Also: Begin happens only in the step that completes a prefill, every begun request is committed
// once (with its first token, or dropped when it ended there), a request without staging room is
// deferred and streamed after the step, and ReadKvForTransfer reports `streamed` with no data.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <optional>
#include <set>

#include "support/engine_fixture.h"

namespace tandem {
namespace {

using testing::GreedyRequest;
using testing::MakeCpuEngine;

class CopyingStreamer final : public KvStreamer {
 public:
  explicit CopyingStreamer(Engine* engine) : engine_(engine) {}

  struct Stream {
    std::vector<int32_t> blocks;
    int32_t num_tokens = 0;
    std::vector<std::vector<std::byte>> layers;  // [layer] -> that layer's K|V blocks
    std::optional<std::optional<TokenId>> commit;  // outer: committed; inner: kept with token
    int begin_calls = 0;
  };

  bool HasRoute(const std::string& id) const override { return routes.count(id) != 0; }
  StatusOr<bool> Begin(const std::string& id, std::span<const int32_t> blocks, int32_t num_tokens) override {
    Stream& s = streams[id];
    ++s.begin_calls;
    EXPECT_FALSE(s.commit.has_value()) << id << " begun after its commit";
    if (refuse_begins > 0) {
      --refuse_begins;
      return false;
    }
    s.blocks.assign(blocks.begin(), blocks.end());
    s.num_tokens = num_tokens;
    s.layers.assign(static_cast<size_t>(engine_->kv_geometry().num_layers), {});
    begun.push_back(id);
    next_layer = 0;
    return true;
  }
  Status LayerWritten(int32_t layer) override {
    EXPECT_EQ(layer, next_layer) << "layers out of order";
    next_layer = layer + 1;
    for (const std::string& id : begun) {
      Stream& s = streams[id];
      const KvLayerView view = engine_->kv_layers()[static_cast<size_t>(layer)];
      s.layers[static_cast<size_t>(layer)].resize(KvBlocksHostBytes({&view, 1}, s.blocks.size()));
      TANDEM_RETURN_IF_ERROR(engine_->backend().GatherKvBlocks({&view, 1}, s.blocks,
                                                               s.layers[static_cast<size_t>(layer)].data()));
    }
    return OkStatus();
  }
  void Commit(const std::string& id, std::optional<TokenId> first_token) override {
    auto it = std::find(begun.begin(), begun.end(), id);
    ASSERT_NE(it, begun.end()) << id << " committed without Begin";
    EXPECT_EQ(next_layer, engine_->kv_geometry().num_layers) << id << " committed before every layer went";
    begun.erase(it);
    streams[id].commit = first_token;
  }

  // The handoff a receiver would assemble.
  KvHandoff Handoff(const std::string& id) {
    Stream& s = streams[id];
    KvHandoff h;
    h.request_id = id;
    h.geometry = engine_->kv_geometry();
    h.num_tokens = s.num_tokens;
    h.num_blocks = static_cast<int32_t>(s.blocks.size());
    h.first_token = s.commit->value();
    for (const auto& layer : s.layers) h.data.insert(h.data.end(), layer.begin(), layer.end());
    return h;
  }

  std::set<std::string> routes;
  std::map<std::string, Stream> streams;
  std::vector<std::string> begun;
  int refuse_begins = 0;
  int32_t next_layer = 0;

 private:
  Engine* engine_;
};

std::unique_ptr<Engine> MakeRole(EngineRole role) {
  EngineConfig config;
  config.role = role;
  config.num_kv_blocks = 256;
  config.max_num_batched_tokens = 64;  // prompts of 150 tokens prefill in three chunks
  return MakeCpuEngine("tiny-llama31", config);
}

TEST(EngineKvStreamerTest, LayersStreamedDuringTheLastPrefillStepReproduceColocated) {
  auto colocated = MakeRole(EngineRole::kColocated);
  auto prefill = MakeRole(EngineRole::kPrefill);
  auto decode = MakeRole(EngineRole::kDecode);
  ASSERT_TRUE(colocated && prefill && decode);
  CopyingStreamer streamer(prefill.get());
  prefill->SetKvStreamer(&streamer);
  // r0..r2 stream (r2 ends at its first token: dropped); r3 has no route: the host path.
  const std::vector<std::pair<int, int>> shapes = {{150, 6}, {33, 5}, {20, 1}, {40, 4}};
  for (size_t i = 0; i < shapes.size(); ++i) {
    const std::string id = "r" + std::to_string(i);
    auto prompt = testing::SyntheticPrompt(shapes[i].first, static_cast<int>(i));
    ASSERT_TRUE(colocated->AddRequest(GreedyRequest(id, prompt, shapes[i].second)).ok());
    ASSERT_TRUE(prefill->AddRequest(GreedyRequest(id, prompt, shapes[i].second)).ok());
    if (shapes[i].second > 1) {
      ASSERT_TRUE(decode->AddTransferredRequest(GreedyRequest(id, prompt, shapes[i].second)).ok());
    }
    if (i < 3) streamer.routes.insert(id);
  }
  auto expected = testing::RunToCompletion(*colocated);

  std::map<std::string, std::vector<TokenId>> tokens;
  for (int step = 0; step < 100 && prefill->HasUnfinished(); ++step) {
    auto outputs = prefill->Step();
    ASSERT_TRUE(outputs.ok());
    for (const auto& out : *outputs) {
      for (const auto& t : out.new_tokens) tokens[out.request_id].push_back(t.token);
    }
    for (const std::string& id : prefill->TakeTransferReady()) {
      auto kv = prefill->ReadKvForTransfer(id);
      ASSERT_TRUE(kv.ok());
      KvHandoff handoff = std::move(kv).value();
      if (streamer.routes.count(id)) {
        EXPECT_TRUE(handoff.streamed) << id;
        EXPECT_TRUE(handoff.data.empty()) << id;
        handoff = streamer.Handoff(id);
      } else {
        EXPECT_FALSE(handoff.streamed) << id;
      }
      ASSERT_TRUE(prefill->ReleaseTransferred(id).ok());
      ASSERT_TRUE(decode->CompleteTransfer(handoff).ok()) << id;
    }
    prefill->CheckInvariants();
  }
  testing::ExpectPoolWhole(*prefill);
  EXPECT_TRUE(streamer.begun.empty());
  EXPECT_EQ(streamer.streams.count("r3"), 0u) << "no route, no stream";
  for (const std::string id : {"r0", "r1"}) {
    ASSERT_TRUE(streamer.streams[id].commit.has_value());
    EXPECT_EQ(streamer.streams[id].commit->value_or(-1), tokens[id].front()) << id;
    EXPECT_EQ(streamer.streams[id].begin_calls, 1) << "only the step that completes the prefill begins";
  }
  ASSERT_TRUE(streamer.streams["r2"].commit.has_value());
  EXPECT_FALSE(streamer.streams["r2"].commit->has_value()) << "ended at its first token: dropped";

  auto decoded = testing::RunToCompletion(*decode);
  testing::ExpectPoolWhole(*decode);
  for (auto& [id, done] : expected) {
    std::vector<TokenId> got = tokens[id];
    got.insert(got.end(), decoded[id].tokens.begin(), decoded[id].tokens.end());
    EXPECT_EQ(got, done.tokens) << id;
  }
}

TEST(EngineKvStreamerTest, NoStagingRoomDefersTheStreamUntilAfterTheStep) {
  auto prefill = MakeRole(EngineRole::kPrefill);
  auto decode = MakeRole(EngineRole::kDecode);
  ASSERT_TRUE(prefill && decode);
  CopyingStreamer streamer(prefill.get());
  prefill->SetKvStreamer(&streamer);
  streamer.refuse_begins = 3;  // the in-step Begin and two retries find no room
  auto prompt = testing::SyntheticPrompt(70, 9);
  ASSERT_TRUE(prefill->AddRequest(GreedyRequest("d", prompt, 5)).ok());
  ASSERT_TRUE(decode->AddTransferredRequest(GreedyRequest("d", prompt, 5)).ok());
  streamer.routes.insert("d");
  std::vector<TokenId> tokens;
  int ready_at = -1;
  for (int step = 0; step < 50 && prefill->HasUnfinished(); ++step) {
    auto outputs = prefill->Step();
    ASSERT_TRUE(outputs.ok());
    for (const auto& out : *outputs) {
      for (const auto& t : out.new_tokens) tokens.push_back(t.token);
    }
    for (const std::string& id : prefill->TakeTransferReady()) {
      ready_at = step;
      auto kv = prefill->ReadKvForTransfer(id);
      ASSERT_TRUE(kv.ok() && kv->streamed);
      ASSERT_TRUE(prefill->ReleaseTransferred(id).ok());
      ASSERT_TRUE(decode->CompleteTransfer(streamer.Handoff(id)).ok());
    }
  }
  EXPECT_EQ(streamer.streams["d"].begin_calls, 4);
  EXPECT_GT(ready_at, 1) << "handed off only once a Begin succeeded, after the prefill steps";
  testing::ExpectPoolWhole(*prefill);
  // The colocated reference for the same request.
  auto colocated = MakeRole(EngineRole::kColocated);
  ASSERT_TRUE(colocated->AddRequest(GreedyRequest("d", prompt, 5)).ok());
  auto expected = testing::RunToCompletion(*colocated);
  auto decoded = testing::RunToCompletion(*decode);
  tokens.insert(tokens.end(), decoded["d"].tokens.begin(), decoded["d"].tokens.end());
  EXPECT_EQ(tokens, expected["d"].tokens);
  testing::ExpectPoolWhole(*decode);
}

TEST(EngineKvStreamerTest, AbortOfADeferredStreamFreesItsBlocks) {
  auto prefill = MakeRole(EngineRole::kPrefill);
  ASSERT_TRUE(prefill);
  CopyingStreamer streamer(prefill.get());
  prefill->SetKvStreamer(&streamer);
  streamer.refuse_begins = 1000;
  ASSERT_TRUE(prefill->AddRequest(GreedyRequest("a", testing::SyntheticPrompt(30, 4), 5)).ok());
  streamer.routes.insert("a");
  for (int step = 0; step < 5; ++step) ASSERT_TRUE(prefill->Step().ok());
  EXPECT_EQ(prefill->Stats().num_transferring, 1u);
  EXPECT_TRUE(prefill->TakeTransferReady().empty());
  EXPECT_TRUE(prefill->Abort("a"));
  auto outputs = prefill->Step();
  ASSERT_TRUE(outputs.ok());
  testing::ExpectPoolWhole(*prefill);
  EXPECT_FALSE(prefill->HasStepWork());
}

}  // namespace
}  // namespace tandem
