#include "transfer/nccl/nccl_kv_transport.h"

#include <poll.h>
#include <sys/socket.h>

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <deque>

#include "backend/cuda/cuda_check.h"
#include "transfer/nccl/nccl_kv_transport_state.h"

namespace tandem {


// --- construction -----------------------------------------------------------------------------------

NcclKvTransport::NcclKvTransport(CudaBackend& backend, std::span<const KvLayerView> layers,
                                 const KvGeometry& geometry, NcclKvTransportOptions options)
    : backend_(backend),
      layers_(layers.begin(), layers.end()),
      geometry_(geometry),
      options_(options),
      arena_(options.staging_bytes) {}

StatusOr<std::unique_ptr<NcclKvTransport>> NcclKvTransport::Create(CudaBackend& backend,
                                                                   std::span<const KvLayerView> layers,
                                                                   const KvGeometry& geometry,
                                                                   NcclKvTransportOptions options) {
  if (layers.size() != static_cast<size_t>(geometry.num_layers) || layers.empty()) {
    return InvalidArgumentError("NCCL KV transport: the KV cache has " + std::to_string(layers.size()) +
                                " layers, the geometry " + std::to_string(geometry.num_layers));
  }
  if (geometry.BlockBytes() % 16 != 0) {
    return InvalidArgumentError("NCCL KV transport: KV blocks of " + std::to_string(geometry.BlockBytes()) +
                                " bytes are not a multiple of 16");
  }
  if (options.sends_per_transfer < 1) {
    return InvalidArgumentError("NCCL KV transport: sends_per_transfer must be >= 1");
  }
  auto t = std::unique_ptr<NcclKvTransport>(new NcclKvTransport(backend, layers, geometry, options));
  TANDEM_ASSIGN_OR_RETURN(t->staging_, backend.Allocate(t->arena_.capacity()));
  TANDEM_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&t->layer_event_, cudaEventDisableTiming));
  int nccl_version = 0;
  (void)ncclGetVersion(&nccl_version);
  spdlog::info("NCCL KV transport: NCCL {}, {:.0f} MiB of device staging on device {}", nccl_version,
               static_cast<double>(t->arena_.capacity()) / (1 << 20), backend.device());
  return t;
}

NcclKvTransport::~NcclKvTransport() {
  Shutdown();
  if (layer_event_ != nullptr) (void)cudaEventDestroy(layer_event_);
  for (cudaEvent_t e : spare_events_) (void)cudaEventDestroy(e);
}

StatusOr<cudaEvent_t> NcclKvTransport::TakeEvent() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!spare_events_.empty()) {
      cudaEvent_t e = spare_events_.back();
      spare_events_.pop_back();
      return e;
    }
  }
  cudaEvent_t e = nullptr;
  TANDEM_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  return e;
}

void NcclKvTransport::ReturnEvent(cudaEvent_t event) { spare_events_.push_back(event); }

size_t NcclKvTransport::TransferBytes(int32_t num_blocks) const {
  return static_cast<size_t>(geometry_.num_layers) * 2 * static_cast<size_t>(num_blocks) * geometry_.BlockBytes();
}

// --- sender: connection --------------------------------------------------------------------------

