// ConnectionServer: every connection served on its own thread, the peer sees the end when the
// serve function returns, finished threads are reaped while serving goes on, and Stop ends
// connections blocked in a read and joins them all.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <thread>
#include <vector>

#include "transfer/connection_server.h"
#include "transfer/socket_io.h"

namespace tandem::net {
namespace {

constexpr Millis kTimeout{2000};

// Echoes one u32 back plus one, then returns.
void EchoPlusOne(int fd) {
  uint32_t v = 0;
  if (!ReadAll(fd, &v, sizeof(v), kTimeout).ok()) return;
  ++v;
  (void)WriteAll(fd, &v, sizeof(v), kTimeout);
}

TEST(ConnectionServerTest, ServesManyConnectionsAtOnceAndThePeerSeesTheEnd) {
  ConnectionServer server;
  auto endpoint = server.Start("127.0.0.1:0", EchoPlusOne);
  ASSERT_TRUE(endpoint.ok()) << endpoint.status().ToString();
  EXPECT_TRUE(server.started());
  std::vector<std::thread> clients;
  std::atomic<int> good{0};
  for (uint32_t i = 0; i < 16; ++i) {
    clients.emplace_back([&, i] {
      auto socket = Connect(*endpoint, kTimeout);
      if (!socket.ok()) return;
      uint32_t v = i;
      uint32_t back = 0;
      if (!WriteAll(socket->fd(), &v, sizeof(v), kTimeout).ok()) return;
      if (!ReadAll(socket->fd(), &back, sizeof(back), kTimeout).ok()) return;
      // The server shut the socket down after serving: the next read ends at once.
      char extra = 0;
      const bool ended = !ReadAll(socket->fd(), &extra, 1, kTimeout).ok();
      if (back == i + 1 && ended) ++good;
    });
  }
  for (auto& c : clients) c.join();
  EXPECT_EQ(good.load(), 16);
  server.Stop();
  EXPECT_FALSE(server.started());
}

TEST(ConnectionServerTest, StopEndsConnectionsBlockedInAReadAndJoinsThem) {
  std::atomic<int> served{0};
  std::atomic<int> ended_by_stop{0};
  ConnectionServer server;
  auto endpoint = server.Start("127.0.0.1:0", [&](int fd) {
    ++served;
    char c = 0;
    // The client never writes: only Stop's shutdown ends this read before its (long) timeout.
    const Status read = ReadAll(fd, &c, 1, Millis(60000));
    if (server.stopping() && !read.ok() && read.code() != StatusCode::kDeadlineExceeded) ++ended_by_stop;
  });
  ASSERT_TRUE(endpoint.ok());
  std::vector<Socket> sockets;
  for (int i = 0; i < 3; ++i) {
    auto s = Connect(*endpoint, kTimeout);
    ASSERT_TRUE(s.ok());
    sockets.push_back(std::move(s).value());
  }
  for (int i = 0; i < 200 && served.load() < 3; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  ASSERT_EQ(served.load(), 3);
  server.Stop();  // returns only once every serving thread was joined
  EXPECT_EQ(ended_by_stop.load(), 3);
  server.Stop();  // idempotent
}

TEST(ConnectionServerTest, StartTwiceIsAnErrorAndABadAddressIsReported) {
  ConnectionServer server;
  ASSERT_TRUE(server.Start("127.0.0.1:0", EchoPlusOne).ok());
  EXPECT_EQ(server.Start("127.0.0.1:0", EchoPlusOne).status().code(), StatusCode::kFailedPrecondition);
  ConnectionServer other;
  EXPECT_FALSE(other.Start("not-an-address", EchoPlusOne).ok());
  EXPECT_FALSE(other.started());
}

}  // namespace
}  // namespace tandem::net
