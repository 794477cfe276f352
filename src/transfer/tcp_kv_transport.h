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

#include "transfer/connection_server.h"
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
  void Serve(int fd);  // one incoming transfer

  const KvTransportOptions options_;  // Constant after construction
  KvReceiveHandler handler_;          // Constant after Listen
  net::ConnectionServer server_;
};

}  // namespace tandem
