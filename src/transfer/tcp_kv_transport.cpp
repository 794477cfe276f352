#include "transfer/tcp_kv_transport.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <cerrno>
#include <cstring>

namespace tandem {
namespace {

constexpr uint32_t kMagic = 0x31564b54;  // "TKV1"
constexpr uint32_t kVersion = 1;
constexpr size_t kMaxControlPayload = 64 << 10;

enum class FrameType : uint32_t { kHello = 1, kVerdict = 2, kLayer = 3, kDone = 4 };

struct FrameHeader {
  uint32_t magic = kMagic;
  uint32_t type = 0;
  uint64_t length = 0;
};
static_assert(sizeof(FrameHeader) == 16);

using Millis = std::chrono::milliseconds;

std::string Errno(const char* what) { return std::string(what) + ": " + std::strerror(errno); }

// Closes a socket when it goes out of scope.
class Socket {
 public:
  explicit Socket(int fd = -1) : fd_(fd) {}
  ~Socket() {
    if (fd_ >= 0) ::close(fd_);
  }
  Socket(const Socket&) = delete;
  Socket& operator=(const Socket&) = delete;
  int fd() const { return fd_; }

 private:
  int fd_;
};

// Waits until `fd` is ready for `events`; DeadlineExceeded after `timeout`.
Status WaitReady(int fd, short events, Millis timeout, const char* what) {
  pollfd p{fd, events, 0};
  for (;;) {
    const int r = ::poll(&p, 1, static_cast<int>(timeout.count()));
    if (r > 0) return OkStatus();
    if (r == 0) {
      return DeadlineExceededError(std::string("KV transfer: the peer sent nothing for ") +
                                   std::to_string(timeout.count()) + " ms while " + what);
    }
    if (errno != EINTR) return UnavailableError(Errno("KV transfer: poll"));
  }
}

Status WriteAll(int fd, const void* data, size_t size, Millis timeout) {
  const auto* p = static_cast<const std::byte*>(data);
  while (size > 0) {
    TANDEM_RETURN_IF_ERROR(WaitReady(fd, POLLOUT, timeout, "sending"));
    const ssize_t n = ::send(fd, p, size, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) continue;
      return UnavailableError(Errno("KV transfer: the peer went away (send)"));
    }
    p += n;
    size -= static_cast<size_t>(n);
  }
  return OkStatus();
}

// Every read waits at most `timeout` for progress.
Status ReadAll(int fd, void* data, size_t size, Millis timeout) {
  auto* p = static_cast<std::byte*>(data);
  while (size > 0) {
    TANDEM_RETURN_IF_ERROR(WaitReady(fd, POLLIN, timeout, "receiving"));
    const ssize_t n = ::recv(fd, p, size, 0);
    if (n == 0) return UnavailableError("KV transfer: the peer closed the connection");
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) continue;
      return UnavailableError(Errno("KV transfer: the peer went away (recv)"));
    }
    p += n;
    size -= static_cast<size_t>(n);
  }
  return OkStatus();
}

Status WriteFrame(int fd, FrameType type, const void* payload, size_t size, Millis timeout) {
  FrameHeader h;
  h.type = static_cast<uint32_t>(type);
  h.length = size;
  TANDEM_RETURN_IF_ERROR(WriteAll(fd, &h, sizeof(h), timeout));
  return size == 0 ? OkStatus() : WriteAll(fd, payload, size, timeout);
}

StatusOr<FrameHeader> ReadFrameHeader(int fd, FrameType expected, Millis timeout) {
  FrameHeader h;
  TANDEM_RETURN_IF_ERROR(ReadAll(fd, &h, sizeof(h), timeout));
  if (h.magic != kMagic) return DataLossError("KV transfer: bad frame magic (not a Tandem peer?)");
  if (h.type != static_cast<uint32_t>(expected)) {
    return DataLossError("KV transfer: expected frame type " +
                         std::to_string(static_cast<uint32_t>(expected)) + ", got " +
                         std::to_string(h.type));
  }
  return h;
}

// --- control payloads ---------------------------------------------------------------------------

class Writer {
 public:
  template <typename T>
  void Put(T v) {
    const auto* p = reinterpret_cast<const std::byte*>(&v);
    bytes_.insert(bytes_.end(), p, p + sizeof(T));
  }
  void PutString(const std::string& s) {
    Put<uint32_t>(static_cast<uint32_t>(s.size()));
    const auto* p = reinterpret_cast<const std::byte*>(s.data());
    bytes_.insert(bytes_.end(), p, p + s.size());
  }
  const std::vector<std::byte>& bytes() const { return bytes_; }