StatusOr<std::shared_ptr<NcclKvTransport::Peer>> NcclKvTransport::Connect(const std::string& endpoint) {
  std::lock_guard<std::mutex> connect_lock(connect_mu_);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (shut_down_) return UnavailableError("NCCL KV transport is shutting down");
    auto it = peers_.find(endpoint);
    if (it != peers_.end() && !it->second->broken.load()) return it->second;
  }
  const Millis timeout = options_.transport.io_timeout;
  auto peer = std::make_shared<Peer>();
  peer->endpoint = endpoint;
  TANDEM_ASSIGN_OR_RETURN(peer->socket, net::Connect(endpoint, options_.transport.connect_timeout));
  ncclUniqueId id;
  TANDEM_RETURN_IF_ERROR(NcclStatus(ncclGetUniqueId(&id), "ncclGetUniqueId"));
  net::PayloadWriter hello;
  hello.Put<uint32_t>(kVersion);
  hello.PutBytes(&id, sizeof(id));
  PutGeometry(hello, geometry_);
  hello.Put<int32_t>(options_.sends_per_transfer);
  TANDEM_RETURN_IF_ERROR(WriteFrame(peer->socket.fd(), Frame::kHello, hello.bytes(), timeout));

  TANDEM_CUDA_RETURN_IF_ERROR(cudaSetDevice(backend_.device()));
  TANDEM_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&peer->stream, cudaStreamNonBlocking));
  std::optional<size_t> warmup;
  auto fail = [&](Status s) {
    AbortPairComms(&peer->comms);
    (void)cudaStreamSynchronize(peer->stream);
    (void)cudaStreamDestroy(peer->stream);
    peer->stream = nullptr;
    if (warmup) arena_.Free(*warmup);
    return Status(s.code(), "KV link to " + endpoint + ": " + s.message());
  };
  Status s = CreatePairComms(id, 0, options_.transport.connect_timeout + timeout, &peer->comms);
  if (!s.ok()) return fail(s);
  // The receiver answers once its half of the communicator is up.
  auto verdict = ReadFrame(peer->socket.fd(), options_.transport.connect_timeout + timeout);
  if (!verdict.ok()) return fail(verdict.status());
  if (verdict->first != Frame::kVerdict) return fail(DataLossError("expected the receiver's verdict"));
  if (s = net::DecodeStatus(verdict->second, "receiver: "); !s.ok()) return fail(s);
  // One small send so NCCL connects the pair now, not inside a prefill step.
  warmup = arena_.Allocate(kWarmupBytes);
  if (!warmup) return fail(ResourceExhaustedError("no staging for the warm-up send"));
  cudaEvent_t event = nullptr;
  if (cudaEventCreateWithFlags(&event, cudaEventDisableTiming) != cudaSuccess) {
    return fail(InternalError("cudaEventCreate failed"));
  }
  s = NcclStatus(ncclSend(Staging(*warmup), kWarmupBytes, ncclUint8, 1, peer->comms.data, peer->stream), "ncclSend");
  if (s.ok()) s = CudaErrorToStatus(cudaEventRecord(event, peer->stream), "cudaEventRecord");
  if (s.ok()) s = WaitEvent(event, options_.transport.connect_timeout + timeout, "warm-up send");
  (void)cudaEventDestroy(event);
  if (!s.ok()) return fail(s);
  arena_.Free(*warmup);

  std::lock_guard<std::mutex> lock(mu_);
  if (shut_down_) {
    return fail(UnavailableError("NCCL KV transport is shutting down"));
  }
  peer->reader = std::thread([this, peer] { ReadAcks(peer); });
  all_peers_.push_back(peer);
  peers_[endpoint] = peer;
  spdlog::info("NCCL KV transport: connected to decode worker {}", endpoint);
  return peer;
}

Status NcclKvTransport::Prepare(const std::string& endpoint, const std::string& request_id) {
  TANDEM_ASSIGN_OR_RETURN(std::shared_ptr<Peer> peer, Connect(endpoint));
  std::lock_guard<std::mutex> lock(mu_);
  routes_[request_id] = std::move(peer);
  return OkStatus();
}

void NcclKvTransport::Forget(const std::string& request_id) {
  std::lock_guard<std::mutex> lock(mu_);
  routes_.erase(request_id);
  auto it = outgoing_.find(request_id);
  if (it == outgoing_.end()) return;
  if (it->second->result) {
    outgoing_.erase(it);
  } else {
    it->second->abandoned = true;  // erased when its verdict arrives
  }
}

bool NcclKvTransport::HasRoute(const std::string& request_id) const {
  std::lock_guard<std::mutex> lock(mu_);
  return routes_.count(request_id) != 0;
}

// --- sender: the engine thread's side ---------------------------------------------------------------

