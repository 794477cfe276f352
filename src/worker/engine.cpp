#include "worker/engine.h"

#include <algorithm>
#include <chrono>
#include <thread>

#include <spdlog/spdlog.h>

#include "sampling/sampler.h"

namespace tandem {

std::string_view EngineRoleName(EngineRole role) {
  switch (role) {
    case EngineRole::kColocated: return "colocated";
    case EngineRole::kPrefill: return "prefill";
    case EngineRole::kDecode: return "decode";
  }
  return "?";
}

StatusOr<EngineRole> ParseEngineRole(std::string_view name) {
  for (EngineRole role : {EngineRole::kColocated, EngineRole::kPrefill, EngineRole::kDecode}) {
    if (name == EngineRoleName(role)) return role;
  }
  return InvalidArgumentError("engine role must be colocated, prefill or decode, got '" +
                              std::string(name) + "'");
}

Status EngineConfig::Validate() const {
  if (block_size < 1 || block_size > 1024) {
    return InvalidArgumentError("block_size must be in [1, 1024], got " + std::to_string(block_size));
  }
  if (num_kv_blocks < 0) return InvalidArgumentError("num_kv_blocks must be >= 0");
  if (num_kv_blocks == 0 && kv_cache_bytes <= 0) {
    return InvalidArgumentError("kv_cache_bytes must be positive when num_kv_blocks is 0");
  }
  if (max_num_batched_tokens < 1) {
    return InvalidArgumentError("max_num_batched_tokens must be >= 1, got " +
                                std::to_string(max_num_batched_tokens));
  }
  if (max_num_seqs < 1) {
    return InvalidArgumentError("max_num_seqs must be >= 1, got " + std::to_string(max_num_seqs));
  }
  if (max_model_len < 0) return InvalidArgumentError("max_model_len must be >= 0");
  return OkStatus();
}

StatusOr<std::unique_ptr<Engine>> Engine::Create(const EngineConfig& config,
                                                 const ModelConfig& model_config,
                                                 std::unique_ptr<WeightSource> weights,
                                                 std::unique_ptr<Backend> backend) {
  TANDEM_RETURN_IF_ERROR(config.Validate());
  auto engine = std::unique_ptr<Engine>(new Engine());
  engine->config_ = config;
  engine->max_model_len_ = config.max_model_len > 0
                               ? std::min(config.max_model_len, model_config.max_position_embeddings)
                               : model_config.max_position_embeddings;
  if (engine->max_model_len_ <= 0) {
    return InvalidArgumentError("model has no max_position_embeddings; set max_model_len");
  }
  if (!config.enable_chunked_prefill && config.max_num_batched_tokens < engine->max_model_len_) {
    // A sequence longer than one step's budget could never be (re)admitted whole.
    return InvalidArgumentError(
        "with chunked prefill disabled, max_num_batched_tokens (" +
        std::to_string(config.max_num_batched_tokens) + ") must be at least max_model_len (" +
        std::to_string(engine->max_model_len_) + "); enable chunked prefill or lower max_model_len");
  }
  engine->backend_ = std::move(backend);
  engine->weights_ = std::move(weights);
  TANDEM_ASSIGN_OR_RETURN(engine->model_, LlamaModel::Load(model_config, *engine->weights_,
                                                           *engine->backend_, engine->max_model_len_));
  const int32_t max_rows = std::min(config.max_num_batched_tokens, config.max_num_seqs);
  TANDEM_RETURN_IF_ERROR(engine->model_->ReserveWorkspace(config.max_num_batched_tokens, max_rows));
  if (config.enable_cuda_graphs && engine->backend_->SupportsDecodeGraphs()) {
    // Before the KV cache takes what is left of the device: the graphs' buffers are fixed.
    DecodeGraphOptions graphs;
    graphs.max_batch = max_rows;
    graphs.block_size = config.block_size;
    const Status enabled = engine->model_->EnableDecodeGraphs(graphs);
    if (enabled.ok()) {
      spdlog::info("engine: decode steps of up to {} sequences run through graphs (captured on first use)",
                   max_rows);
    } else if (enabled.code() == StatusCode::kUnimplemented) {
      spdlog::warn("engine: decode graphs off: {}", enabled.ToString());
    } else {
      return enabled;
    }
  }
  KvCacheShape shape;
  shape.num_layers = static_cast<int32_t>(model_config.num_layers);
  shape.block_size = config.block_size;
  shape.num_kv_heads = static_cast<int32_t>(model_config.num_kv_heads);
  shape.head_dim = static_cast<int32_t>(model_config.head_dim);
  shape.dtype = engine->backend_->kv_cache_dtype();
  const int64_t kv_bytes = engine->backend_->KvCacheBudgetBytes().value_or(config.kv_cache_bytes);
  shape.num_blocks = config.num_kv_blocks > 0
                         ? config.num_kv_blocks
                         : static_cast<int32_t>(std::min<int64_t>(kv_bytes / shape.BytesPerBlock(), 1 << 30));
  if (shape.num_blocks < 1) {
    return ResourceExhaustedError("KV cache budget of " + std::to_string(kv_bytes) + " bytes" +
                                  " holds no KV block (one block needs " +
                                  std::to_string(shape.BytesPerBlock()) + " bytes)");
  }
  TANDEM_ASSIGN_OR_RETURN(engine->kv_cache_, KvCache::Create(*engine->backend_, shape));
  for (int32_t l = 0; l < shape.num_layers; ++l) engine->kv_layers_.push_back(engine->kv_cache_->layer(l));
  engine->kv_geometry_ = KvGeometry{shape.num_layers, shape.block_size, shape.num_kv_heads,
                                    shape.head_dim, shape.dtype};
  engine->blocks_ = std::make_unique<BlockManager>(
      BlockManagerConfig{shape.num_blocks, config.block_size, config.enable_prefix_caching});
  TANDEM_ASSIGN_OR_RETURN(auto policy, MakeSchedulingPolicy(config.scheduling_policy));
  SchedulerConfig sched;
  sched.max_num_batched_tokens = config.max_num_batched_tokens;
  sched.max_num_seqs = config.max_num_seqs;
  sched.enable_chunked_prefill = config.enable_chunked_prefill;
  engine->scheduler_ = std::make_unique<Scheduler>(sched, engine->blocks_.get(), std::move(policy));
  engine->eos_ids_ = model_config.eos_token_ids;
  engine->seed_rng_.seed(config.seed);
  spdlog::info("engine ({}): {} backend, {} KV blocks of {} tokens ({:.1f} MiB), max_model_len {}",
               EngineRoleName(config.role), engine->backend_->name(), shape.num_blocks, shape.block_size,
               static_cast<double>(shape.BytesPerBlock()) * shape.num_blocks / (1 << 20),
               engine->max_model_len_);
  return engine;
}

Engine::~Engine() = default;

Status Engine::ValidateRequest(const Request& request) const {
  const ModelConfig& mc = model_->config();
  if (request.request_id.empty()) return InvalidArgumentError("request_id must not be empty");
  if (sequences_.count(request.request_id) != 0) {
    return AlreadyExistsError("request_id '" + request.request_id + "' is already in flight");
  }
  if (request.prompt_token_ids.empty()) return InvalidArgumentError("prompt must not be empty");
  for (size_t i = 0; i < request.prompt_token_ids.size(); ++i) {
    const TokenId id = request.prompt_token_ids[i];
    if (id < 0 || id >= mc.vocab_size) {
      return InvalidArgumentError("prompt token " + std::to_string(i) + " is " + std::to_string(id) +
                                  ", outside the vocabulary [0, " + std::to_string(mc.vocab_size) + ")");
    }
  }
  const int64_t prompt_len = static_cast<int64_t>(request.prompt_token_ids.size());
  if (prompt_len >= max_model_len_) {
    return InvalidArgumentError("prompt has " + std::to_string(prompt_len) +
                                " tokens; the model's context is " + std::to_string(max_model_len_) +
                                " tokens (prompt + output), so at most " +
                                std::to_string(max_model_len_ - 1) + " prompt tokens fit");
  }
  TANDEM_RETURN_IF_ERROR(request.sampling.Validate(mc.vocab_size));
  const int64_t longest = std::min<int64_t>(prompt_len + request.sampling.max_tokens, max_model_len_);
  const int32_t blocks_needed = blocks_->BlocksForTokens(longest);
  if (blocks_needed > blocks_->config().num_blocks) {
    return InvalidArgumentError("request needs up to " + std::to_string(blocks_needed) +
                                " KV blocks (" + std::to_string(longest) +
                                " tokens) but the whole cache has " +
                                std::to_string(blocks_->config().num_blocks) +
                                "; lower max_tokens or enlarge the KV cache");
  }
  return OkStatus();
}

Status Engine::AddRequest(Request request) {
  TANDEM_RETURN_IF_ERROR(ValidateRequest(request));
  const uint64_t seed = request.sampling.seed ? *request.sampling.seed : seed_rng_();
  auto req = std::make_shared<const Request>(std::move(request));
  auto seq = std::make_unique<Sequence>(next_seq_id_++, req, seed);
  scheduler_->Add(seq.get());
  sequences_.emplace(req->request_id, std::move(seq));
  return OkStatus();
}

Status Engine::AddTransferredRequest(Request request) {
  TANDEM_RETURN_IF_ERROR(ValidateRequest(request));
  const uint64_t seed = request.sampling.seed ? *request.sampling.seed : seed_rng_();
  auto req = std::make_shared<const Request>(std::move(request));
  auto seq = std::make_unique<Sequence>(next_seq_id_++, req, seed);
  // The prompt's KV arrives; the first decode step writes the first token's. No prefix matching:
  // the transfer overwrites every reserved block, so none may be shared.
  const int64_t reserve = static_cast<int64_t>(seq->num_prompt_tokens()) + 1;
  auto allocated = blocks_->AllocateSequence(seq->id(), {}, reserve);
  if (!allocated.ok()) {
    return ResourceExhaustedError("no KV blocks free for request '" + req->request_id + "' (" +
                                  allocated.status().message() + "); retry later");
  }
  // waiting -> transferring_kv (holds the reserved blocks from now on)
  seq->TransitionTo(SequenceState::kTransferringKv);
  sequences_.emplace(req->request_id, std::move(seq));
  return OkStatus();
}

Sequence* Engine::FindTransferring(const std::string& request_id) {
  auto it = sequences_.find(request_id);
  if (it == sequences_.end() || it->second->state() != SequenceState::kTransferringKv) return nullptr;
  return it->second.get();
}

Status Engine::CompleteTransfer(const KvHandoff& handoff) {
  Sequence* seq = FindTransferring(handoff.request_id);
  if (seq == nullptr) {
    return NotFoundError("no request '" + handoff.request_id + "' waits for KV here (cancelled?)");
  }
  if (!(handoff.geometry == kv_geometry_)) {
    return InvalidArgumentError("KV geometry " + handoff.geometry.ToString() + " does not match this "
                                "worker's " + kv_geometry_.ToString());
  }
  if (handoff.num_tokens != seq->num_prompt_tokens() ||
      handoff.num_blocks != blocks_->BlocksForTokens(handoff.num_tokens) ||
      (handoff.device_data == nullptr && handoff.data.size() != handoff.TotalBytes())) {
    return InvalidArgumentError("KV of request '" + handoff.request_id + "' covers " +
                                std::to_string(handoff.num_tokens) + " tokens in " +
                                std::to_string(handoff.num_blocks) + " blocks (" +
                                std::to_string(handoff.data.size()) + " bytes); expected the " +
                                std::to_string(seq->num_prompt_tokens()) + "-token prompt");
  }
  const int64_t vocab = model_->config().vocab_size;
  if (handoff.first_token < 0 || handoff.first_token >= vocab) {
    return InvalidArgumentError("first token " + std::to_string(handoff.first_token) +
                                " is outside the vocabulary");
  }
  auto table = blocks_->BlockTable(seq->id());
  TANDEM_CHECK_GE(static_cast<int32_t>(table.size()), handoff.num_blocks);
  const auto blocks = table.first(static_cast<size_t>(handoff.num_blocks));
  TANDEM_RETURN_IF_ERROR(handoff.device_data != nullptr
                             ? backend_->ScatterKvBlocksFromDevice(handoff.device_data, blocks, kv_layers_)
                             : backend_->ScatterKvBlocks(handoff.data.data(), blocks, kv_layers_));
  seq->num_computed_tokens = handoff.num_tokens;
  blocks_->CommitComputed(seq->id(), seq->tokens(), seq->num_computed_tokens);
  seq->AppendToken(handoff.first_token);
  const Clock::time_point now = Clock::now();
  seq->first_scheduled_time = now;
  seq->first_token_time = now;
  seq->last_token_time = now;
  FinishReason reason;
  if (CheckStop(*seq, handoff.first_token, &reason)) {
    // The prefill worker stops on the same conditions, so this is a peer's mistake; end it cleanly.
    FinishSequence(*seq, reason);
    pending_final_.push_back(MakeOutput(*seq, /*final=*/true));
    sequences_.erase(handoff.request_id);
    return OkStatus();
  }
  // transferring_kv -> decoding (joins the running batch)
  seq->TransitionTo(SequenceState::kDecoding);
  scheduler_->AddRunning(seq);
  return OkStatus();
}

std::vector<std::string> Engine::TakeTransferReady() {
  std::vector<std::string> ready = std::move(transfer_ready_);
  transfer_ready_.clear();
  return ready;
}

StatusOr<KvHandoff> Engine::ReadKvForTransfer(const std::string& request_id) {
  Sequence* seq = FindTransferring(request_id);
  if (seq == nullptr) return NotFoundError("no request '" + request_id + "' waits for KV transfer");
  KvHandoff handoff;
  handoff.request_id = request_id;
  handoff.geometry = kv_geometry_;
  handoff.num_tokens = seq->num_prompt_tokens();
  handoff.num_blocks = blocks_->BlocksForTokens(handoff.num_tokens);
  TANDEM_CHECK_EQ(seq->num_computed_tokens, handoff.num_tokens);
  TANDEM_CHECK_EQ(seq->num_output_tokens(), 1);
  handoff.first_token = seq->output_tokens()[0];
  if (streamed_.count(request_id) != 0) {
    handoff.streamed = true;  // the streamer sent it during the prefill
    return handoff;
  }
  auto table = blocks_->BlockTable(seq->id());
  TANDEM_CHECK_GE(static_cast<int32_t>(table.size()), handoff.num_blocks);
  handoff.data.resize(handoff.TotalBytes());
  TANDEM_RETURN_IF_ERROR(backend_->GatherKvBlocks(
      kv_layers_, table.first(static_cast<size_t>(handoff.num_blocks)), handoff.data.data()));
  return handoff;
}

StatusOr<RequestOutput> Engine::ReleaseTransferred(const std::string& request_id) {
  Sequence* seq = FindTransferring(request_id);
  if (seq == nullptr) return NotFoundError("no request '" + request_id + "' waits for KV transfer");
  // transferring_kv -> finished: handed off; the decode worker finishes the request. A streamed
  // request's gathers were enqueued before its blocks can be reused (stream order).
  streamed_.erase(request_id);
  scheduler_->Remove(seq);  // frees its blocks (full ones stay in the prefix cache)
  seq->TransitionTo(SequenceState::kFinished);
  RequestOutput out = MakeOutput(*seq, /*final=*/true);
  out.finish_reason = FinishReason::kNone;
  sequences_.erase(request_id);
  return out;
}

bool Engine::Abort(const std::string& request_id, Status error) {
  auto it = sequences_.find(request_id);
  if (it == sequences_.end()) return false;
  Sequence& seq = *it->second;
  FinishSequence(seq, error.ok() ? FinishReason::kAbort : FinishReason::kError);
  pending_final_.push_back(MakeOutput(seq, /*final=*/true));
  pending_final_.back().status = std::move(error);
  sequences_.erase(it);
  return true;
}

void Engine::FinishSequence(Sequence& seq, FinishReason reason) {
  const std::string& id = seq.request().request_id;
  streamed_.erase(id);
  deferred_streams_.erase(std::remove(deferred_streams_.begin(), deferred_streams_.end(), id),
                          deferred_streams_.end());
  scheduler_->Remove(&seq);  // frees every KV block it holds
  seq.finish_reason = reason;
  seq.TransitionTo(reason == FinishReason::kAbort || reason == FinishReason::kError
                       ? SequenceState::kAborted
                       : SequenceState::kFinished);
}

RequestOutput Engine::MakeOutput(Sequence& seq, bool final) {
  RequestOutput out;
  out.request_id = seq.request().request_id;
  out.new_tokens = std::move(seq.pending_outputs);
  seq.pending_outputs.clear();
  out.finished = final;
  out.finish_reason = seq.finish_reason;
  out.num_prompt_tokens = seq.num_prompt_tokens();
  out.num_cached_tokens = seq.num_cached_tokens;
  out.num_output_tokens = seq.num_output_tokens();
  const Clock::time_point arrival = seq.request().arrival_time;
  if (seq.first_scheduled_time != Clock::time_point{}) {
    out.queue_ms = MillisBetween(arrival, seq.first_scheduled_time);
  }
  if (seq.first_token_time != Clock::time_point{}) {
    out.ttft_ms = MillisBetween(arrival, seq.first_token_time);
    if (seq.num_output_tokens() > 1) {
      out.tpot_ms = MillisBetween(seq.first_token_time, seq.last_token_time) /
                    static_cast<double>(seq.num_output_tokens() - 1);
    }
  }
  return out;
}

bool Engine::CheckStop(const Sequence& seq, TokenId token, FinishReason* reason) const {
  const SamplingParams& sp = seq.sampling();
  if (seq.num_output_tokens() >= sp.min_tokens) {
    if (!sp.ignore_eos &&
        std::find(eos_ids_.begin(), eos_ids_.end(), static_cast<int64_t>(token)) != eos_ids_.end()) {
      *reason = FinishReason::kStop;
      return true;
    }
    if (std::find(sp.stop_token_ids.begin(), sp.stop_token_ids.end(), token) !=
        sp.stop_token_ids.end()) {
      *reason = FinishReason::kStop;
      return true;
    }
  }
  if (seq.num_output_tokens() >= sp.max_tokens || seq.num_tokens() >= max_model_len_) {
    *reason = FinishReason::kLength;
    return true;
  }
  return false;
}

void Engine::StreamDeferred() {
  while (!deferred_streams_.empty()) {
    const std::string id = deferred_streams_.front();
    Sequence* seq = FindTransferring(id);
    TANDEM_CHECK(seq != nullptr) << "a deferred stream that is not transferring";
    const int32_t num_blocks = blocks_->BlocksForTokens(seq->num_prompt_tokens());
    auto table = blocks_->BlockTable(seq->id()).first(static_cast<size_t>(num_blocks));
    StatusOr<bool> started = streamer_->Begin(id, table, seq->num_prompt_tokens());
    if (started.ok() && !*started) {
      // Still no room: retried on the next step. With nothing else to run, the engine loop would
      // call straight back; pace it while the transport frees staging.
      if (!scheduler_->HasWork()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
      return;
    }
    Status sent = started.status();
    for (int32_t l = 0; sent.ok() && l < kv_geometry_.num_layers; ++l) sent = streamer_->LayerWritten(l);
    if (!sent.ok()) {
      if (started.ok()) streamer_->Commit(id, std::nullopt);
      Abort(id, sent);  // also drops it from deferred_streams_
      continue;
    }
    streamer_->Commit(id, seq->output_tokens()[0]);
    streamed_.insert(id);
    transfer_ready_.push_back(id);
    deferred_streams_.erase(deferred_streams_.begin());
  }
}

StatusOr<std::vector<RequestOutput>> Engine::Step() {
  if (!deferred_streams_.empty()) StreamDeferred();
  std::vector<RequestOutput> outputs = std::move(pending_final_);
  pending_final_.clear();
  if (!scheduler_->HasWork()) return outputs;

  SchedulerOutput plan = scheduler_->Schedule();
  num_preemptions_ += static_cast<int64_t>(plan.preempted.size());
  if (plan.empty()) return outputs;
  ++num_steps_;
  const Clock::time_point step_start = Clock::now();

  // Flatten the batch.
  const int32_t bs = config_.block_size;
  int32_t max_blocks = 0;
  for (const auto& s : plan.scheduled) {
    max_blocks = std::max<int32_t>(max_blocks, static_cast<int32_t>(blocks_->BlockTable(s.seq->id()).size()));
  }
  token_ids_.clear();
  positions_.clear();
  slot_mapping_.clear();
  query_start_.assign(1, 0);
  context_lens_.clear();
  logits_rows_.clear();
  block_tables_.assign(plan.scheduled.size() * static_cast<size_t>(max_blocks), 0);
  int32_t max_query_len = 0, max_context_len = 0;
  for (size_t i = 0; i < plan.scheduled.size(); ++i) {
    const ScheduledSequence& s = plan.scheduled[i];
    Sequence& seq = *s.seq;
    if (seq.first_scheduled_time == Clock::time_point{}) seq.first_scheduled_time = step_start;
    auto table = blocks_->BlockTable(seq.id());
    std::copy(table.begin(), table.end(), block_tables_.begin() + static_cast<int64_t>(i) * max_blocks);
    const int32_t begin = seq.num_computed_tokens;
    const int32_t end = begin + s.num_tokens;
    for (int32_t p = begin; p < end; ++p) {
      token_ids_.push_back(seq.tokens()[p]);
      positions_.push_back(p);
      slot_mapping_.push_back(static_cast<int64_t>(table[p / bs]) * bs + p % bs);
    }
    query_start_.push_back(static_cast<int32_t>(token_ids_.size()));
    context_lens_.push_back(end);
    if (s.samples) logits_rows_.push_back(static_cast<int32_t>(token_ids_.size()) - 1);
    max_query_len = std::max(max_query_len, s.num_tokens);
    max_context_len = std::max(max_context_len, end);
  }
  ModelInput input;
  input.token_ids = token_ids_;
  input.logits_rows = logits_rows_;
  AttentionMetadata& meta = input.attention;
  meta.num_seqs = static_cast<int32_t>(plan.scheduled.size());
  meta.num_tokens = static_cast<int32_t>(token_ids_.size());
  meta.query_start = query_start_;
  meta.context_lens = context_lens_;
  meta.block_tables = block_tables_;
  meta.max_blocks_per_seq = max_blocks;
  meta.positions = positions_;
  meta.slot_mapping = slot_mapping_;
  meta.block_size = bs;
  meta.max_query_len = max_query_len;
  meta.max_context_len = max_context_len;

  // Prefill role with a streamer: prompts whose prefill completes in this step leave layer by
  // layer during the forward (kv_streamer.h); without staging room they are deferred.
  std::unordered_set<Sequence*> begun;
  const bool streaming = streamer_ != nullptr && config_.role == EngineRole::kPrefill;
  for (const auto& s : plan.scheduled) {
    Sequence& seq = *s.seq;
    if (!streaming || !s.samples || seq.state() != SequenceState::kPrefilling ||
        seq.num_output_tokens() != 0 || !streamer_->HasRoute(seq.request().request_id)) {
      continue;
    }
    const int32_t num_blocks = blocks_->BlocksForTokens(seq.num_prompt_tokens());
    auto table = blocks_->BlockTable(seq.id()).first(static_cast<size_t>(num_blocks));
    StatusOr<bool> started = streamer_->Begin(seq.request().request_id, table, seq.num_prompt_tokens());
    if (!started.ok()) {
      spdlog::warn("request {}: KV streaming did not start ({}); deferred",
                   seq.request().request_id, started.status().ToString());
    } else if (*started) {
      begun.insert(&seq);
    }
  }
  if (!begun.empty()) {
    input.after_layer_kv = [this](int32_t layer) { return streamer_->LayerWritten(layer); };
  }

  // Forward, then sample on the backend: only token ids (and asked-for logprobs) come back.
  Status forward = [&]() -> Status {
    TANDEM_ASSIGN_OR_RETURN(Tensor logits, model_->ForwardToBackend(input, *kv_cache_));
    sample_inputs_.clear();
    for (const auto& s : plan.scheduled) {
      if (!s.samples) continue;
      const Sequence& seq = *s.seq;
      SampleInput in;
      in.params = &seq.sampling();
      in.seed = seq.seed();
      in.step = static_cast<uint64_t>(seq.num_output_tokens());
      in.prompt_tokens = seq.prompt_tokens();
      in.output_tokens = seq.output_tokens();
      sample_inputs_.push_back(in);
    }
    sample_outputs_.resize(sample_inputs_.size());
    if (sample_inputs_.empty()) return OkStatus();
    return backend_->SampleRows(logits, sample_inputs_, sample_outputs_);
  }();
  if (!forward.ok()) {
    // The step failed as a whole: every request in it ends with the error; the engine goes on.
    spdlog::error("engine step failed: {}", forward.ToString());
    for (Sequence* seq : begun) streamer_->Commit(seq->request().request_id, std::nullopt);
    for (const auto& s : plan.scheduled) {
      Sequence& seq = *s.seq;
      FinishSequence(seq, FinishReason::kError);
      RequestOutput out = MakeOutput(seq, true);
      out.status = forward;
      outputs.push_back(std::move(out));
      sequences_.erase(seq.request().request_id);
    }
    return outputs;
  }

  // Advance, check stops.
  size_t row = 0;
  const Clock::time_point now = Clock::now();
  std::vector<Sequence*> finished;
  for (const auto& s : plan.scheduled) {
    Sequence& seq = *s.seq;
    seq.num_computed_tokens += s.num_tokens;
    blocks_->CommitComputed(seq.id(), seq.tokens(), seq.num_computed_tokens);
    if (!s.samples) continue;
    SampleOutput& sampled = sample_outputs_[row++];
    seq.AppendToken(sampled.token);
    TokenOutput tok;
    tok.token = sampled.token;
    tok.logprob = sampled.logprob;
    for (const auto& lp : sampled.top_logprobs) tok.top_logprobs.emplace_back(lp.token, lp.logprob);
    seq.pending_outputs.push_back(std::move(tok));
    if (seq.first_token_time == Clock::time_point{}) seq.first_token_time = now;
    seq.last_token_time = now;
    FinishReason reason;
    const bool was_begun = begun.count(&seq) != 0;
    if (CheckStop(seq, sampled.token, &reason)) {
      // Ended at its first token: a streamed KV is dropped at the receiver.
      if (was_begun) streamer_->Commit(seq.request().request_id, std::nullopt);
      FinishSequence(seq, reason);
      finished.push_back(&seq);
    } else if (seq.state() == SequenceState::kPrefilling) {
      if (config_.role == EngineRole::kPrefill && seq.num_output_tokens() == 1) {
        // prefilling -> transferring_kv: out of the batch, blocks kept until the KV is read
        scheduler_->Detach(&seq);
        seq.TransitionTo(SequenceState::kTransferringKv);
        const std::string& id = seq.request().request_id;
        if (was_begun) {
          streamer_->Commit(id, sampled.token);
          streamed_.insert(id);
          transfer_ready_.push_back(id);
        } else if (streaming && streamer_->HasRoute(id)) {
          deferred_streams_.push_back(id);  // no staging room during the step: after it
        } else {
          transfer_ready_.push_back(id);
        }
      } else {
        // prefilling -> decoding (first token of this admission sampled)
        seq.TransitionTo(SequenceState::kDecoding);
      }
    }
  }
  for (const auto& s : plan.scheduled) {
    Sequence& seq = *s.seq;
    const bool done = !seq.IsLive();
    if (!done && seq.pending_outputs.empty()) continue;
    outputs.push_back(MakeOutput(seq, done));
  }
  for (Sequence* seq : finished) sequences_.erase(seq->request().request_id);
  return outputs;
}

EngineStats Engine::Stats() const {
  EngineStats stats;
  stats.blocks = blocks_->Stats();
  stats.num_waiting = scheduler_->num_waiting();
  stats.num_running = scheduler_->num_running();
  for (const auto& [id, seq] : sequences_) {
    if (seq->state() == SequenceState::kTransferringKv) ++stats.num_transferring;
  }
  stats.num_steps = num_steps_;
  stats.num_preemptions = num_preemptions_;
  return stats;
}

void Engine::CheckInvariants() const {
  blocks_->CheckInvariants();
  const BlockManagerStats s = blocks_->Stats();
  TANDEM_CHECK_EQ(s.num_free + s.num_cached + s.num_in_use, s.num_total);
  int64_t holding = 0, transferring = 0;
  for (const auto& [id, seq] : sequences_) {
    TANDEM_CHECK(seq->IsLive());
    const bool has_blocks = blocks_->HasSequence(seq->id());
    if (seq->state() == SequenceState::kTransferringKv) {
      TANDEM_CHECK(has_blocks) << "a sequence in transferring_kv holds no blocks";
      ++transferring;
    } else if (has_blocks) {
      ++holding;
    }
  }
  TANDEM_CHECK_LE(holding, static_cast<int64_t>(scheduler_->num_running()));
  if (sequences_.empty()) TANDEM_CHECK_EQ(s.num_in_use, 0);
}

}  // namespace tandem