 private:
  std::vector<std::byte> bytes_;
};

class Reader {
 public:
  explicit Reader(const std::vector<std::byte>& bytes) : bytes_(bytes) {}
  template <typename T>
  bool Get(T* v) {
    if (pos_ + sizeof(T) > bytes_.size()) return false;
    std::memcpy(v, bytes_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return true;
  }
  bool GetString(std::string* s) {
    uint32_t n = 0;
    if (!Get(&n) || pos_ + n > bytes_.size()) return false;
    s->assign(reinterpret_cast<const char*>(bytes_.data() + pos_), n);
    pos_ += n;
    return true;
  }
  bool AtEnd() const { return pos_ == bytes_.size(); }

 private:
  const std::vector<std::byte>& bytes_;
  size_t pos_ = 0;
};

std::vector<std::byte> EncodeHello(const KvHandoff& h) {
  Writer w;
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
  Reader r(bytes);
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

std::vector<std::byte> EncodeVerdict(const Status& s) {
  Writer w;
  w.Put<int32_t>(static_cast<int32_t>(s.code()));
  w.PutString(std::string(s.message()));
  return w.bytes();
}

StatusOr<std::vector<std::byte>> ReadControl(int fd, FrameType type, Millis timeout) {
  TANDEM_ASSIGN_OR_RETURN(FrameHeader h, ReadFrameHeader(fd, type, timeout));
  if (h.length > kMaxControlPayload) return DataLossError("KV transfer: oversized control frame");
  std::vector<std::byte> payload(h.length);
  TANDEM_RETURN_IF_ERROR(ReadAll(fd, payload.data(), payload.size(), timeout));
  return payload;
}

// The peer's verdict; transport errors come back as they are.
Status ReadVerdict(int fd, Millis timeout) {
  auto payload = ReadControl(fd, FrameType::kVerdict, timeout);
  if (!payload.ok()) return payload.status();
  Reader r(*payload);
  int32_t code = 0;
  std::string message;
  if (!r.Get(&code) || !r.GetString(&message) || !r.AtEnd()) {
    return DataLossError("KV transfer: malformed verdict");
  }
  if (code == 0) return OkStatus();
  return Status(static_cast<StatusCode>(code), "receiver: " + message);
}

StatusOr<std::pair<std::string, std::string>> SplitHostPort(const std::string& endpoint) {
  const size_t colon = endpoint.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == endpoint.size()) {
    return InvalidArgumentError("KV endpoint must be host:port, got '" + endpoint + "'");
  }
  std::string host = endpoint.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  return std::make_pair(host, endpoint.substr(colon + 1));
}

StatusOr<addrinfo*> Resolve(const std::string& endpoint, bool passive) {
  TANDEM_ASSIGN_OR_RETURN(auto hp, SplitHostPort(endpoint));
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0);
  addrinfo* result = nullptr;
  const int rc = ::getaddrinfo(hp.first.c_str(), hp.second.c_str(), &hints, &result);
  if (rc != 0 || result == nullptr) {
    return InvalidArgumentError("cannot resolve KV endpoint '" + endpoint + "': " + gai_strerror(rc));
  }
  return result;
}

int NonBlockingSocket(int family) {
  const int fd = ::socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd >= 0) {
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  }
  return fd;
}

StatusOr<int> Connect(const std::string& endpoint, Millis timeout) {
  TANDEM_ASSIGN_OR_RETURN(addrinfo * ai, Resolve(endpoint, false));
  Status last = UnavailableError("KV transfer: no address for " + endpoint);
  for (addrinfo* a = ai; a != nullptr; a = a->ai_next) {
    const int fd = NonBlockingSocket(a->ai_family);
    if (fd < 0) {
      last = UnavailableError(Errno("KV transfer: socket"));
      continue;
    }
    if (::connect(fd, a->ai_addr, a->ai_addrlen) != 0 && errno != EINPROGRESS) {
      last = UnavailableError(Errno(("KV transfer: cannot connect to " + endpoint).c_str()));
      ::close(fd);
      continue;
    }
    Status ready = WaitReady(fd, POLLOUT, timeout, "connecting");
    int err = 0;
    socklen_t len = sizeof(err);
    if (ready.ok()) ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (!ready.ok() || err != 0) {
      last = UnavailableError("KV transfer: cannot connect to " + endpoint + ": " +
                              (ready.ok() ? std::strerror(err) : ready.message()));
      ::close(fd);
      continue;
    }
    ::freeaddrinfo(ai);
    return fd;
  }
  ::freeaddrinfo(ai);
  return last;
}

}  // namespace

