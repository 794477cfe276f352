#include "transfer/nccl/nccl_kv_transport.h"

#include <poll.h>
#include <sys/socket.h>

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <deque>

#include "backend/cuda/cuda_check.h"
#include "tandem/request.h"  // Clock

namespace tandem {
namespace {

constexpr uint32_t kMagic = 0x31564b4e;  // "NKV1"
constexpr uint32_t kVersion = 1;
constexpr size_t kMaxControlPayload = 1 << 20;
constexpr size_t kWarmupBytes = 256;
// A transfer leaves in this many sends (consecutive layers each; a transfer's staging is layer-major
// so they are contiguous): fewer, larger sends amortize NCCL's per-operation cost, more of them
// start the transfer earlier during the prefill. Both sides derive the split from the geometry.
constexpr int32_t kSendsPerTransfer = 4;

int32_t LayersPerSend(int32_t num_layers) {
  return std::max<int32_t>(1, (num_layers + kSendsPerTransfer - 1) / kSendsPerTransfer);
}

enum class Frame : uint32_t { kHello = 1, kVerdict = 2, kBatch = 3, kCommit = 4, kAck = 5 };

using net::Millis;

std::string MillisText(Millis m) { return std::to_string(m.count()) + " ms"; }

Status NcclStatus(ncclResult_t r, const std::string& what) {
  if (r == ncclSuccess || r == ncclInProgress) return OkStatus();
  return UnavailableError("NCCL " + what + ": " + ncclGetErrorString(r));
}

// Waits between polls: spin (yield) for the first 200 us — an enqueue on a non-blocking
// communicator usually completes within microseconds, and the engine thread enqueues a layer per
// call — then nap 50 us.
void Backoff(Clock::time_point start) {
  if (Clock::now() - start < std::chrono::microseconds(200)) {
    std::this_thread::yield();
  } else {
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
}

// A non-blocking communicator's last call has finished (ncclInProgress turned into ncclSuccess),
// or its error; DeadlineExceeded after `timeout`.
Status WaitComm(ncclComm_t comm, Millis timeout, const std::string& what) {
  const auto start = Clock::now();
  const auto deadline = start + timeout;
  for (;;) {
    ncclResult_t state = ncclSuccess;
    TANDEM_RETURN_IF_ERROR(NcclStatus(ncclCommGetAsyncError(comm, &state), what));
    if (state == ncclSuccess) return OkStatus();
    if (state != ncclInProgress) return NcclStatus(state, what);
    if (Clock::now() > deadline) {
      return DeadlineExceededError("NCCL " + what + " did not finish within " + MillisText(timeout));
    }
    Backoff(start);
  }
}

// Polls `event` until the work before it ran; DeadlineExceeded after `timeout` (a peer that never
// posts its half of a send/recv pair).
Status WaitEvent(cudaEvent_t event, Millis timeout, const std::string& what) {
  const auto start = Clock::now();
  const auto deadline = start + timeout;
  for (;;) {
    const cudaError_t e = cudaEventQuery(event);
    if (e == cudaSuccess) return OkStatus();
    if (e != cudaErrorNotReady) return CudaErrorToStatus(e, what);
    if (Clock::now() > deadline) {
      return DeadlineExceededError(what + " did not finish within " + MillisText(timeout));
    }
    Backoff(start);
  }
}

Status WriteFrame(int fd, Frame type, const std::vector<std::byte>& payload, Millis timeout) {
  return net::WriteFrame(fd, kMagic, static_cast<uint32_t>(type), payload.data(), payload.size(), timeout);
}

StatusOr<std::pair<Frame, std::vector<std::byte>>> ReadFrame(int fd, Millis timeout) {
  TANDEM_ASSIGN_OR_RETURN(net::FrameHeader h, net::ReadFrameHeader(fd, kMagic, 0, timeout));
  TANDEM_ASSIGN_OR_RETURN(std::vector<std::byte> payload,
                          net::ReadFramePayload(fd, h, kMaxControlPayload, timeout));
  return std::make_pair(static_cast<Frame>(h.type), std::move(payload));
}

void PutGeometry(net::PayloadWriter& w, const KvGeometry& g) {
  w.Put<int32_t>(g.num_layers);
  w.Put<int32_t>(g.block_size);
  w.Put<int32_t>(g.num_kv_heads);
  w.Put<int32_t>(g.head_dim);
  w.Put<uint32_t>(static_cast<uint32_t>(g.dtype));
}

bool GetGeometry(net::PayloadReader& r, KvGeometry* g) {
  uint32_t dtype = 0;
  if (!(r.Get(&g->num_layers) && r.Get(&g->block_size) && r.Get(&g->num_kv_heads) && r.Get(&g->head_dim) &&
        r.Get(&dtype))) {
    return false;
  }
  g->dtype = static_cast<DType>(dtype);
  return true;
}

// Readable within `timeout`? (false on timeout; errors surface on the read that follows)
bool Readable(int fd, Millis timeout) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, static_cast<int>(timeout.count())) != 0;
}

}  // namespace

