// Helpers to build a CPU engine over one of the reference models, for engine-level tests.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "tandem/request.h"
#include "worker/engine.h"

namespace tandem::testing {

// An engine over ModelDir(model_name) on the CPU backend. Fails the test (ADD_FAILURE) and returns
// null if loading fails.
std::unique_ptr<Engine> MakeCpuEngine(const std::string& model_name, EngineConfig config = {},
                                      int num_threads = 2);

// A greedy request that ignores EOS.
Request GreedyRequest(const std::string& id, std::vector<TokenId> prompt, int32_t max_tokens);

struct FinishedRequest {
  std::vector<TokenId> tokens;
  std::vector<TokenOutput> outputs;
  FinishReason finish_reason = FinishReason::kNone;
  RequestOutput last;
};

// Steps the engine until nothing is left; collects every request's tokens by id. Calls
// engine.CheckInvariants() after every step.
std::map<std::string, FinishedRequest> RunToCompletion(Engine& engine, int max_steps = 100000);

// A deterministic synthetic prompt of `n` ids below 2000 (inside both tiny vocabularies).
std::vector<TokenId> SyntheticPrompt(int n, int salt = 0);

// Asserts the engine's invariants and that its KV pool is whole: nothing in use,
// free + cached == total.
void ExpectPoolWhole(const Engine& engine);

// int64 ids (goldens) -> TokenId.
std::vector<TokenId> ToTokens(const std::vector<int64_t>& ids);

}  // namespace tandem::testing