StatusOr<bool> NcclKvTransport::Begin(const std::string& request_id, std::span<const int32_t> block_ids,
                                      int32_t num_tokens) {
  TANDEM_CHECK(step_peers_.empty()) << "KvStreamer::Begin after LayerWritten in one step";
  std::shared_ptr<Peer> peer;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = routes_.find(request_id);
    if (it == routes_.end()) return FailedPreconditionError("no KV route for request '" + request_id + "'");
    peer = it->second;
  }
  if (peer->broken.load()) {
    return UnavailableError("the KV link to decode worker " + peer->endpoint + " is down");
  }
  const int32_t num_blocks = static_cast<int32_t>(block_ids.size());
  const size_t data = TransferBytes(num_blocks);
  const size_t total = data + block_ids.size_bytes();
  if (total > arena_.capacity()) {
    return ResourceExhaustedError("the KV of request '" + request_id + "' (" + std::to_string(total) +
                                  " bytes) exceeds the transfer staging of " +
                                  std::to_string(arena_.capacity()) + " bytes");
  }
  std::optional<size_t> offset = arena_.Allocate(total);
  if (!offset) return false;
  auto out = std::make_shared<Outgoing>();
  out->request_id = request_id;
  out->peer = peer;
  out->offset = *offset;
  out->num_blocks = num_blocks;
  out->num_tokens = num_tokens;
  // Pageable host memory: the copy is staged before cudaMemcpyAsync returns.
  Status s = CudaErrorToStatus(cudaMemcpyAsync(Staging(*offset + data), block_ids.data(), block_ids.size_bytes(),
                                               cudaMemcpyHostToDevice, backend_.stream()),
                               "uploading block ids");
  if (s.ok()) {
    StatusOr<cudaEvent_t> event = TakeEvent();
    s = event.status();
    if (s.ok()) out->sent = *event;
  }
  if (!s.ok()) {
    arena_.Free(*offset);
    return s;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    outgoing_[request_id] = out;
  }
  begun_.push_back(std::move(out));
  return true;
}

Status NcclKvTransport::LayerWritten(int32_t layer) {
  if (begun_.empty()) return OkStatus();
  const Millis timeout = options_.transport.io_timeout;
  // The transfers of one step, grouped by peer, in Begin order: the receiver posts its receives
  // layer by layer in the same order.
  if (step_peers_.empty()) {  // the step's first layer: announce its transfers to each peer
    for (const auto& o : begun_) {
      if (std::find(step_peers_.begin(), step_peers_.end(), o->peer) == step_peers_.end()) {
        step_peers_.push_back(o->peer);
      }
    }
    for (const auto& peer : step_peers_) {
      net::PayloadWriter w;
      uint32_t n = 0;
      for (const auto& o : begun_) n += o->peer == peer ? 1 : 0;
      w.Put<uint32_t>(n);
      for (const auto& o : begun_) {
        if (o->peer != peer) continue;
        w.PutString(o->request_id);
        w.Put<int32_t>(o->num_tokens);
        w.Put<int32_t>(o->num_blocks);
      }
      if (Status s = peer->WriteControl(Frame::kBatch, w.bytes(), timeout); !s.ok()) FailPeer(peer, s);
    }
  }
  for (const auto& o : begun_) {
    const size_t layer_bytes = TransferBytes(o->num_blocks) / static_cast<size_t>(geometry_.num_layers);
    const auto* ids = reinterpret_cast<const int32_t*>(Staging(o->offset + TransferBytes(o->num_blocks)));
    TANDEM_RETURN_IF_ERROR(backend_.GatherKvLayerOnDevice(layers_[static_cast<size_t>(layer)], ids,
                                                          o->num_blocks,
                                                          Staging(o->offset + static_cast<size_t>(layer) * layer_bytes)));
  }
  // Layers leave in chunks of LayersPerSend: the chunk ending at this layer goes now.
  const int32_t per_send = LayersPerSend(geometry_.num_layers, options_.sends_per_transfer);
  const bool last = layer + 1 == geometry_.num_layers;
  if (!last && (layer + 1) % per_send != 0) return OkStatus();
  const int32_t first_layer = layer / per_send * per_send;
  const size_t chunk_layers = static_cast<size_t>(layer - first_layer + 1);
  TANDEM_CUDA_RETURN_IF_ERROR(cudaEventRecord(layer_event_, backend_.stream()));
  for (const auto& peer : step_peers_) {
    Status s;
    {
      std::lock_guard<std::mutex> lock(peer->nccl_mu);
      if (peer->comms.data == nullptr || peer->broken.load()) continue;
      s = CudaErrorToStatus(cudaStreamWaitEvent(peer->stream, layer_event_, 0), "cudaStreamWaitEvent");
      if (s.ok()) s = NcclStatus(ncclGroupStart(), "ncclGroupStart");
      for (const auto& o : begun_) {
        if (!s.ok()) break;
        if (o->peer != peer) continue;
        const size_t layer_bytes = TransferBytes(o->num_blocks) / static_cast<size_t>(geometry_.num_layers);
        s = NcclStatus(ncclSend(Staging(o->offset + static_cast<size_t>(first_layer) * layer_bytes),
                                chunk_layers * layer_bytes, ncclUint8, 1, peer->comms.data, peer->stream),
                       "ncclSend");
      }
      if (s.ok()) s = NcclStatus(ncclGroupEnd(), "ncclGroupEnd");  // blocking communicator: launched on return
      for (const auto& o : begun_) {
        if (s.ok() && last && o->peer == peer) {
          s = CudaErrorToStatus(cudaEventRecord(o->sent, peer->stream), "cudaEventRecord");
        }
      }
    }
    if (!s.ok()) FailPeer(peer, s);  // its transfers fail; the step and other peers go on
  }
  return OkStatus();
}

