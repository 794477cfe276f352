// TcpKvTransport: KvTransport over TCP sockets, for CPU workers (and any pair of hosts without a
// GPU interconnect). One connection per transfer.
//
// Wire format (host byte order; both ends run the same build on one host or one architecture):
// every frame is a 16-byte header {u32 magic 'TKV1', u32 type, u64 payload length} then payload.
//   kHello   sender -> receiver: u32 protocol version, request id (u32 length + bytes), geometry
//            (i32 num_layers, block_size, num_kv_heads, head_dim, u32 dtype), i32 num_tokens,
//            i32 num_blocks, i32 first_token, u64 total KV bytes
//   kVerdict receiver -> sender: i32 status code, message (u32 length + bytes); answers kHello
//            (accepted or not) and kDone (the ack: written or not)
//   kLayer   sender -> receiver: u32 layer index, then that layer's K and V blocks (in order)
//   kDone    sender -> receiver: empty
// A frame that is malformed, out of order or larger than announced ends the connection with an
// error on both sides.
#pragma once

#include <atomic>
#include <list>
#include <memory>
#include <mutex>
#include <thread>

#include "transfer/kv_transport.h"
#include "transfer/socket_io.h"

namespace tandem {

class TcpKvTransport final : public KvTransport {
 public:
  explicit TcpKvTransport(KvTransportOptions options = {});
  ~TcpKvTransport() override;  // Shutdown()

  std::string_view name() const override { return "tcp"; }
  Status Send(const std::string& endpoint, const KvHandoff& handoff) override;
  StatusOr<std::string> Listen(const std::string& listen_address, KvReceiveHandler handler) override;
  void Shutdown() override;

 private:
  struct Connection {
    net::Socket socket;
    std::thread thread;
    std::atomic<bool> done{false};
  };

  void AcceptLoop();
  void Serve(Connection* connection);  // one incoming transfer
  void ReapFinished();                 // joins finished connection threads; holds mu_

  const KvTransportOptions options_;  // Constant after construction
  KvReceiveHandler handler_;          // Constant after Listen
  net::Socket listen_socket_;         // Constant after Listen
  int listen_fd_ = -1;                // Constant after Listen
  std::atomic<bool> stopping_{false};
  std::thread accept_thread_;
  std::mutex mu_;
  std::list<std::unique_ptr<Connection>> connections_;  // GUARDED_BY(mu_)
  bool shut_down_ = false;                              // GUARDED_BY(mu_)
};

}  // namespace tandem
