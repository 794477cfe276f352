#include "transfer/tcp_kv_transport.h"


#include <spdlog/spdlog.h>

namespace tandem {
namespace {

constexpr uint32_t kMagic = 0x31564b54;  // "TKV1"
constexpr uint32_t kVersion = 1;
constexpr size_t kMaxControlPayload = 64 << 10;

enum class FrameType : uint32_t { kHello = 1, kVerdict = 2, kLayer = 3, kDone = 4 };

using net::Millis;

Status WriteFrame(int fd, FrameType type, const void* payload, size_t size, Millis timeout) {
  return net::WriteFrame(fd, kMagic, static_cast<uint32_t>(type), payload, size, timeout);
}

StatusOr<net::FrameHeader> ReadFrameHeader(int fd, FrameType expected, Millis timeout) {
  return net::ReadFrameHeader(fd, kMagic, static_cast<uint32_t>(expected), timeout);
}

StatusOr<std::vector<std::byte>> ReadControl(int fd, FrameType type, Millis timeout) {
  TANDEM_ASSIGN_OR_RETURN(net::FrameHeader h, ReadFrameHeader(fd, type, timeout));
  return net::ReadFramePayload(fd, h, kMaxControlPayload, timeout);
}

Status WriteVerdict(int fd, const Status& verdict, Millis timeout) {
  const std::vector<std::byte> v = net::EncodeStatus(verdict);
  return WriteFrame(fd, FrameType::kVerdict, v.data(), v.size(), timeout);
}

// The peer's verdict; transport errors come back as they are.
Status ReadVerdict(int fd, Millis timeout) {
  auto payload = ReadControl(fd, FrameType::kVerdict, timeout);
  if (!payload.ok()) return payload.status();
  return net::DecodeStatus(*payload, "receiver: ");
}

std::vector<std::byte> EncodeHello(const KvHandoff& h) {
  net::PayloadWriter w;
  w.Put<uint32_t>(kVersion);
  w.PutString(h.request_id);
  w.Put<int32_t>(h.geometry.num_layers);
  w.Put<int32_t>(h.geometry.block_size);
  w.Put<int32_t>(h.geometry.num_kv_heads);
  w.Put<int32_t>(h.geometry.head_dim);
  w.Put<uint32_t>(static_cast<uint32_t>(h.geometry.dtype));
  w.Put<int32_t>(h.num_tokens);
  w.Put<int32_t>(h.num_blocks);
  w.Put<int32_t>(h.first_token);
  w.Put<uint64_t>(h.TotalBytes());
  return w.bytes();
}

StatusOr<KvHandoff> DecodeHello(const std::vector<std::byte>& bytes) {
  net::PayloadReader r(bytes);
  KvHandoff h;
  uint32_t version = 0, dtype = 0;
  uint64_t total = 0;
  const bool ok = r.Get(&version) && r.GetString(&h.request_id) && r.Get(&h.geometry.num_layers) &&
                  r.Get(&h.geometry.block_size) && r.Get(&h.geometry.num_kv_heads) &&
                  r.Get(&h.geometry.head_dim) && r.Get(&dtype) && r.Get(&h.num_tokens) &&
                  r.Get(&h.num_blocks) && r.Get(&h.first_token) && r.Get(&total) && r.AtEnd();
  if (!ok) return DataLossError("KV transfer: malformed handshake");
  if (version != kVersion) {
    return FailedPreconditionError("KV transfer: protocol version " + std::to_string(version) +
                                   ", this worker speaks " + std::to_string(kVersion));
  }
  h.geometry.dtype = static_cast<DType>(dtype);
  const KvGeometry& g = h.geometry;
  if (g.num_layers <= 0 || g.block_size <= 0 || g.num_kv_heads <= 0 || g.head_dim <= 0 ||
      h.num_tokens <= 0 || h.num_blocks != (h.num_tokens + g.block_size - 1) / g.block_size ||
      total != h.TotalBytes()) {
    return DataLossError("KV transfer: inconsistent handshake for request '" + h.request_id + "'");
  }
  return h;
}

}  // namespace

TcpKvTransport::TcpKvTransport(KvTransportOptions options) : options_(options) {}

TcpKvTransport::~TcpKvTransport() { Shutdown(); }

Status TcpKvTransport::Send(const std::string& endpoint, const KvHandoff& handoff) {
  if (handoff.streamed) {
    return FailedPreconditionError("the TCP KV transport does not stream; request '" +
                                   handoff.request_id + "' has no KV to send");
  }
  if (handoff.data.size() != handoff.TotalBytes()) {
    return InvalidArgumentError("KV handoff of '" + handoff.request_id + "' holds " +
                                std::to_string(handoff.data.size()) + " bytes, its geometry says " +
                                std::to_string(handoff.TotalBytes()));
  }
  const Millis timeout = options_.io_timeout;
  TANDEM_ASSIGN_OR_RETURN(net::Socket socket, net::Connect(endpoint, options_.connect_timeout));
  const int fd = socket.fd();
  const std::vector<std::byte> hello = EncodeHello(handoff);
  TANDEM_RETURN_IF_ERROR(WriteFrame(fd, FrameType::kHello, hello.data(), hello.size(), timeout));
  TANDEM_RETURN_IF_ERROR(ReadVerdict(fd, timeout));  // accepted?
  const size_t layer_bytes = handoff.LayerBytes();
  for (int32_t l = 0; l < handoff.geometry.num_layers; ++l) {
    net::FrameHeader h;
    h.magic = kMagic;
    h.type = static_cast<uint32_t>(FrameType::kLayer);
    h.length = sizeof(uint32_t) + layer_bytes;
    const uint32_t index = static_cast<uint32_t>(l);
    TANDEM_RETURN_IF_ERROR(net::WriteAll(fd, &h, sizeof(h), timeout));
    TANDEM_RETURN_IF_ERROR(net::WriteAll(fd, &index, sizeof(index), timeout));
    TANDEM_RETURN_IF_ERROR(
        net::WriteAll(fd, handoff.data.data() + static_cast<size_t>(l) * layer_bytes, layer_bytes, timeout));
  }
  TANDEM_RETURN_IF_ERROR(WriteFrame(fd, FrameType::kDone, nullptr, 0, timeout));
  return ReadVerdict(fd, timeout);  // written?
}

StatusOr<std::string> TcpKvTransport::Listen(const std::string& listen_address,
                                             KvReceiveHandler handler) {
  if (server_.started()) return FailedPreconditionError("KV transport: already listening");
  if (!handler.accept || !handler.complete || !handler.fail) {
    return InvalidArgumentError("KV transport: the receive handler needs accept, complete and fail");
  }
  handler_ = std::move(handler);
  return server_.Start(listen_address, [this](int fd) { Serve(fd); });
}

void TcpKvTransport::Serve(int fd) {  // the server shuts the socket down when this returns
  const Millis timeout = options_.io_timeout;
  auto hello = ReadControl(fd, FrameType::kHello, timeout);
  StatusOr<KvHandoff> header = hello.ok() ? DecodeHello(*hello) : StatusOr<KvHandoff>(hello.status());
  if (!header.ok()) {
    spdlog::warn("KV transfer: bad handshake: {}", header.status().ToString());
    (void)WriteVerdict(fd, header.status(), timeout);
    return;
  }
  KvHandoff handoff = std::move(header).value();
  Status verdict = handoff.TotalBytes() > options_.max_transfer_bytes
                       ? ResourceExhaustedError("KV transfer of " + std::to_string(handoff.TotalBytes()) +
                                                " bytes exceeds this worker's limit")
                       : handler_.accept(handoff);
  Status sent = WriteVerdict(fd, verdict, timeout);
  if (!verdict.ok()) return;
  // Accepted: from here on exactly one of complete/fail.
  auto receive = [&]() -> Status {
    TANDEM_RETURN_IF_ERROR(sent);
    handoff.data.resize(handoff.TotalBytes());
    const size_t layer_bytes = handoff.LayerBytes();
    for (int32_t l = 0; l < handoff.geometry.num_layers; ++l) {
      TANDEM_ASSIGN_OR_RETURN(net::FrameHeader h, ReadFrameHeader(fd, FrameType::kLayer, timeout));
      uint32_t index = 0;
      if (h.length != sizeof(index) + layer_bytes) {
        return DataLossError("KV transfer: layer frame of " + std::to_string(h.length) +
                             " bytes, expected " + std::to_string(sizeof(index) + layer_bytes));
      }
      TANDEM_RETURN_IF_ERROR(net::ReadAll(fd, &index, sizeof(index), timeout));
      if (index != static_cast<uint32_t>(l)) {
        return DataLossError("KV transfer: layer " + std::to_string(index) + " out of order");
      }
      TANDEM_RETURN_IF_ERROR(net::ReadAll(fd, handoff.data.data() + static_cast<size_t>(l) * layer_bytes,
                                     layer_bytes, timeout));
    }
    TANDEM_ASSIGN_OR_RETURN(net::FrameHeader done, ReadFrameHeader(fd, FrameType::kDone, timeout));
    if (done.length != 0) return DataLossError("KV transfer: done frame with a payload");
    return OkStatus();
  };
  Status received = server_.stopping() ? UnavailableError("KV transport shutting down") : receive();
  if (!received.ok()) {
    spdlog::warn("KV transfer of '{}' failed: {}", handoff.request_id, received.ToString());
    handler_.fail(handoff.request_id, received);
    return;
  }
  const std::string id = handoff.request_id;
  Status written = handler_.complete(std::move(handoff));
  (void)WriteVerdict(fd, written, timeout);
}

void TcpKvTransport::Shutdown() { server_.Stop(); }

}  // namespace tandem
