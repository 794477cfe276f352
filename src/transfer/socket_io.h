// Blocking-with-deadline socket I/O for the KV transports' wire protocols (TCP data path, NCCL
// control path): non-blocking sockets driven through poll() so every wait is bounded, framed
// messages {u32 magic, u32 type, u64 payload length} + payload, and a little-endian-agnostic
// (same build on both ends) payload writer/reader.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "tandem/status.h"

namespace tandem::net {

using Millis = std::chrono::milliseconds;

// Closes a socket when it goes out of scope.
class Socket {
 public:
  explicit Socket(int fd = -1) : fd_(fd) {}
  ~Socket();
  Socket(Socket&& other) noexcept : fd_(other.fd_) { other.fd_ = -1; }
  Socket& operator=(Socket&& other) noexcept;
  Socket(const Socket&) = delete;
  Socket& operator=(const Socket&) = delete;
  int fd() const { return fd_; }
  bool valid() const { return fd_ >= 0; }

 private:
  int fd_;
};

struct FrameHeader {
  uint32_t magic = 0;
  uint32_t type = 0;
  uint64_t length = 0;
};
static_assert(sizeof(FrameHeader) == 16);

// Waits until `fd` is ready for `events` (POLLIN/POLLOUT); DeadlineExceeded after `timeout`.
Status WaitReady(int fd, short events, Millis timeout, const char* what);
// Unavailable when the peer is gone; DeadlineExceeded when it makes no progress for `timeout`.
Status WriteAll(int fd, const void* data, size_t size, Millis timeout);
Status ReadAll(int fd, void* data, size_t size, Millis timeout);

Status WriteFrame(int fd, uint32_t magic, uint32_t type, const void* payload, size_t size, Millis timeout);
// DataLoss for a wrong magic or, when `expected_type` is not 0, another type.
StatusOr<FrameHeader> ReadFrameHeader(int fd, uint32_t magic, uint32_t expected_type, Millis timeout);
// A whole frame of at most `max_payload` bytes.
StatusOr<std::vector<std::byte>> ReadFramePayload(int fd, const FrameHeader& header, size_t max_payload,
                                                  Millis timeout);

// host:port (or [v6]:port) -> a connected non-blocking TCP socket with TCP_NODELAY.
StatusOr<Socket> Connect(const std::string& endpoint, Millis timeout);
// Binds and listens on host:port (port 0: any); returns the socket and the bound endpoint.
StatusOr<std::pair<Socket, std::string>> Listen(const std::string& address);
// Accepts one connection if one arrives within `timeout` (an invalid Socket otherwise).
Socket AcceptFor(int listen_fd, Millis timeout);

class PayloadWriter {
 public:
  template <typename T>
  void Put(T v) {
    const auto* p = reinterpret_cast<const std::byte*>(&v);
    bytes_.insert(bytes_.end(), p, p + sizeof(T));
  }
  void PutBytes(const void* data, size_t size) {
    const auto* p = static_cast<const std::byte*>(data);
    bytes_.insert(bytes_.end(), p, p + size);
  }
  void PutString(const std::string& s) {
    Put<uint32_t>(static_cast<uint32_t>(s.size()));
    PutBytes(s.data(), s.size());
  }
  const std::vector<std::byte>& bytes() const { return bytes_; }

 private:
  std::vector<std::byte> bytes_;
};

class PayloadReader {
 public:
  explicit PayloadReader(const std::vector<std::byte>& bytes) : bytes_(bytes) {}
  template <typename T>
  bool Get(T* v) {
    return GetBytes(v, sizeof(T));
  }
  bool GetBytes(void* out, size_t size) {
    if (pos_ + size > bytes_.size()) return false;
    std::memcpy(out, bytes_.data() + pos_, size);
    pos_ += size;
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

// A Status as a payload ({i32 code, string message}) and back; `prefix` goes before the message.
std::vector<std::byte> EncodeStatus(const Status& status);
Status DecodeStatus(const std::vector<std::byte>& payload, const std::string& prefix);

}  // namespace tandem::net
