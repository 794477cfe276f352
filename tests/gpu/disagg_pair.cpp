#include "disagg_pair.h"

#include <thread>

namespace tandem::gpu_testing {

StatusOr<std::unique_ptr<DisaggPair>> DisaggPair::Create(std::unique_ptr<Engine> prefill,
                                                         std::unique_ptr<Engine> decode,
                                                         NcclKvTransportOptions options) {
  auto* prefill_backend = dynamic_cast<CudaBackend*>(&prefill->backend());
  auto* decode_backend = dynamic_cast<CudaBackend*>(&decode->backend());
  if (prefill_backend == nullptr || decode_backend == nullptr) {
    return InvalidArgumentError("DisaggPair needs engines on the CUDA backend");
  }
  auto pair = std::unique_ptr<DisaggPair>(new DisaggPair());
  DisaggPair* self = pair.get();
  TANDEM_ASSIGN_OR_RETURN(pair->receiver_, NcclKvTransport::Create(*decode_backend, decode->kv_layers(),
                                                                   decode->kv_geometry(), options));
  TANDEM_ASSIGN_OR_RETURN(pair->sender_, NcclKvTransport::Create(*prefill_backend, prefill->kv_layers(),
                                                                 prefill->kv_geometry(), options));
  prefill->SetKvStreamer(pair->sender_.get());
  pair->decode_ = std::make_unique<EngineLoop>(std::move(decode));
  pair->prefill_ = std::make_unique<EngineLoop>(std::move(prefill));
  KvReceiveHandler handler;
  handler.accept = [self](const KvHandoff& h) -> Status {
    std::lock_guard<std::mutex> lock(self->mu_);
    return self->reserved_.count(h.request_id) ? OkStatus() : NotFoundError("no reservation");
  };
  handler.complete = [self](KvHandoff h) {
    std::this_thread::sleep_for(std::chrono::milliseconds(self->complete_delay_ms_.load()));
    return self->decode_->CompleteTransfer(std::move(h));
  };
  handler.fail = [self](const std::string& id, const Status& e) { self->decode_->FailTransfer(id, e); };
  TANDEM_ASSIGN_OR_RETURN(pair->endpoint_, pair->receiver_->Listen("127.0.0.1:0", handler));
  return pair;
}

DisaggPair::~DisaggPair() {
  if (receiver_) receiver_->Shutdown();
  if (sender_) sender_->Shutdown();
  if (prefill_) (void)prefill_->Shutdown(Clock::now());
  if (decode_) (void)decode_->Shutdown(Clock::now());
}

StatusOr<std::shared_ptr<DisaggPair::Run>> DisaggPair::Start(Request request) {
  auto run = std::make_shared<Run>();
  run->id = request.request_id;
  run->submitted = Clock::now();
  {
    std::lock_guard<std::mutex> lock(mu_);
    reserved_.insert(run->id);
  }
  auto on_decode = [run](RequestOutput out) {
    std::lock_guard<std::mutex> lock(run->mu);
    if (!out.new_tokens.empty() && run->second_token == Clock::time_point{}) run->second_token = Clock::now();
    for (const auto& t : out.new_tokens) run->tokens.push_back(t.token);
    if (out.finished) {
      run->status = out.status;
      run->done.set_value();
    }
  };
  TANDEM_RETURN_IF_ERROR(decode_->SubmitTransferred(request, on_decode));
  if (Status s = sender_->Prepare(endpoint_, run->id); !s.ok()) {
    decode_->Cancel(run->id);
    return s;
  }
  auto on_prefill = [run](RequestOutput out) {
    std::lock_guard<std::mutex> lock(run->mu);
    if (!out.new_tokens.empty() && run->first_token == Clock::time_point{}) run->first_token = Clock::now();
    // The first token is the prefill's; the decode worker does not emit it again.
    for (const auto& t : out.new_tokens) run->tokens.insert(run->tokens.begin(), t.token);
  };
  auto on_kv = [run](StatusOr<KvHandoff> kv) { run->kv.set_value(std::move(kv)); };
  TANDEM_RETURN_IF_ERROR(prefill_->Submit(std::move(request), on_prefill, on_kv));
  return run;
}

Status DisaggPair::Finish(Run& run) {
  StatusOr<KvHandoff> kv = run.kv.get_future().get();
  Status sent = !kv.ok()        ? kv.status()
                : !kv->streamed ? InternalError("the handoff of '" + run.id + "' was not streamed")
                                : sender_->Send(endpoint_, *kv);
  run.handed_off = Clock::now();
  sender_->Forget(run.id);
  {
    std::lock_guard<std::mutex> lock(mu_);
    reserved_.erase(run.id);
  }
  if (!sent.ok()) {
    decode_->Cancel(run.id);
    run.done.get_future().wait();
    return sent;
  }
  run.done.get_future().wait();
  return run.status;
}

}  // namespace tandem::gpu_testing