TcpKvTransport::Connection::~Connection() {
  if (fd >= 0) ::close(fd);
}

TcpKvTransport::TcpKvTransport(KvTransportOptions options) : options_(options) {}

TcpKvTransport::~TcpKvTransport() { Shutdown(); }

Status TcpKvTransport::Send(const std::string& endpoint, const KvHandoff& handoff) {
  if (handoff.data.size() != handoff.TotalBytes()) {
    return InvalidArgumentError("KV handoff of '" + handoff.request_id + "' holds " +
                                std::to_string(handoff.data.size()) + " bytes, its geometry says " +
                                std::to_string(handoff.TotalBytes()));
  }
  const Millis timeout = options_.io_timeout;
  TANDEM_ASSIGN_OR_RETURN(int raw_fd, Connect(endpoint, options_.connect_timeout));
  Socket socket(raw_fd);
  const int fd = socket.fd();
  const std::vector<std::byte> hello = EncodeHello(handoff);
  TANDEM_RETURN_IF_ERROR(WriteFrame(fd, FrameType::kHello, hello.data(), hello.size(), timeout));
  TANDEM_RETURN_IF_ERROR(ReadVerdict(fd, timeout));  // accepted?
  const size_t layer_bytes = handoff.LayerBytes();
  for (int32_t l = 0; l < handoff.geometry.num_layers; ++l) {
    FrameHeader h;
    h.type = static_cast<uint32_t>(FrameType::kLayer);
    h.length = sizeof(uint32_t) + layer_bytes;
    const uint32_t index = static_cast<uint32_t>(l);
    TANDEM_RETURN_IF_ERROR(WriteAll(fd, &h, sizeof(h), timeout));
    TANDEM_RETURN_IF_ERROR(WriteAll(fd, &index, sizeof(index), timeout));
    TANDEM_RETURN_IF_ERROR(
        WriteAll(fd, handoff.data.data() + static_cast<size_t>(l) * layer_bytes, layer_bytes, timeout));
  }
  TANDEM_RETURN_IF_ERROR(WriteFrame(fd, FrameType::kDone, nullptr, 0, timeout));
  return ReadVerdict(fd, timeout);  // written?
}

StatusOr<std::string> TcpKvTransport::Listen(const std::string& listen_address,
                                             KvReceiveHandler handler) {
  if (listen_fd_ >= 0) return FailedPreconditionError("KV transport: already listening");
  if (!handler.accept || !handler.complete || !handler.fail) {
    return InvalidArgumentError("KV transport: the receive handler needs accept, complete and fail");
  }
  TANDEM_ASSIGN_OR_RETURN(addrinfo * ai, Resolve(listen_address, true));
  int fd = NonBlockingSocket(ai->ai_family);
  if (fd < 0) {
    ::freeaddrinfo(ai);
    return UnavailableError(Errno("KV transport: socket"));
  }
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  const bool bound = ::bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && ::listen(fd, 128) == 0;
  ::freeaddrinfo(ai);
  if (!bound) {
    Status s = UnavailableError(Errno(("KV transport: cannot listen on " + listen_address).c_str()));
    ::close(fd);
    return s;
  }
  sockaddr_storage addr{};
  socklen_t len = sizeof(addr);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  char host[INET6_ADDRSTRLEN] = {0};
  int port = 0;
  std::string endpoint;
  if (addr.ss_family == AF_INET6) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&addr);
    ::inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
    port = ntohs(a->sin6_port);
    endpoint = "[" + std::string(host) + "]:" + std::to_string(port);
  } else {
    auto* a = reinterpret_cast<sockaddr_in*>(&addr);
    ::inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
    port = ntohs(a->sin_port);
    endpoint = std::string(host) + ":" + std::to_string(port);
  }
  handler_ = std::move(handler);
  listen_fd_ = fd;
  accept_thread_ = std::thread([this] { AcceptLoop(); });
  return endpoint;
}

void TcpKvTransport::AcceptLoop() {
  while (!stopping_.load()) {
    pollfd p{listen_fd_, POLLIN, 0};
    const int r = ::poll(&p, 1, 100);
    if (r <= 0) continue;
    const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) continue;
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    std::lock_guard<std::mutex> lock(mu_);
    ReapFinished();
    if (shut_down_) {
      ::close(fd);
      break;
    }
    auto connection = std::make_unique<Connection>();
    connection->fd = fd;
    Connection* raw = connection.get();
    connections_.push_back(std::move(connection));
    raw->thread = std::thread([this, raw] { Serve(raw); });
  }
}