// --- state ----------------------------------------------------------------------------------------

// Sender side: the pair (this prefill worker, one decode worker).
struct NcclKvTransport::Peer {
  std::string endpoint;
  net::Socket socket;
  std::mutex write_mu;           // control writes (engine thread, reader thread)
  std::mutex nccl_mu;            // NCCL calls on comm
  ncclComm_t comm = nullptr;     // GUARDED_BY(nccl_mu); null once aborted
  cudaStream_t stream = nullptr; // the pair's send stream
  std::atomic<bool> broken{false};
  std::thread reader;

  Status WriteControl(Frame type, const std::vector<std::byte>& payload, Millis timeout) {
    std::lock_guard<std::mutex> lock(write_mu);
    return WriteFrame(socket.fd(), type, payload, timeout);
  }
};

// Sender side: one request's transfer, from Begin until its verdict.
struct NcclKvTransport::Outgoing {
  std::string request_id;
  std::shared_ptr<Peer> peer;
  size_t offset = 0;                 // staging: the KV, then the block ids
  int32_t num_blocks = 0;
  int32_t num_tokens = 0;
  cudaEvent_t sent = nullptr;        // on the peer's stream, after the last layer's send
  bool committed = false;            // engine thread, then read under mu_
  Clock::time_point committed_at;
  bool staging_freed = false;        // GUARDED_BY(mu_)
  std::optional<Status> result;      // GUARDED_BY(mu_)
  bool abandoned = false;            // GUARDED_BY(mu_): nobody waits in Send (dropped or forgotten)
};

// Receiver side: one announced transfer.
struct NcclKvTransport::Incoming {
  KvHandoff header;
  Status accepted;                   // the handler's verdict on the header
  size_t offset = 0;
  bool posted = false;
  bool received = false;
  bool committed = false;
  bool keep = false;
  TokenId first_token = 0;
  std::shared_ptr<CUevent_st> done;  // recorded after the batch's receives; shared by its transfers
  Clock::time_point posted_at;
};

