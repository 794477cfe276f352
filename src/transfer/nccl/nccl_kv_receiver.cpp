// NcclKvTransport's receiver half (a decode worker): one thread per connected sender posts the
// receives of each announced batch and hands completed transfers to the KvReceiveHandler.
#include <poll.h>
#include <sys/socket.h>

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <deque>

#include "backend/cuda/cuda_check.h"
#include "transfer/nccl/nccl_kv_transport_state.h"

namespace tandem {


// --- receiver -------------------------------------------------------------------------------------

StatusOr<std::string> NcclKvTransport::Listen(const std::string& listen_address, KvReceiveHandler handler) {
  if (server_.started()) return FailedPreconditionError("NCCL KV transport: already listening");
  if (!handler.accept || !handler.complete || !handler.fail) {
    return InvalidArgumentError("NCCL KV transport: the receive handler needs accept, complete and fail");
  }
  handler_ = std::move(handler);
  return server_.Start(listen_address, [this](int fd) {
    Status ended = ServeSender(fd);
    if (!ended.ok() && !server_.stopping()) {
      spdlog::warn("NCCL KV transport: sender link ended: {}", ended.ToString());
    }
  });
}

Status NcclKvTransport::ServeSender(int fd) {
  const Millis timeout = options_.transport.io_timeout;
  TANDEM_ASSIGN_OR_RETURN(auto hello, ReadFrame(fd, timeout));
  net::PayloadReader r(hello.second);
  uint32_t version = 0;
  ncclUniqueId id;
  KvGeometry geometry;
  int32_t sends = 0;  // the sender's sends per transfer: the receives mirror them
  if (hello.first != Frame::kHello || !r.Get(&version) || !r.GetBytes(&id, sizeof(id)) ||
      !GetGeometry(r, &geometry) || !r.Get(&sends) || sends < 1 || !r.AtEnd()) {
    return DataLossError("malformed hello from a KV sender");
  }
  Status verdict = version != kVersion ? FailedPreconditionError("protocol version " + std::to_string(version) +
                                                                 ", this worker speaks " + std::to_string(kVersion))
                   : !(geometry == geometry_) ? InvalidArgumentError("KV geometry " + geometry.ToString() +
                                                                     " does not match this worker's " +
                                                                     geometry_.ToString())
                                              : OkStatus();
  if (!verdict.ok()) {
    (void)WriteFrame(fd, Frame::kVerdict, net::EncodeStatus(verdict), timeout);
    return verdict;
  }
  TANDEM_CUDA_RETURN_IF_ERROR(cudaSetDevice(backend_.device()));
  cudaStream_t stream = nullptr;
  TANDEM_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  PairComms comms;
  std::deque<std::vector<std::shared_ptr<Incoming>>> batches;       // announced, in order
  std::unordered_map<std::string, std::shared_ptr<Incoming>> by_id;  // announced, not answered
  size_t warmup = 0;  // staging offset of the warm-up receive while held
  bool holds_warmup = false;
  cudaEvent_t warmup_event = nullptr;

  auto serve = [&]() -> Status {
    TANDEM_RETURN_IF_ERROR(CreatePairComms(id, 1, options_.transport.connect_timeout + timeout, &comms));
    const ncclComm_t comm = comms.data;
    TANDEM_RETURN_IF_ERROR(WriteFrame(fd, Frame::kVerdict, net::EncodeStatus(OkStatus()), timeout));
    std::optional<size_t> offset = arena_.Allocate(kWarmupBytes);
    if (!offset) return ResourceExhaustedError("no staging for the warm-up receive");
    warmup = *offset;
    holds_warmup = true;
    TANDEM_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&warmup_event, cudaEventDisableTiming));
    TANDEM_RETURN_IF_ERROR(NcclStatus(ncclRecv(Staging(warmup), kWarmupBytes, ncclUint8, 0, comm, stream), "ncclRecv"));
    TANDEM_CUDA_RETURN_IF_ERROR(cudaEventRecord(warmup_event, stream));
    TANDEM_RETURN_IF_ERROR(WaitEvent(warmup_event, options_.transport.connect_timeout + timeout, "warm-up receive"));
    arena_.Free(warmup);
    holds_warmup = false;

