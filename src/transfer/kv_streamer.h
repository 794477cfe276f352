// KvStreamer: the prefill side of a device-to-device KV transport (NCCL), driven by the engine
// thread so the KV of a prompt leaves while the step that completes its prefill still runs: layer
// l is gathered and sent as soon as the step has written it, while layer l + 1 computes
// (DistServe's overlap of transfer with compute). Sender and receiver block ids are independent:
// only the block order travels.
//
// The engine, in the step that completes the prefill of a request that has a route:
//   Begin(request, prompt blocks)    before the forward (false: no staging room; the engine
//                                    retries after the step, then without overlap)
//   LayerWritten(0 .. L-1)           during the forward, after each layer's K/V writes were enqueued
//   Commit(request, first token)     after sampling; nullopt: the request ended at its first token
//                                    (or the step failed) and the receiver drops what it got
// Every begun request is committed exactly once. The transfer then completes on the transport's
// threads; the worker learns its outcome through KvTransport::Send (see kv_transport.h).
//
// Threading: Begin, LayerWritten and Commit run on the engine thread only; they enqueue work and
// never wait for the GPU or the peer.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>

#include "tandem/status.h"
#include "tandem/types.h"

namespace tandem {

class KvStreamer {
 public:
  virtual ~KvStreamer() = default;

  // Whether `request_id` goes to a decode worker through this streamer (KvTransport::Prepare
  // registered it).
  virtual bool HasRoute(const std::string& request_id) const = 0;
  // The prompt's KV (`num_tokens` tokens in `block_ids`, in token order) is complete once this
  // step's layers are written. False: no staging room now (nothing was started).
  virtual StatusOr<bool> Begin(const std::string& request_id, std::span<const int32_t> block_ids,
                               int32_t num_tokens) = 0;
  // Layer `layer` of every request begun since the last Commit of all of them is written (its
  // kernels are enqueued on the backend's stream): gather it and send it.
  virtual Status LayerWritten(int32_t layer) = 0;
  // Ends the begun request: its first token, or nullopt to drop it at the receiver.
  virtual void Commit(const std::string& request_id, std::optional<TokenId> first_token) = 0;
};

}  // namespace tandem
