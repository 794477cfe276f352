// EngineLoop: the engine behind one thread. Submits from several threads at once produce the HF
// greedy goldens; validation errors come back synchronously; cancels at random points (waiting,
// mid-prefill, mid-decode, after the end) and shutdown with work in flight each deliver exactly one
// final output per accepted request and leave the KV pool whole.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdio>
#include <condition_variable>
#include <map>
#include <mutex>
#include <random>
#include <thread>

#include "support/engine_fixture.h"
#include "support/golden.h"
#include "worker/engine_loop.h"

namespace tandem {
namespace {

using testing::GreedyRequest;
using testing::MakeCpuEngine;

constexpr char kModel[] = "tiny-llama31";
// Guards against a hang only; a correct run takes a small fraction of it.
constexpr auto kHangGuard = std::chrono::seconds(300);

std::vector<TokenId> Prompt(int n, int salt = 0) {
  std::vector<TokenId> p(n);
  for (int i = 0; i < n; ++i) p[i] = (i * 37 + salt * 101 + 5) % 2000;
  return p;
}

// Everything the callbacks of many requests saw. Thread-safe.
class Collector {
 public:
  struct Result {
    std::vector<TokenId> tokens;
    int num_outputs = 0;
    int num_finals = 0;
    bool output_after_final = false;
    RequestOutput last;
  };

  OutputCallback Callback(const std::string& id) {
    return [this, id](RequestOutput out) {
      std::lock_guard<std::mutex> lock(mu_);
      Result& r = results_[id];
      if (r.num_finals > 0) r.output_after_final = true;
      ++r.num_outputs;
      for (const TokenOutput& t : out.new_tokens) r.tokens.push_back(t.token);
      if (out.finished) {
        ++r.num_finals;
        ++num_finished_;
        r.last = out;
        done_.notify_all();
      }
    };
  }

  // Waits until `n` requests have finished; false if the hang guard expired first.
  bool WaitForFinished(int n) {
    std::unique_lock<std::mutex> lock(mu_);
    return done_.wait_for(lock, kHangGuard, [&] { return num_finished_ >= n; });
  }

  std::map<std::string, Result> results() {
    std::lock_guard<std::mutex> lock(mu_);
    return results_;
  }

 private:
  std::mutex mu_;
  std::condition_variable done_;
  std::map<std::string, Result> results_;  // GUARDED_BY(mu_)
  int num_finished_ = 0;                   // GUARDED_BY(mu_)
};

// Polls the published snapshot until no request is live (bounded), then checks the pool.
void ExpectPoolWholeWhenIdle(const EngineLoop& loop) {
  EngineLoopStats stats = loop.Stats();
  for (int i = 0; i < 20000 && stats.num_live != 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    stats = loop.Stats();
  }
  ASSERT_EQ(stats.num_live, 0);
  const BlockManagerStats& b = stats.engine.blocks;
  EXPECT_EQ(b.num_in_use, 0);
  EXPECT_EQ(b.num_free + b.num_cached, b.num_total);
  EXPECT_GT(b.num_total, 0);
  EXPECT_EQ(stats.engine.num_waiting, 0u);
  EXPECT_EQ(stats.engine.num_running, 0u);
}

TEST(EngineLoopTest, ConcurrentSubmitsFromSeveralThreadsMatchGoldens) {
  testing::Goldens goldens(kModel);
  ASSERT_TRUE(goldens.ok());
  const int num_prompts = goldens.NumPrompts();
  ASSERT_GE(num_prompts, 6);
  EngineConfig config;
  config.max_num_batched_tokens = 256;  // long prompts prefill in chunks, beside decodes
  auto engine = MakeCpuEngine(kModel, config);
  ASSERT_NE(engine, nullptr);
  EngineLoop loop(std::move(engine));
  Collector collector;

  constexpr int kThreads = 4;
  std::vector<std::thread> threads;
  std::atomic<int> num_rejected{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int p = 0; p < num_prompts; ++p) {
        const std::string id = "t" + std::to_string(t) + "p" + std::to_string(p);
        auto prompt = testing::ToTokens(goldens.Int64("p" + std::to_string(p) + ".input_ids").values);
        if (!loop.Submit(GreedyRequest(id, prompt, 16), collector.Callback(id)).ok()) ++num_rejected;
      }
    });
  }
  for (auto& th : threads) th.join();
  ASSERT_EQ(num_rejected.load(), 0);
  ASSERT_TRUE(collector.WaitForFinished(kThreads * num_prompts));

  auto results = collector.results();
  for (int t = 0; t < kThreads; ++t) {
    for (int p = 0; p < num_prompts; ++p) {
      const std::string id = "t" + std::to_string(t) + "p" + std::to_string(p);
      const auto& r = results[id];
      EXPECT_EQ(r.tokens, testing::ToTokens(goldens.Int64("p" + std::to_string(p) + ".greedy_ids").values)) << id;
      EXPECT_EQ(r.num_finals, 1) << id;
      EXPECT_FALSE(r.output_after_final) << id;
      EXPECT_EQ(r.last.finish_reason, FinishReason::kLength) << id;
      EXPECT_EQ(r.last.num_output_tokens, 16) << id;
    }
  }
  ExpectPoolWholeWhenIdle(loop);
  EXPECT_TRUE(loop.Shutdown(Clock::now()).ok());
}

