// ConnectionServer: the receiving side of a KV transport's control connections. Accepts on a
// listening socket and serves each connection on its own thread; finished threads are joined as
// new connections arrive, and Stop() ends them all. Shared by the TCP and the NCCL transports.
//
// Threading: Start and Stop from the owner's thread; the serve function runs on one thread per
// connection and may read stopping() to tell a shutdown from a peer's failure.
#pragma once

#include <atomic>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "tandem/status.h"
#include "transfer/socket_io.h"

namespace tandem::net {

class ConnectionServer {
 public:
  // Serves one connection. When it returns the socket is shut down (the peer sees the end at
  // once) and closed after its thread is joined.
  using ServeFn = std::function<void(int fd)>;

  ConnectionServer() = default;
  ConnectionServer(const ConnectionServer&) = delete;
  ConnectionServer& operator=(const ConnectionServer&) = delete;
  ~ConnectionServer();  // Stop()

  // Listens on `address` ("host:port", port 0 for any) and starts accepting; returns the bound
  // endpoint. FailedPrecondition if already started.
  StatusOr<std::string> Start(const std::string& address, ServeFn serve);
  bool started() const { return listen_socket_.valid(); }
  // Stops accepting, shuts down every open connection's socket (blocked reads fail at once) and
  // joins every thread. Idempotent.
  void Stop();
  bool stopping() const { return stopping_.load(); }

 private:
  struct Connection {
    Socket socket;
    std::thread thread;
    std::atomic<bool> done{false};
  };

  void AcceptLoop();
  void ReapFinished();  // REQUIRES: mu_ held

  ServeFn serve_;         // Constant after Start
  Socket listen_socket_;  // Constant after Start
  std::thread accept_thread_;
  std::atomic<bool> stopping_{false};
  std::mutex mu_;
  std::list<std::unique_ptr<Connection>> connections_;  // GUARDED_BY(mu_)
  bool stopped_ = false;                                // GUARDED_BY(mu_)
};

}  // namespace tandem::net
