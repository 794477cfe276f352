#include "transfer/socket_io.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>

namespace tandem::net {
namespace {

std::string Errno(const std::string& what) { return what + ": " + std::strerror(errno); }

StatusOr<std::pair<std::string, std::string>> SplitHostPort(const std::string& endpoint) {
  const size_t colon = endpoint.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == endpoint.size()) {
    return InvalidArgumentError("endpoint must be host:port, got '" + endpoint + "'");
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
    return InvalidArgumentError("cannot resolve endpoint '" + endpoint + "': " + gai_strerror(rc));
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

}  // namespace

Socket::~Socket() {
  if (fd_ >= 0) ::close(fd_);
}

Socket& Socket::operator=(Socket&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = other.fd_;
    other.fd_ = -1;
  }
  return *this;
}

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

Status WriteFrame(int fd, uint32_t magic, uint32_t type, const void* payload, size_t size, Millis timeout) {
  FrameHeader h;
  h.magic = magic;
  h.type = type;
  h.length = size;
  TANDEM_RETURN_IF_ERROR(WriteAll(fd, &h, sizeof(h), timeout));
  return size == 0 ? OkStatus() : WriteAll(fd, payload, size, timeout);
}

StatusOr<FrameHeader> ReadFrameHeader(int fd, uint32_t magic, uint32_t expected_type, Millis timeout) {
  FrameHeader h;
  TANDEM_RETURN_IF_ERROR(ReadAll(fd, &h, sizeof(h), timeout));
  if (h.magic != magic) return DataLossError("KV transfer: bad frame magic (not a Tandem peer?)");
  if (expected_type != 0 && h.type != expected_type) {
    return DataLossError("KV transfer: expected frame type " + std::to_string(expected_type) + ", got " +
                         std::to_string(h.type));
  }
  return h;
}

StatusOr<std::vector<std::byte>> ReadFramePayload(int fd, const FrameHeader& header, size_t max_payload,
                                                  Millis timeout) {
  if (header.length > max_payload) return DataLossError("KV transfer: oversized control frame");
  std::vector<std::byte> payload(header.length);
  TANDEM_RETURN_IF_ERROR(ReadAll(fd, payload.data(), payload.size(), timeout));
  return payload;
}

StatusOr<Socket> Connect(const std::string& endpoint, Millis timeout) {
  TANDEM_ASSIGN_OR_RETURN(addrinfo * ai, Resolve(endpoint, false));
  Status last = UnavailableError("KV transfer: no address for " + endpoint);
  for (addrinfo* a = ai; a != nullptr; a = a->ai_next) {
    Socket socket(NonBlockingSocket(a->ai_family));
    if (!socket.valid()) {
      last = UnavailableError(Errno("KV transfer: socket"));
      continue;
    }
    if (::connect(socket.fd(), a->ai_addr, a->ai_addrlen) != 0 && errno != EINPROGRESS) {
      last = UnavailableError(Errno("KV transfer: cannot connect to " + endpoint));
      continue;
    }
    Status ready = WaitReady(socket.fd(), POLLOUT, timeout, "connecting");
    int err = 0;
    socklen_t len = sizeof(err);
    if (ready.ok()) ::getsockopt(socket.fd(), SOL_SOCKET, SO_ERROR, &err, &len);
    if (!ready.ok() || err != 0) {
      last = UnavailableError("KV transfer: cannot connect to " + endpoint + ": " +
                              (ready.ok() ? std::strerror(err) : ready.message()));
      continue;
    }
    ::freeaddrinfo(ai);
    return socket;
  }
  ::freeaddrinfo(ai);
  return last;
}

StatusOr<std::pair<Socket, std::string>> Listen(const std::string& address) {
  TANDEM_ASSIGN_OR_RETURN(addrinfo * ai, Resolve(address, true));
  Socket socket(NonBlockingSocket(ai->ai_family));
  if (!socket.valid()) {
    ::freeaddrinfo(ai);
    return UnavailableError(Errno("KV transport: socket"));
  }
  int one = 1;
  ::setsockopt(socket.fd(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  const bool bound = ::bind(socket.fd(), ai->ai_addr, ai->ai_addrlen) == 0 && ::listen(socket.fd(), 128) == 0;
  ::freeaddrinfo(ai);
  if (!bound) return UnavailableError(Errno("KV transport: cannot listen on " + address));
  sockaddr_storage addr{};
  socklen_t len = sizeof(addr);
  ::getsockname(socket.fd(), reinterpret_cast<sockaddr*>(&addr), &len);
  char host[INET6_ADDRSTRLEN] = {0};
  std::string endpoint;
  if (addr.ss_family == AF_INET6) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&addr);
    ::inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
    endpoint = "[" + std::string(host) + "]:" + std::to_string(ntohs(a->sin6_port));
  } else {
    auto* a = reinterpret_cast<sockaddr_in*>(&addr);
    ::inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
    endpoint = std::string(host) + ":" + std::to_string(ntohs(a->sin_port));
  }
  return std::make_pair(std::move(socket), endpoint);
}

Socket AcceptFor(int listen_fd, Millis timeout) {
  pollfd p{listen_fd, POLLIN, 0};
  if (::poll(&p, 1, static_cast<int>(timeout.count())) <= 0) return Socket();
  const int fd = ::accept4(listen_fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
  if (fd < 0) return Socket();
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  return Socket(fd);
}

std::vector<std::byte> EncodeStatus(const Status& status) {
  PayloadWriter w;
  w.Put<int32_t>(static_cast<int32_t>(status.code()));
  w.PutString(std::string(status.message()));
  return w.bytes();
}

Status DecodeStatus(const std::vector<std::byte>& payload, const std::string& prefix) {
  PayloadReader r(payload);
  int32_t code = 0;
  std::string message;
  if (!r.Get(&code) || !r.GetString(&message) || !r.AtEnd()) {
    return DataLossError("KV transfer: malformed status frame");
  }
  if (code == 0) return OkStatus();
  return Status(static_cast<StatusCode>(code), prefix + message);
}

}  // namespace tandem::net
