// KvTransport: moves a request's KV cache (a KvHandoff) from a prefill worker to a decode worker.
// An interface, like Backend (leveldb's Env pattern): TCP between CPU workers now
// (tcp_kv_transport.h), NCCL between GPUs later; workers get one injected.
//
// A transfer, on any implementation:
//   sender                                   receiver
//   Send(endpoint, handoff) ── handshake ──▶ handler.accept(header)  (reserved here? geometry equal?)
//                           ◀── accept/reject
//                           ── layer 0..L-1 chunks ──▶ (assembled in host memory)
//                           ── done ──▶      handler.complete(handoff) (written into the cache)
//                           ◀── ack(status)
// Every wait is bounded (KvTransportOptions): a dead or stuck peer is an error on both sides,
// never a hang. When an accepted transfer breaks, the receiver calls handler.fail so the
// reservation is freed; the sender's Send returns the error.
//
// Threads: Send blocks its caller (any thread; several may send at once). The handler's functions
// run on the transport's threads and may block (the decode worker waits for its engine thread).
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "tandem/status.h"
#include "transfer/kv_handoff.h"

namespace tandem {

struct KvTransportOptions {
  std::chrono::milliseconds connect_timeout{2000};
  // Longest wait for any one read or write to make progress, and for the receiver's verdicts.
  std::chrono::milliseconds io_timeout{5000};
  // Largest transfer a receiver accepts (a bound on what a peer can make it allocate).
  size_t max_transfer_bytes = size_t{8} << 30;
};

struct KvReceiveHandler {
  // The handshake: `header` has every field but `data`. Non-OK rejects the transfer (the sender
  // hears the status); OK means the receiver will call exactly one of complete and fail.
  std::function<Status(const KvHandoff& header)> accept;
  // Every byte arrived. The returned status is the sender's ack.
  std::function<Status(KvHandoff handoff)> complete;
  // An accepted transfer broke (peer gone, timeout, malformed frame).
  std::function<void(const std::string& request_id, const Status& error)> fail;
};

class KvTransport {
 public:
  virtual ~KvTransport() = default;
  virtual std::string_view name() const = 0;

  // Sender side, before the request is submitted to the prefill engine: a transport that streams
  // KV during the prefill (KvStreamer) connects to `endpoint` now (blocking; Unavailable when it
  // cannot) and routes `request_id` there. Forget drops the route (the request ended without a
  // transfer); it is a no-op for a request Send already completed.
  virtual Status Prepare(const std::string& endpoint, const std::string& request_id) { return OkStatus(); }
  virtual void Forget(const std::string& request_id) {}

  // Pushes `handoff` to the receiver at `endpoint` and waits for its ack: OK once the receiver
  // wrote the KV. Unavailable when the peer cannot be reached or goes away, DeadlineExceeded when
  // it stops responding, the receiver's status when it rejects or fails the transfer. A
  // `streamed` handoff already left through the KvStreamer: Send only waits for the verdict.
  virtual Status Send(const std::string& endpoint, const KvHandoff& handoff) = 0;

  // Starts receiving on `listen_address` (host:port, port 0 picks one). Returns the endpoint
  // senders use. Once per transport.
  virtual StatusOr<std::string> Listen(const std::string& listen_address,
                                       KvReceiveHandler handler) = 0;

  // Stops receiving: transfers in progress fail (handler.fail), threads are joined. Idempotent.
  virtual void Shutdown() = 0;
};

}  // namespace tandem