TEST(EngineLoopTest, SubmitErrorsComeBackSynchronouslyAndNeverCallBack) {
  EngineConfig config;
  config.num_kv_blocks = 16;  // 256 tokens
  config.max_model_len = 512;
  auto engine = MakeCpuEngine(kModel, config);
  ASSERT_NE(engine, nullptr);
  EngineLoopConfig loop_config;
  loop_config.max_live_requests = 2;
  EngineLoop loop(std::move(engine), loop_config);
  EXPECT_EQ(loop.info().num_kv_blocks, 16);
  EXPECT_EQ(loop.info().max_model_len, 512);
  Collector collector;

  auto submit = [&](Request r) { return loop.Submit(r, collector.Callback(r.request_id)); };
  Status s = submit(GreedyRequest("bad-id", {1, 2048}, 4));
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
  EXPECT_NE(s.message().find("outside the vocabulary"), std::string::npos) << s.message();
  s = submit(GreedyRequest("zero", Prompt(4), 0));
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
  // Well-formed, but more KV than the whole cache: not the client's syntax, the server's size.
  s = submit(GreedyRequest("huge", Prompt(8), 400));
  EXPECT_EQ(s.code(), StatusCode::kResourceExhausted) << s.ToString();
  EXPECT_NE(s.message().find("KV blocks"), std::string::npos) << s.message();
  // Too large *and* malformed: the malformation is what the client must fix first.
  s = submit(GreedyRequest("huge-bad", {1, -3}, 400));
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
  EXPECT_EQ(loop.Submit(GreedyRequest("no-callback", Prompt(4), 4), nullptr).code(),
            StatusCode::kInvalidArgument);

  // Two long-running live requests fill max_live_requests; a duplicate id is refused.
  ASSERT_TRUE(submit(GreedyRequest("live1", Prompt(8, 1), 200)).ok());
  EXPECT_EQ(submit(GreedyRequest("live1", Prompt(8, 2), 4)).code(), StatusCode::kAlreadyExists);
  ASSERT_TRUE(submit(GreedyRequest("live2", Prompt(8, 3), 200)).ok());
  s = submit(GreedyRequest("third", Prompt(8, 4), 4));
  EXPECT_EQ(s.code(), StatusCode::kResourceExhausted) << s.ToString();
  EXPECT_NE(s.message().find("retry"), std::string::npos) << s.message();

  loop.Cancel("live1");
  loop.Cancel("live2");
  ASSERT_TRUE(collector.WaitForFinished(2));
  auto results = collector.results();
  EXPECT_EQ(results.size(), 2u) << "a rejected request got a callback";
  EXPECT_EQ(results["live1"].last.finish_reason, FinishReason::kAbort);
  ExpectPoolWholeWhenIdle(loop);

  EXPECT_TRUE(loop.Shutdown(Clock::now()).ok());
  s = submit(GreedyRequest("late", Prompt(4), 4));
  EXPECT_EQ(s.code(), StatusCode::kUnavailable) << s.ToString();
  EXPECT_FALSE(loop.Stats().accepting);
}