struct NcclKvTransport::Connection {
  net::Socket socket;
  std::thread thread;
  std::atomic<bool> done{false};
};

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
}

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
  TANDEM_RETURN_IF_ERROR(WriteFrame(peer->socket.fd(), Frame::kHello, hello.bytes(), timeout));

  TANDEM_CUDA_RETURN_IF_ERROR(cudaSetDevice(backend_.device()));
  TANDEM_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&peer->stream, cudaStreamNonBlocking));
  std::optional<size_t> warmup;
  auto fail = [&](Status s) {
    if (peer->comm != nullptr) (void)ncclCommAbort(peer->comm);
    peer->comm = nullptr;
    (void)cudaStreamSynchronize(peer->stream);
    (void)cudaStreamDestroy(peer->stream);
    peer->stream = nullptr;
    if (warmup) arena_.Free(*warmup);
    return Status(s.code(), "KV link to " + endpoint + ": " + s.message());
  };
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  Status s = NcclStatus(ncclCommInitRankConfig(&peer->comm, 2, id, 0, &config), "ncclCommInitRankConfig");
  if (s.ok()) s = WaitComm(peer->comm, options_.transport.connect_timeout + timeout, "communicator setup");
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
  s = NcclStatus(ncclSend(Staging(*warmup), kWarmupBytes, ncclUint8, 1, peer->comm, peer->stream), "ncclSend");
  if (s.ok()) s = WaitComm(peer->comm, timeout, "warm-up send");
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
  TANDEM_CHECK(!batch_announced_) << "KvStreamer::Begin after LayerWritten in one step";
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
  if (s.ok()) s = CudaErrorToStatus(cudaEventCreateWithFlags(&out->sent, cudaEventDisableTiming), "cudaEventCreate");
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
  std::vector<std::shared_ptr<Peer>> peers;
  for (const auto& o : begun_) {
    if (std::find(peers.begin(), peers.end(), o->peer) == peers.end()) peers.push_back(o->peer);
  }
  if (!batch_announced_) {
    batch_announced_ = true;
    for (const auto& peer : peers) {
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
  const int32_t per_send = LayersPerSend(geometry_.num_layers);
  const bool last = layer + 1 == geometry_.num_layers;
  if (!last && (layer + 1) % per_send != 0) return OkStatus();
  const int32_t first_layer = layer / per_send * per_send;
  const size_t chunk_layers = static_cast<size_t>(layer - first_layer + 1);
  TANDEM_CUDA_RETURN_IF_ERROR(cudaEventRecord(layer_event_, backend_.stream()));
  for (const auto& peer : peers) {
    Status s;
    {
      std::lock_guard<std::mutex> lock(peer->nccl_mu);
      if (peer->comm == nullptr || peer->broken.load()) continue;
      s = CudaErrorToStatus(cudaStreamWaitEvent(peer->stream, layer_event_, 0), "cudaStreamWaitEvent");
      if (s.ok()) s = NcclStatus(ncclGroupStart(), "ncclGroupStart");
      for (const auto& o : begun_) {
        if (!s.ok()) break;
        if (o->peer != peer) continue;
        const size_t layer_bytes = TransferBytes(o->num_blocks) / static_cast<size_t>(geometry_.num_layers);
        s = NcclStatus(ncclSend(Staging(o->offset + static_cast<size_t>(first_layer) * layer_bytes),
                                chunk_layers * layer_bytes, ncclUint8, 1, peer->comm, peer->stream),
                       "ncclSend");
      }
      if (s.ok()) s = NcclStatus(ncclGroupEnd(), "ncclGroupEnd");
      if (s.ok()) s = WaitComm(peer->comm, timeout, "enqueueing KV sends");
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
  if (begun_.empty()) batch_announced_ = false;
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
      if (peer->comm != nullptr) (void)ncclCommGetAsyncError(peer->comm, &state);
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
  (void)cudaEventDestroy(out->sent);
  std::lock_guard<std::mutex> lock(mu_);
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
    if (peer.comm != nullptr) (void)ncclCommAbort(peer.comm);  // ends the sends stuck on it
    peer.comm = nullptr;
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
    (void)cudaEventDestroy(o.sent);
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

// --- receiver -------------------------------------------------------------------------------------

StatusOr<std::string> NcclKvTransport::Listen(const std::string& listen_address, KvReceiveHandler handler) {
  if (listen_socket_.valid()) return FailedPreconditionError("NCCL KV transport: already listening");
  if (!handler.accept || !handler.complete || !handler.fail) {
    return InvalidArgumentError("NCCL KV transport: the receive handler needs accept, complete and fail");
  }
  TANDEM_ASSIGN_OR_RETURN(auto bound, net::Listen(listen_address));
  handler_ = std::move(handler);
  listen_socket_ = std::move(bound.first);
  accept_thread_ = std::thread([this] { AcceptLoop(); });
  return bound.second;
}

void NcclKvTransport::AcceptLoop() {
  while (!stopping_.load()) {
    net::Socket accepted = net::AcceptFor(listen_socket_.fd(), Millis(100));
    if (!accepted.valid()) continue;
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = connections_.begin(); it != connections_.end();) {
      if ((*it)->done.load()) {
        (*it)->thread.join();
        it = connections_.erase(it);
      } else {
        ++it;
      }
    }
    if (shut_down_) break;
    auto connection = std::make_unique<Connection>();
    connection->socket = std::move(accepted);
    Connection* raw = connection.get();
    connections_.push_back(std::move(connection));
    raw->thread = std::thread([this, raw] { Serve(raw); });
  }
}

void NcclKvTransport::Serve(Connection* connection) {
  Status ended = ServeSender(*connection);
  if (!ended.ok() && !stopping_.load()) spdlog::warn("NCCL KV transport: sender link ended: {}", ended.ToString());
  ::shutdown(connection->socket.fd(), SHUT_RDWR);
  connection->done.store(true);
}

Status NcclKvTransport::ServeSender(Connection& connection) {
  const int fd = connection.socket.fd();
  const Millis timeout = options_.transport.io_timeout;
  TANDEM_ASSIGN_OR_RETURN(auto hello, ReadFrame(fd, timeout));
  net::PayloadReader r(hello.second);
  uint32_t version = 0;
  ncclUniqueId id;
  KvGeometry geometry;
  if (hello.first != Frame::kHello || !r.Get(&version) || !r.GetBytes(&id, sizeof(id)) ||
      !GetGeometry(r, &geometry) || !r.AtEnd()) {
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
  ncclComm_t comm = nullptr;
  std::deque<std::vector<std::shared_ptr<Incoming>>> batches;       // announced, in order
  std::unordered_map<std::string, std::shared_ptr<Incoming>> by_id;  // announced, not answered
  size_t warmup = 0;  // staging offset of the warm-up receive while held
  bool holds_warmup = false;
  cudaEvent_t warmup_event = nullptr;

  auto serve = [&]() -> Status {
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    TANDEM_RETURN_IF_ERROR(NcclStatus(ncclCommInitRankConfig(&comm, 2, id, 1, &config), "ncclCommInitRankConfig"));
    TANDEM_RETURN_IF_ERROR(WaitComm(comm, options_.transport.connect_timeout + timeout, "communicator setup"));
    TANDEM_RETURN_IF_ERROR(WriteFrame(fd, Frame::kVerdict, net::EncodeStatus(OkStatus()), timeout));
    std::optional<size_t> offset = arena_.Allocate(kWarmupBytes);
    if (!offset) return ResourceExhaustedError("no staging for the warm-up receive");
    warmup = *offset;
    holds_warmup = true;
    TANDEM_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&warmup_event, cudaEventDisableTiming));
    TANDEM_RETURN_IF_ERROR(NcclStatus(ncclRecv(Staging(warmup), kWarmupBytes, ncclUint8, 0, comm, stream), "ncclRecv"));
    TANDEM_RETURN_IF_ERROR(WaitComm(comm, timeout, "warm-up receive"));
    TANDEM_CUDA_RETURN_IF_ERROR(cudaEventRecord(warmup_event, stream));
    TANDEM_RETURN_IF_ERROR(WaitEvent(warmup_event, options_.transport.connect_timeout + timeout, "warm-up receive"));
    arena_.Free(warmup);
    holds_warmup = false;

    for (;;) {
      if (stopping_.load()) return UnavailableError("the decode worker is shutting down");
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
        const int32_t per_send = LayersPerSend(geometry_.num_layers);
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
        TANDEM_RETURN_IF_ERROR(NcclStatus(ncclGroupEnd(), "ncclGroupEnd"));
        TANDEM_RETURN_IF_ERROR(WaitComm(comm, timeout, "posting KV receives"));
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
      // Control frames: block up to 50 ms when idle; while receives are in flight, look without
      // waiting and nap briefly so the event polls above stay fine-grained.
      if (!Readable(fd, by_id.empty() ? Millis(50) : Millis(0))) {
        if (!by_id.empty()) std::this_thread::sleep_for(std::chrono::microseconds(20));
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
  if (comm != nullptr) (void)ncclCommAbort(comm);
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

// --- shutdown -------------------------------------------------------------------------------------

void NcclKvTransport::Shutdown() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (shut_down_) return;
    shut_down_ = true;
  }
  stopping_.store(true);
  if (accept_thread_.joinable()) accept_thread_.join();
  std::list<std::unique_ptr<Connection>> connections;
  std::vector<std::shared_ptr<Peer>> peers;
  {
    std::lock_guard<std::mutex> lock(mu_);
    connections.swap(connections_);
    for (auto& c : connections) ::shutdown(c->socket.fd(), SHUT_RDWR);
    for (auto& [endpoint, peer] : peers_) peers.push_back(peer);
  }
  for (auto& c : connections) c->thread.join();
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
