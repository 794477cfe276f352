// NcclKvTransport: KV handoff between GPU workers. The bytes move GPU to GPU over NCCL
// (ncclSend/ncclRecv on a two-rank communicator per prefill/decode pair); a TCP connection beside
// it carries the control plane of the pair: the NCCL unique id, the transfers' headers, the
// prefill's commit (first token) and the receiver's verdict.
//
// Sender (prefill worker): a KvStreamer driven by the engine thread (kv_streamer.h). For the
// requests whose prefill completes in a step, layer l is gathered from the paged cache into device
// staging by a kernel on the backend's stream right after the step wrote it, and sent on the
// pair's NCCL stream once that kernel ran (an event), so layer l moves while the layers after it
// compute. Layers leave in four sends per transfer (consecutive layers each, contiguous in the
// staging), which amortizes NCCL's per-operation cost while keeping the overlap.
// Sender and receiver block ids are independent: the staging holds the blocks in token order.
//
// Receiver (decode worker): one thread per connected sender posts the receives of each announced
// batch into its own device staging, and once the data is in and the commit arrived hands the
// staging to KvReceiveHandler::complete (the engine scatters it into the reserved blocks), then
// answers with the verdict.
//
// Wire (control, over TCP, net::FrameHeader with magic 'NKV1'):
//   kHello   sender -> receiver: u32 version, ncclUniqueId, geometry, i32 sends per transfer;
//            answered by kVerdict
//   kBatch   sender -> receiver: u32 n, then n x {request id, i32 num_tokens, i32 num_blocks}; the
//            sender then sends, for each chunk of LayersPerSend layers in order, each transfer's
//            chunk in batch order
//   kCommit  sender -> receiver: request id, u8 keep, i32 first token (keep 0: drop the KV)
//   kAck     receiver -> sender: request id, status (the verdict of one transfer)
//
// Failure: every wait is bounded (KvTransportOptions::io_timeout). A peer that dies, a socket that
// breaks, a transfer that makes no progress, or an NCCL async error ends the pair: the
// communicator is aborted (ncclCommAbort), every transfer in flight on it fails (Unavailable) on
// both sides, and the receiver releases the reservations (handler.fail). The next Prepare to that
// endpoint builds a new communicator with a new unique id.
//
// Memory: one device staging buffer per worker (staging_bytes, allocated once); a request whose
// KV does not fit now waits (Begin returns false; the engine retries after the step).
#pragma once

#include <nccl.h>

#include <atomic>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "backend/cuda/cuda_backend.h"
#include "transfer/connection_server.h"
#include "transfer/kv_streamer.h"
#include "transfer/kv_transport.h"
#include "transfer/socket_io.h"
#include "transfer/staging_arena.h"

namespace tandem {

struct NcclKvTransportOptions {
  KvTransportOptions transport;
  // Device staging for transfers in flight (sender or receiver side).
  size_t staging_bytes = size_t{1} << 30;
  // Sender: a transfer leaves in this many NCCL sends of consecutive layers. Fewer, larger sends
  // amortize NCCL's per-operation cost (tens of microseconds); more start the transfer earlier
  // while the prefill computes. 4 measured best for Llama-3.1-8B (benchmarks/RESULTS.md).
  int32_t sends_per_transfer = 4;
};

class NcclKvTransport final : public KvTransport, public KvStreamer {
 public:
  // `backend` and `layers` (the engine's KV cache) must outlive the transport.
  static StatusOr<std::unique_ptr<NcclKvTransport>> Create(CudaBackend& backend,
                                                           std::span<const KvLayerView> layers,
                                                           const KvGeometry& geometry,
                                                           NcclKvTransportOptions options);
  ~NcclKvTransport() override;  // Shutdown()

  // KvTransport.
  std::string_view name() const override { return "nccl"; }
  Status Prepare(const std::string& endpoint, const std::string& request_id) override;
  void Forget(const std::string& request_id) override;
  Status Send(const std::string& endpoint, const KvHandoff& handoff) override;
  StatusOr<std::string> Listen(const std::string& listen_address, KvReceiveHandler handler) override;
  void Shutdown() override;

  // KvStreamer (engine thread).
  bool HasRoute(const std::string& request_id) const override;
  StatusOr<bool> Begin(const std::string& request_id, std::span<const int32_t> block_ids,
                       int32_t num_tokens) override;
  Status LayerWritten(int32_t layer) override;
  void Commit(const std::string& request_id, std::optional<TokenId> first_token) override;

  // Staging bytes in use (a test reads it to check that every transfer returned its staging).
  size_t staging_bytes_in_use() const { return arena_.bytes_in_use(); }

 private:
  struct Peer;
  struct Outgoing;
  struct Incoming;

  NcclKvTransport(CudaBackend& backend, std::span<const KvLayerView> layers, const KvGeometry& geometry,
                  NcclKvTransportOptions options);
  size_t TransferBytes(int32_t num_blocks) const;
  StatusOr<cudaEvent_t> TakeEvent();            // a spare event, or a new one
  void ReturnEvent(cudaEvent_t event);          // REQUIRES: mu_ held; the work before it is done
  std::byte* Staging(size_t offset) const { return static_cast<std::byte*>(staging_->data()) + offset; }

  // Sender side.
  StatusOr<std::shared_ptr<Peer>> Connect(const std::string& endpoint);
  void ReadAcks(std::shared_ptr<Peer> peer);      // the peer's reader thread
  void FailPeer(const std::shared_ptr<Peer>& peer, const Status& error);  // aborts the pair, fails its transfers
  void Finish(Peer& peer, const std::string& request_id, Status result);

  // Receiver side: one sender's connection, on its own thread.
  Status ServeSender(int fd);

  CudaBackend& backend_;                     // Constant after construction
  const std::vector<KvLayerView> layers_;    // Constant after construction
  const KvGeometry geometry_;                // Constant after construction
  const NcclKvTransportOptions options_;     // Constant after construction
  std::unique_ptr<DeviceBuffer> staging_;    // Constant after construction
  StagingArena arena_;
  cudaEvent_t layer_event_ = nullptr;        // engine thread: recorded after each layer's gathers
  std::vector<cudaEvent_t> spare_events_;    // GUARDED_BY(mu_): transfers' `sent` events, reused

  // Sender state.
  mutable std::mutex mu_;
  std::condition_variable transfer_done_;                              // an Outgoing got its result
  std::unordered_map<std::string, std::shared_ptr<Peer>> peers_;       // GUARDED_BY(mu_), by endpoint
  std::unordered_map<std::string, std::shared_ptr<Peer>> routes_;      // GUARDED_BY(mu_), by request
  std::unordered_map<std::string, std::shared_ptr<Outgoing>> outgoing_;  // GUARDED_BY(mu_), by request
  std::vector<std::shared_ptr<Peer>> all_peers_;  // GUARDED_BY(mu_): every connected peer (readers joined at Shutdown)
  std::mutex connect_mu_;                                              // one Connect at a time
  std::vector<std::shared_ptr<Outgoing>> begun_;                       // engine thread only
  // Engine thread only: the peers of the step's begun transfers, in Begin order; set (and the
  // batch announced to them) at the step's first LayerWritten, cleared once all are committed.
  std::vector<std::shared_ptr<Peer>> step_peers_;

  // Receiver state.
  KvReceiveHandler handler_;  // Constant after Listen
  net::ConnectionServer server_;
  std::atomic<bool> stopping_{false};  // Shutdown began (the senders' reader threads end)
  bool shut_down_ = false;  // GUARDED_BY(mu_)
};

}  // namespace tandem