TEST(EngineLoopTest, CancelsAtRandomPointsFromManyThreadsLeaveThePoolWhole) {
  EngineConfig config;
  config.max_num_batched_tokens = 64;  // prompts of hundreds of tokens take several steps
  config.num_kv_blocks = 256;
  auto engine = MakeCpuEngine(kModel, config);
  ASSERT_NE(engine, nullptr);
  EngineLoop loop(std::move(engine));
  Collector collector;

  constexpr int kThreads = 3;
  constexpr int kPerThread = 12;
  std::vector<std::thread> threads;
  std::atomic<int> accepted{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(1234 + t);
      for (int i = 0; i < kPerThread; ++i) {
        const std::string id = "c" + std::to_string(t) + "-" + std::to_string(i);
        const int prompt_len = std::uniform_int_distribution<int>(1, 400)(rng);
        const int max_tokens = std::uniform_int_distribution<int>(1, 48)(rng);
        const int mode = std::uniform_int_distribution<int>(0, 3)(rng);
        const int cancel_after = std::uniform_int_distribution<int>(1, 6)(rng);
        OutputCallback record = collector.Callback(id);
        OutputCallback callback = record;
        if (mode == 2) {
          // Cancel from the engine thread itself, after a random number of outputs (mid-decode).
          auto seen = std::make_shared<int>(0);
          callback = [&loop, record, seen, cancel_after, id](RequestOutput out) {
            if (++*seen == cancel_after) loop.Cancel(id);
            record(std::move(out));
          };
        }
        Request request = GreedyRequest(id, Prompt(prompt_len, t * 100 + i), max_tokens);
        if (!loop.Submit(std::move(request), callback).ok()) continue;
        ++accepted;
        if (mode == 0) loop.Cancel(id);  // right away: waiting or mid-prefill
        if (mode == 1) {                 // after a random amount of this thread's own work
          for (int k = 0, n = std::uniform_int_distribution<int>(0, 20000)(rng); k < n; ++k) {
            std::this_thread::yield();
          }
          loop.Cancel(id);
        }
        if (mode == 3 && i % 2 == 0) loop.Cancel("never-submitted-" + id);
      }
    });
  }
  for (auto& th : threads) th.join();
  ASSERT_EQ(accepted.load(), kThreads * kPerThread);
  ASSERT_TRUE(collector.WaitForFinished(accepted.load()));

  int aborted = 0;
  for (const auto& [id, r] : collector.results()) {
    EXPECT_EQ(r.num_finals, 1) << id;
    EXPECT_FALSE(r.output_after_final) << id;
    EXPECT_EQ(static_cast<int>(r.tokens.size()), r.last.num_output_tokens) << id;
    const FinishReason reason = r.last.finish_reason;
    EXPECT_TRUE(reason == FinishReason::kAbort || reason == FinishReason::kLength) << id;
    aborted += reason == FinishReason::kAbort;
  }
  EXPECT_GT(aborted, 0) << "no cancel landed: the test no longer exercises cancellation";
  ExpectPoolWholeWhenIdle(loop);
  // Cancelling what already finished is harmless.
  loop.Cancel("c0-0");
  EXPECT_TRUE(loop.Shutdown(Clock::now()).ok());
  ExpectPoolWholeWhenIdle(loop);
}