void NcclKvTransport::Commit(const std::string& request_id, std::optional<TokenId> first_token) {
  auto it = std::find_if(begun_.begin(), begun_.end(),
                         [&](const auto& o) { return o->request_id == request_id; });
  TANDEM_CHECK(it != begun_.end()) << "Commit of request '" << request_id << "' that was not begun";
  std::shared_ptr<Outgoing> out = std::move(*it);
  begun_.erase(it);
  if (begun_.empty()) step_peers_.clear();
  {
    std::lock_guard<std::mutex> lock(mu_);
    out->committed = true;
    out->committed_at = Clock::now();
    if (!first_token) out->abandoned = true;  // dropped at the receiver; nobody waits for it
  }
  net::PayloadWriter w;
  w.PutString(request_id);
  w.Put<uint8_t>(first_token ? 1 : 0);
  w.Put<int32_t>(first_token.value_or(0));
  if (Status s = out->peer->WriteControl(Frame::kCommit, w.bytes(), options_.transport.io_timeout); !s.ok()) {
    FailPeer(out->peer, s);
  }
}

// --- sender: verdicts and failures -------------------------------------------------------------------

void NcclKvTransport::ReadAcks(std::shared_ptr<Peer> peer) {
  const Millis timeout = options_.transport.io_timeout;
  const int fd = peer->socket.fd();
  while (!stopping_.load() && !peer->broken.load()) {
    if (Readable(fd, Millis(50))) {
      auto frame = ReadFrame(fd, timeout);
      if (!frame.ok()) {
        FailPeer(peer, frame.status());
        return;
      }
      net::PayloadReader r(frame->second);
      std::string id;
      if (frame->first != Frame::kAck || !r.GetString(&id)) {
        FailPeer(peer, DataLossError("malformed message from the KV receiver"));
        return;
      }
      std::vector<std::byte> rest(frame->second.begin() + static_cast<long>(sizeof(uint32_t) + id.size()),
                                  frame->second.end());
      Finish(*peer, id, net::DecodeStatus(rest, "decode worker: "));
      continue;
    }
    // Nothing to read: a committed transfer the receiver has not answered in time means it hangs.
    std::string late;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (const auto& [id, o] : outgoing_) {
        if (o->peer == peer && o->committed && !o->result && Clock::now() - o->committed_at > timeout) late = id;
      }
    }
    if (!late.empty()) {
      FailPeer(peer, DeadlineExceededError("decode worker did not confirm the KV of request '" + late +
                                            "' within " + MillisText(timeout)));
      return;
    }
    ncclResult_t state = ncclSuccess;
    {
      std::lock_guard<std::mutex> lock(peer->nccl_mu);
      if (peer->comms.data != nullptr) (void)ncclCommGetAsyncError(peer->comms.data, &state);
    }
    if (state != ncclSuccess && state != ncclInProgress) {
      FailPeer(peer, NcclStatus(state, "asynchronous error"));
      return;
    }
  }
}