    for (;;) {
      if (server_.stopping()) return UnavailableError("the decode worker is shutting down");
      // Post the receives of announced batches, in order, while staging has room.
      while (!batches.empty() && !batches.front().front()->posted) {
        auto& batch = batches.front();
        bool room = true;
        for (auto& in : batch) {
          std::optional<size_t> offset = arena_.Allocate(TransferBytes(in->header.num_blocks));
          if (!offset) {
            room = false;
            break;
          }
          in->offset = *offset;
          in->posted = true;
        }
        if (!room) {  // all or nothing: give back what this batch took
          for (auto& in : batch) {
            if (in->posted) arena_.Free(in->offset);
            in->posted = false;
          }
          break;
        }
        TANDEM_RETURN_IF_ERROR(NcclStatus(ncclGroupStart(), "ncclGroupStart"));
        const int32_t per_send = LayersPerSend(geometry_.num_layers, sends);
        for (int32_t l = 0; l < geometry_.num_layers; l += per_send) {
          const size_t chunk_layers = static_cast<size_t>(std::min(per_send, geometry_.num_layers - l));
          for (auto& in : batch) {
            const size_t layer_bytes = in->header.LayerBytes();
            TANDEM_RETURN_IF_ERROR(NcclStatus(
                ncclRecv(Staging(in->offset + static_cast<size_t>(l) * layer_bytes), chunk_layers * layer_bytes,
                         ncclUint8, 0, comm, stream),
                "ncclRecv"));
          }
        }
        TANDEM_RETURN_IF_ERROR(NcclStatus(ncclGroupEnd(), "ncclGroupEnd"));  // blocking communicator: launched
        cudaEvent_t raw = nullptr;
        TANDEM_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&raw, cudaEventDisableTiming));
        std::shared_ptr<CUevent_st> done(raw, [](cudaEvent_t e) { (void)cudaEventDestroy(e); });
        TANDEM_CUDA_RETURN_IF_ERROR(cudaEventRecord(raw, stream));
        for (auto& in : batch) {
          in->done = done;
          in->posted_at = Clock::now();
        }
        batches.pop_front();
      }
      // Progress: transfers whose bytes are in and whose commit arrived are answered.
      for (auto it = by_id.begin(); it != by_id.end();) {
        Incoming& in = *it->second;
        if (in.posted && !in.received) {
          const cudaError_t e = cudaEventQuery(in.done.get());
          if (e == cudaSuccess) {
            in.received = true;
          } else if (e != cudaErrorNotReady) {
            return CudaErrorToStatus(e, "KV receive");
          } else if (Clock::now() - in.posted_at > timeout) {
            return DeadlineExceededError("the KV of request '" + in.header.request_id + "' did not arrive within " +
                                         MillisText(timeout));
          }
        }
        if (!in.received || !in.committed) {
          ++it;
          continue;
        }
        Status answer;
        if (!in.accepted.ok()) {
          answer = in.accepted;
        } else if (!in.keep) {
          answer = CancelledError("the prefill worker dropped the KV (the request ended at its first token)");
          handler_.fail(in.header.request_id, answer);
        } else {
          KvHandoff handoff = in.header;
          handoff.first_token = in.first_token;
          handoff.device_data = Staging(in.offset);
          answer = handler_.complete(std::move(handoff));  // the engine scatters it, then returns
        }
        arena_.Free(in.offset);
        in.posted = false;
        net::PayloadWriter ack;
        ack.PutString(in.header.request_id);
        const std::vector<std::byte> status = net::EncodeStatus(answer);
        ack.PutBytes(status.data(), status.size());
        it = by_id.erase(it);
        TANDEM_RETURN_IF_ERROR(WriteFrame(fd, Frame::kAck, ack.bytes(), timeout));
      }
      ncclResult_t state = ncclSuccess;
      TANDEM_RETURN_IF_ERROR(NcclStatus(ncclCommGetAsyncError(comm, &state), "ncclCommGetAsyncError"));
      if (state != ncclSuccess && state != ncclInProgress) return NcclStatus(state, "asynchronous error");
      // Control frames. While receives are in flight, look without waiting and yield, so the
      // event polls above see the data land within microseconds (a sleep, even a short one, costs
      // the timer slack: ~50 us more per transfer); otherwise block in poll(), which wakes as soon
      // as a frame arrives (up to 50 ms when idle, to notice shutdown).
      const bool in_flight = std::any_of(by_id.begin(), by_id.end(),
                                         [](const auto& e) { return e.second->posted && !e.second->received; });
      if (!Readable(fd, in_flight ? Millis(0) : by_id.empty() ? Millis(50) : Millis(5))) {
        if (in_flight) std::this_thread::yield();
        continue;
      }
      TANDEM_ASSIGN_OR_RETURN(auto frame, ReadFrame(fd, timeout));
      net::PayloadReader fr(frame.second);
      if (frame.first == Frame::kBatch) {
        uint32_t n = 0;
        if (!fr.Get(&n) || n == 0 || n > 4096) return DataLossError("malformed KV batch");
        std::vector<std::shared_ptr<Incoming>> batch;
        for (uint32_t i = 0; i < n; ++i) {
          auto in = std::make_shared<Incoming>();
          KvHandoff& h = in->header;
          h.geometry = geometry_;
          if (!fr.GetString(&h.request_id) || !fr.Get(&h.num_tokens) || !fr.Get(&h.num_blocks) ||
              h.num_tokens <= 0 || h.num_blocks != (h.num_tokens + geometry_.block_size - 1) / geometry_.block_size ||
              by_id.count(h.request_id) != 0) {
            return DataLossError("malformed KV batch entry");
          }
          if (TransferBytes(h.num_blocks) > arena_.capacity()) {
            return ResourceExhaustedError("a KV transfer of " + std::to_string(TransferBytes(h.num_blocks)) +
                                          " bytes exceeds this worker's staging");
          }
          in->accepted = handler_.accept(h);
          by_id[h.request_id] = in;
          batch.push_back(std::move(in));
        }
        if (!fr.AtEnd()) return DataLossError("malformed KV batch");
        batches.push_back(std::move(batch));
      } else if (frame.first == Frame::kCommit) {
        std::string request_id;
        uint8_t keep = 0;
        int32_t token = 0;
        if (!fr.GetString(&request_id) || !fr.Get(&keep) || !fr.Get(&token) || !fr.AtEnd()) {
          return DataLossError("malformed KV commit");
        }
        auto it = by_id.find(request_id);
        if (it == by_id.end()) return DataLossError("KV commit of unknown request '" + request_id + "'");
        it->second->committed = true;
        it->second->keep = keep != 0;
        it->second->first_token = token;
      } else {
        return DataLossError("unexpected message from a KV sender");
      }
    }
  };
  Status ended = serve();
  // The link is over: abort the communicator (ends receives stuck on it), release every
  // reservation still waiting and all staging.
  AbortPairComms(&comms);
  (void)cudaStreamSynchronize(stream);
  for (auto& [request_id, in] : by_id) {
    if (in->accepted.ok()) handler_.fail(request_id, ended.ok() ? UnavailableError("KV link closed") : ended);
    if (in->posted) arena_.Free(in->offset);
  }
  if (holds_warmup) arena_.Free(warmup);
  by_id.clear();  // their batch events are destroyed here, after the stream is idle
  batches.clear();
  if (warmup_event != nullptr) (void)cudaEventDestroy(warmup_event);
  (void)cudaStreamDestroy(stream);
  return ended;
}

}  // namespace tandem