void TcpKvTransport::ReapFinished() {
  for (auto it = connections_.begin(); it != connections_.end();) {
    if ((*it)->done.load()) {
      (*it)->thread.join();
      it = connections_.erase(it);
    } else {
      ++it;
    }
  }
}

void TcpKvTransport::Serve(Connection* connection) {
  const int fd = connection->fd;  // closed by ~Connection, after this thread is joined
  const Millis timeout = options_.io_timeout;
  auto finish = [&] {
    ::shutdown(fd, SHUT_RDWR);  // the peer sees the end now; the fd is closed after the join
    connection->done.store(true);
  };
  auto hello = ReadControl(fd, FrameType::kHello, timeout);
  StatusOr<KvHandoff> header = hello.ok() ? DecodeHello(*hello) : StatusOr<KvHandoff>(hello.status());
  if (!header.ok()) {
    spdlog::warn("KV transfer: bad handshake: {}", header.status().ToString());
    (void)WriteFrame(fd, FrameType::kVerdict, EncodeVerdict(header.status()).data(),
                     EncodeVerdict(header.status()).size(), timeout);
    return finish();
  }
  KvHandoff handoff = std::move(header).value();
  Status verdict = handoff.TotalBytes() > options_.max_transfer_bytes
                       ? ResourceExhaustedError("KV transfer of " + std::to_string(handoff.TotalBytes()) +
                                                " bytes exceeds this worker's limit")
                       : handler_.accept(handoff);
  const std::vector<std::byte> v = EncodeVerdict(verdict);
  Status sent = WriteFrame(fd, FrameType::kVerdict, v.data(), v.size(), timeout);
  if (!verdict.ok()) return finish();
  // Accepted: from here on exactly one of complete/fail.
  auto receive = [&]() -> Status {
    TANDEM_RETURN_IF_ERROR(sent);
    handoff.data.resize(handoff.TotalBytes());
    const size_t layer_bytes = handoff.LayerBytes();
    for (int32_t l = 0; l < handoff.geometry.num_layers; ++l) {
      TANDEM_ASSIGN_OR_RETURN(FrameHeader h, ReadFrameHeader(fd, FrameType::kLayer, timeout));
      uint32_t index = 0;
      if (h.length != sizeof(index) + layer_bytes) {
        return DataLossError("KV transfer: layer frame of " + std::to_string(h.length) +
                             " bytes, expected " + std::to_string(sizeof(index) + layer_bytes));
      }
      TANDEM_RETURN_IF_ERROR(ReadAll(fd, &index, sizeof(index), timeout));
      if (index != static_cast<uint32_t>(l)) {
        return DataLossError("KV transfer: layer " + std::to_string(index) + " out of order");
      }
      TANDEM_RETURN_IF_ERROR(ReadAll(fd, handoff.data.data() + static_cast<size_t>(l) * layer_bytes,
                                     layer_bytes, timeout));
    }
    TANDEM_ASSIGN_OR_RETURN(FrameHeader done, ReadFrameHeader(fd, FrameType::kDone, timeout));
    if (done.length != 0) return DataLossError("KV transfer: done frame with a payload");
    return OkStatus();
  };
  Status received = stopping_.load() ? UnavailableError("KV transport shutting down") : receive();
  if (!received.ok()) {
    spdlog::warn("KV transfer of '{}' failed: {}", handoff.request_id, received.ToString());
    handler_.fail(handoff.request_id, received);
    return finish();
  }
  const std::string id = handoff.request_id;
  Status written = handler_.complete(std::move(handoff));
  const std::vector<std::byte> ack = EncodeVerdict(written);
  (void)WriteFrame(fd, FrameType::kVerdict, ack.data(), ack.size(), timeout);
  finish();
}

void TcpKvTransport::Shutdown() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (shut_down_) return;
    shut_down_ = true;
  }
  stopping_.store(true);
  if (accept_thread_.joinable()) accept_thread_.join();
  std::list<std::unique_ptr<Connection>> connections;
  {
    std::lock_guard<std::mutex> lock(mu_);
    connections.swap(connections_);
    // Wake connections blocked in poll: their reads fail at once.
    for (auto& c : connections) {
      if (!c->done.load()) ::shutdown(c->fd, SHUT_RDWR);
    }
  }
  for (auto& c : connections) c->thread.join();
  if (listen_fd_ >= 0) ::close(listen_fd_);
  listen_fd_ = -1;
}

}  // namespace tandem
