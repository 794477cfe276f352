#include "support/engine_fixture.h"

#include <gtest/gtest.h>

#include "backend/cpu/cpu_backend.h"
#include "model/safetensors_checkpoint.h"
#include "support/testdata.h"

namespace tandem::testing {

std::unique_ptr<Engine> MakeCpuEngine(const std::string& model_name, EngineConfig config,
                                      int num_threads) {
  const auto dir = ModelDir(model_name);
  auto model_config = LoadModelConfig(dir);
  if (!model_config.ok()) {
    ADD_FAILURE() << model_config.status().ToString();
    return nullptr;
  }
  auto weights = SafetensorsCheckpoint::Open(dir);
  if (!weights.ok()) {
    ADD_FAILURE() << weights.status().ToString();
    return nullptr;
  }
  auto engine = Engine::Create(config, *model_config, std::move(weights).value(),
                               std::make_unique<CpuBackend>(CpuBackendConfig{num_threads}));
  if (!engine.ok()) {
    ADD_FAILURE() << engine.status().ToString();
    return nullptr;
  }
  return std::move(engine).value();
}

Request GreedyRequest(const std::string& id, std::vector<TokenId> prompt, int32_t max_tokens) {
  Request r;
  r.request_id = id;
  r.prompt_token_ids = std::move(prompt);
  r.sampling.temperature = 0.0f;
  r.sampling.max_tokens = max_tokens;
  r.sampling.ignore_eos = true;
  return r;
}

std::map<std::string, FinishedRequest> RunToCompletion(Engine& engine, int max_steps) {
  std::map<std::string, FinishedRequest> done;
  for (int step = 0; step < max_steps && engine.HasUnfinished(); ++step) {
    auto outputs = engine.Step();
    if (!outputs.ok()) {
      ADD_FAILURE() << outputs.status().ToString();
      break;
    }
    engine.CheckInvariants();
    for (RequestOutput& out : *outputs) {
      FinishedRequest& r = done[out.request_id];
      for (const TokenOutput& t : out.new_tokens) {
        r.tokens.push_back(t.token);
        r.outputs.push_back(t);
      }
      if (out.finished) {
        r.finish_reason = out.finish_reason;
        r.last = out;
      }
    }
  }
  EXPECT_FALSE(engine.HasUnfinished()) << "engine did not finish within " << max_steps << " steps";
  return done;
}

std::vector<TokenId> SyntheticPrompt(int n, int salt) {
  std::vector<TokenId> p(n);
  for (int i = 0; i < n; ++i) p[i] = (i * 37 + salt * 101 + 5) % 2000;
  return p;
}

void ExpectPoolWhole(const Engine& engine) {
  engine.CheckInvariants();
  const BlockManagerStats s = engine.Stats().blocks;
  EXPECT_EQ(s.num_in_use, 0);
  EXPECT_EQ(s.num_free + s.num_cached, s.num_total);
}

std::vector<TokenId> ToTokens(const std::vector<int64_t>& ids) {
  return std::vector<TokenId>(ids.begin(), ids.end());
}

}  // namespace tandem::testing
