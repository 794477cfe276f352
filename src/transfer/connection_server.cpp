#include "transfer/connection_server.h"

#include <sys/socket.h>

namespace tandem::net {

ConnectionServer::~ConnectionServer() { Stop(); }

StatusOr<std::string> ConnectionServer::Start(const std::string& address, ServeFn serve) {
  if (started()) return FailedPreconditionError("already listening");
  TANDEM_ASSIGN_OR_RETURN(auto bound, Listen(address));
  serve_ = std::move(serve);
  listen_socket_ = std::move(bound.first);
  accept_thread_ = std::thread([this] { AcceptLoop(); });
  return bound.second;
}

void ConnectionServer::AcceptLoop() {
  while (!stopping_.load()) {
    Socket accepted = AcceptFor(listen_socket_.fd(), Millis(100));
    if (!accepted.valid()) continue;
    std::lock_guard<std::mutex> lock(mu_);
    ReapFinished();
    if (stopped_) break;
    auto connection = std::make_unique<Connection>();
    connection->socket = std::move(accepted);
    Connection* raw = connection.get();
    connections_.push_back(std::move(connection));
    raw->thread = std::thread([this, raw] {
      serve_(raw->socket.fd());
      ::shutdown(raw->socket.fd(), SHUT_RDWR);
      raw->done.store(true);
    });
  }
}

void ConnectionServer::ReapFinished() {
  for (auto it = connections_.begin(); it != connections_.end();) {
    if ((*it)->done.load()) {
      (*it)->thread.join();
      it = connections_.erase(it);
    } else {
      ++it;
    }
  }
}

void ConnectionServer::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopped_) return;
    stopped_ = true;
  }
  stopping_.store(true);
  if (accept_thread_.joinable()) accept_thread_.join();
  std::list<std::unique_ptr<Connection>> connections;
  {
    std::lock_guard<std::mutex> lock(mu_);
    connections.swap(connections_);
    for (auto& c : connections) {
      if (!c->done.load()) ::shutdown(c->socket.fd(), SHUT_RDWR);
    }
  }
  for (auto& c : connections) c->thread.join();
  listen_socket_ = Socket();
}

}  // namespace tandem::net