void NcclKvTransport::Finish(Peer& peer, const std::string& request_id, Status result) {
  std::shared_ptr<Outgoing> out;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = outgoing_.find(request_id);
    if (it == outgoing_.end() || it->second->peer.get() != &peer || it->second->result) return;
    out = it->second;
  }
  // The receiver answered, so it received every byte and the sends are done.
  (void)cudaEventSynchronize(out->sent);
  std::lock_guard<std::mutex> lock(mu_);
  ReturnEvent(out->sent);
  if (!out->staging_freed) arena_.Free(out->offset);
  out->staging_freed = true;
  out->result = std::move(result);
  if (out->abandoned) outgoing_.erase(request_id);
  transfer_done_.notify_all();
}

void NcclKvTransport::FailPeer(const std::shared_ptr<Peer>& failed, const Status& error) {
  Peer& peer = *failed;
  if (peer.broken.exchange(true)) return;
  spdlog::warn("NCCL KV transport: link to {} failed: {}; aborting its communicator", peer.endpoint,
               error.ToString());
  {
    std::lock_guard<std::mutex> lock(peer.nccl_mu);
    AbortPairComms(&peer.comms);  // ends the sends stuck on them
  }
  (void)cudaStreamSynchronize(peer.stream);
  ::shutdown(peer.socket.fd(), SHUT_RDWR);  // the receiver sees the end at once
  std::lock_guard<std::mutex> lock(mu_);
  for (auto it = outgoing_.begin(); it != outgoing_.end();) {
    Outgoing& o = *it->second;
    if (o.peer.get() != &peer || o.result) {
      ++it;
      continue;
    }
    // A gather still queued on the backend's stream may write the staging; anything that reuses
    // it is ordered after that gather on the same stream.
    if (!o.staging_freed) arena_.Free(o.offset);
    o.staging_freed = true;
    ReturnEvent(o.sent);  // the pair's stream was synchronized above
    o.result = UnavailableError("KV transfer to decode worker " + peer.endpoint + " failed: " + error.message());
    it = o.abandoned ? outgoing_.erase(it) : std::next(it);
  }
  auto p = peers_.find(peer.endpoint);
  if (p != peers_.end() && p->second == failed) peers_.erase(p);
  transfer_done_.notify_all();
}

Status NcclKvTransport::Send(const std::string& endpoint, const KvHandoff& handoff) {
  if (!handoff.streamed) {
    return FailedPreconditionError("the NCCL KV transport sends KV while the prefill runs; request '" +
                                   handoff.request_id + "' was not streamed (no route: Prepare first)");
  }
  std::unique_lock<std::mutex> lock(mu_);
  auto it = outgoing_.find(handoff.request_id);
  if (it == outgoing_.end()) {
    return InternalError("no KV transfer of request '" + handoff.request_id + "' in flight");
  }
  std::shared_ptr<Outgoing> out = it->second;
  // The reader thread bounds every wait (io_timeout after the commit); this is a backstop.
  const auto deadline = Clock::now() + 4 * options_.transport.io_timeout;
  if (!transfer_done_.wait_until(lock, deadline, [&] { return out->result.has_value(); })) {
    return DeadlineExceededError("KV transfer of request '" + handoff.request_id + "' got no verdict");
  }
  Status result = *out->result;
  outgoing_.erase(handoff.request_id);
  routes_.erase(handoff.request_id);
  return result;
}


// --- shutdown -------------------------------------------------------------------------------------

void NcclKvTransport::Shutdown() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (shut_down_) return;
    shut_down_ = true;
  }
  stopping_.store(true);
  server_.Stop();  // the receiver's connections end, their pairs aborted
  std::vector<std::shared_ptr<Peer>> peers;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [endpoint, peer] : peers_) peers.push_back(peer);
  }
  for (auto& peer : peers) FailPeer(peer, UnavailableError("the prefill worker is shutting down"));
  std::vector<std::shared_ptr<Peer>> all;
  {
    std::lock_guard<std::mutex> lock(mu_);
    all.swap(all_peers_);  // no Connect adds one after shut_down_
  }
  for (auto& peer : all) {
    if (peer->reader.joinable()) peer->reader.join();
    std::lock_guard<std::mutex> lock(peer->nccl_mu);
    if (peer->stream != nullptr) (void)cudaStreamDestroy(peer->stream);
    peer->stream = nullptr;
  }
}


}  // namespace tandem