TEST(EngineLoopTest, ShutdownAtItsDeadlineAbortsWorkInFlight) {
  EngineConfig config;
  config.max_num_batched_tokens = 32;
  auto engine = MakeCpuEngine(kModel, config);
  ASSERT_NE(engine, nullptr);
  EngineLoop loop(std::move(engine));
  Collector collector;
  constexpr int kRequests = 8;
  for (int i = 0; i < kRequests; ++i) {
    const std::string id = "long" + std::to_string(i);
    // Long enough that none can finish before the deadline below (16 decode steps at least).
    ASSERT_TRUE(loop.Submit(GreedyRequest(id, Prompt(64 + 40 * i, i), 1500), collector.Callback(id)).ok());
  }
  // Wait until something is mid-decode (has produced tokens) so the abort hits every stage.
  for (int i = 0; i < 60000 && collector.results().empty(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ASSERT_FALSE(collector.results().empty());
  Status s = loop.Shutdown(Clock::now());
  EXPECT_EQ(s.code(), StatusCode::kDeadlineExceeded) << s.ToString();
  EXPECT_NE(s.message().find(std::to_string(kRequests)), std::string::npos) << s.message();
  // Shutdown returned after the engine thread joined: every final output is already delivered.
  auto results = collector.results();
  ASSERT_EQ(results.size(), static_cast<size_t>(kRequests));
  for (const auto& [id, r] : results) {
    EXPECT_EQ(r.num_finals, 1) << id;
    EXPECT_EQ(r.last.finish_reason, FinishReason::kAbort) << id;
  }
  ExpectPoolWholeWhenIdle(loop);
  EXPECT_EQ(loop.Submit(GreedyRequest("late", Prompt(4), 4), collector.Callback("late")).code(),
            StatusCode::kUnavailable);
  EXPECT_EQ(loop.Shutdown(Clock::now()).code(), StatusCode::kDeadlineExceeded);  // idempotent
}

TEST(EngineLoopTest, ShutdownBeforeItsDeadlineLetsWorkInFlightFinish) {
  testing::Goldens goldens(kModel);
  ASSERT_TRUE(goldens.ok());
  auto engine = MakeCpuEngine(kModel);
  ASSERT_NE(engine, nullptr);
  EngineLoop loop(std::move(engine));
  Collector collector;
  for (int p = 0; p < 4; ++p) {
    const std::string id = "p" + std::to_string(p);
    auto prompt = testing::ToTokens(goldens.Int64(id + ".input_ids").values);
    ASSERT_TRUE(loop.Submit(GreedyRequest(id, prompt, 16), collector.Callback(id)).ok());
  }
  // The deadline is a hang guard: the drain ends when the work does.
  EXPECT_TRUE(loop.Shutdown(Clock::now() + kHangGuard).ok());
  auto results = collector.results();
  ASSERT_EQ(results.size(), 4u);
  for (const auto& [id, r] : results) {
    EXPECT_EQ(r.last.finish_reason, FinishReason::kLength) << id;
    EXPECT_EQ(r.tokens, testing::ToTokens(goldens.Int64(id + ".greedy_ids").values)) << id;
  }
  ExpectPoolWholeWhenIdle(loop);
}

// Polls the published snapshot until `done` holds (bounded: a hang guard, not a timing check).
template <typename Pred>
EngineLoopStats WaitForStats(const EngineLoop& loop, Pred done) {
  EngineLoopStats stats = loop.Stats();
  for (int i = 0; i < 60000 && !done(stats); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    stats = loop.Stats();
  }
  return stats;
}

TEST(EngineLoopTest, LoadStatsCountQueuedPromptTokensAndMeasureThePrefillRate) {
  EngineConfig config;
  config.max_num_seqs = 1;  // a second request waits while the first decodes
  auto engine = MakeCpuEngine(kModel, config);
  ASSERT_NE(engine, nullptr);
  EngineLoop loop(std::move(engine));
  EXPECT_EQ(loop.Stats().num_queued_prompt_tokens, 0);
  EXPECT_EQ(loop.Stats().prefill_tokens_per_s, 0);  // nothing measured yet
  Collector collector;
  ASSERT_TRUE(loop.Submit(GreedyRequest("long", Prompt(8), 1500), collector.Callback("long")).ok());
  for (int i = 0; i < 60000 && collector.results().empty(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ASSERT_FALSE(collector.results().empty());  // "long" is past its prefill
  ASSERT_TRUE(loop.Submit(GreedyRequest("queued", Prompt(40, 1), 4), collector.Callback("queued")).ok());
  EngineLoopStats stats = WaitForStats(loop, [](const EngineLoopStats& s) {
    return s.num_queued_prompt_tokens == 40;
  });
  EXPECT_EQ(stats.num_queued_prompt_tokens, 40);  // the waiting prompt, whole
  EXPECT_GT(stats.prefill_tokens_per_s, 0);       // "long"'s prefill was measured
  loop.Cancel("long");
  ASSERT_TRUE(collector.WaitForFinished(2));
  stats = WaitForStats(loop, [](const EngineLoopStats& s) { return s.num_live == 0; });
  EXPECT_EQ(stats.num_queued_prompt_tokens, 0);
  EXPECT_GT(stats.prefill_tokens_per_s, 0);
  EXPECT_EQ(collector.results()["queued"].tokens.size(), 4u);
  ExpectPoolWholeWhenIdle(loop);
}

TEST(EngineLoopTest, LoadStatsCountBlocksReservedForKvInFlight) {
  EngineConfig config;
  config.role = EngineRole::kDecode;
  auto engine = MakeCpuEngine(kModel, config);
  ASSERT_NE(engine, nullptr);
  EngineLoop loop(std::move(engine));
  Collector collector;
  const int32_t block_size = loop.info().block_size;
  // Reserved: the prompt and the first token (Engine::AddTransferredRequest).
  ASSERT_TRUE(loop.SubmitTransferred(GreedyRequest("t1", Prompt(40), 8), collector.Callback("t1")).ok());
  ASSERT_TRUE(loop.SubmitTransferred(GreedyRequest("t2", Prompt(3 * block_size - 1, 2), 8),
                                     collector.Callback("t2")).ok());
  const int32_t expected = (41 + block_size - 1) / block_size + 3;
  EngineLoopStats stats = WaitForStats(loop, [&](const EngineLoopStats& s) {
    return s.num_reserved_kv_blocks == expected;
  });
  EXPECT_EQ(stats.num_reserved_kv_blocks, expected);
  EXPECT_EQ(stats.engine.blocks.num_in_use, expected);
  EXPECT_EQ(stats.num_queued_prompt_tokens, 0);  // nothing to prefill here
  loop.FailTransfer("t1", UnavailableError("the prefill worker is gone"));
  loop.Cancel("t2");
  ASSERT_TRUE(collector.WaitForFinished(2));
  stats = WaitForStats(loop, [](const EngineLoopStats& s) { return s.num_live == 0; });
  EXPECT_EQ(stats.num_reserved_kv_blocks, 0);
  ExpectPoolWholeWhenIdle(loop);
}

TEST(EngineLoopTest, AnIdCancelledAndResubmittedAtOnceIsRefusedUntilItsFinalIsOut) {
  // The engine forgets a cancelled request at once but its final output goes out after the batch
  // of commands; a resubmit of the id in that batch must be refused (it once replaced the old
  // request's callback, and the old final then crashed the loop), a later one admitted.
  auto engine = MakeCpuEngine(kModel);
  ASSERT_NE(engine, nullptr);
  EngineLoop loop(std::move(engine));
  int refused = 0;
  for (int round = 0; round < 20; ++round) {
    Collector first, second;
    ASSERT_TRUE(loop.Submit(GreedyRequest("x", Prompt(60, round), 400), first.Callback("x")).ok());
    loop.Cancel("x");
    const Status again = loop.Submit(GreedyRequest("x", Prompt(20, round), 3), second.Callback("x"));
    EXPECT_TRUE(again.ok() || again.code() == StatusCode::kAlreadyExists) << again.ToString();
    refused += again.ok() ? 0 : 1;
    ASSERT_TRUE(first.WaitForFinished(1));
    auto firsts = first.results();
    EXPECT_EQ(firsts["x"].num_finals, 1);
    EXPECT_FALSE(firsts["x"].output_after_final);
    EXPECT_EQ(firsts["x"].last.finish_reason, FinishReason::kAbort);
    if (again.ok()) {
      ASSERT_TRUE(second.WaitForFinished(1));
      auto seconds = second.results();
      EXPECT_EQ(seconds["x"].num_finals, 1);
      EXPECT_EQ(seconds["x"].tokens.size(), 3u);
    } else {
      EXPECT_TRUE(second.results().empty()) << "a refused submit never calls back";
    }
  }
  std::printf("[ engine loop ] resubmits refused while the cancelled one's final was pending: %d of 20\n",
              refused);
  ExpectPoolWholeWhenIdle(loop);
}

TEST(EngineLoopTest, DestructorWithLiveRequestsDeliversTheirFinals) {
  Collector collector;
  {
    auto engine = MakeCpuEngine(kModel);
    ASSERT_NE(engine, nullptr);
    EngineLoop loop(std::move(engine));
    ASSERT_TRUE(loop.Submit(GreedyRequest("a", Prompt(30), 1500), collector.Callback("a")).ok());
  }
  auto results = collector.results();
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results["a"].num_finals, 1);
  EXPECT_EQ(results["a"].last.finish_reason, FinishReason::kAbort);
}

}  // namespace
}  // namespace tandem
