// Executor: where the API layer sends requests. The colocated deployment executes them on a local
// EngineLoop (LocalExecutor); the disaggregated router will implement the same interface over
// remote prefill and decode pools, so the gRPC service never knows which one it talks to.
#pragma once

#include <string>

#include "tandem/request.h"
#include "tandem/status.h"
#include "worker/engine_loop.h"

namespace tandem {

class Executor {
 public:
  virtual ~Executor() = default;
  // Same contract as EngineLoop::Submit: OK means `on_output` will get the request's outputs,
  // ending with exactly one final output; an error means it is never called. `on_output` must
  // not block.
  virtual Status Submit(Request request, OutputCallback on_output) = 0;
  // Aborts a live request (its final output, kAbort, follows); unknown ids are ignored.
  virtual void Cancel(const std::string& request_id) = 0;
  virtual EngineLoopStats Stats() const = 0;
};

// Runs requests on one local engine. Borrows the loop, which must outlive it.
class LocalExecutor final : public Executor {
 public:
  explicit LocalExecutor(EngineLoop& loop) : loop_(loop) {}
  Status Submit(Request request, OutputCallback on_output) override {
    return loop_.Submit(std::move(request), std::move(on_output));
  }
  void Cancel(const std::string& request_id) override { loop_.Cancel(request_id); }
  EngineLoopStats Stats() const override { return loop_.Stats(); }

 private:
  EngineLoop& loop_;
};

}  // namespace tandem
