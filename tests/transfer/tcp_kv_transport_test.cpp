// TcpKvTransport: random blocks round trip byte for byte; a rejected handshake, a peer that dies
// mid-transfer and a peer that stops talking are errors on both sides within the timeouts, never
// hangs; a reservation is always answered with exactly one of complete/fail.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <future>
#include <mutex>
#include <random>
#include <thread>

#include "transfer/tcp_kv_transport.h"

namespace tandem {
namespace {

using namespace std::chrono_literals;

KvHandoff RandomHandoff(const std::string& id, int32_t num_tokens, uint32_t seed) {
  KvHandoff h;
  h.request_id = id;
  h.geometry = KvGeometry{4, 16, 2, 32, DType::kF32};
  h.num_tokens = num_tokens;
  h.num_blocks = (num_tokens + 15) / 16;
  h.first_token = 1234;
  h.data.resize(h.TotalBytes());
  std::mt19937 rng(seed);
  for (auto& b : h.data) b = static_cast<std::byte>(rng());
  return h;
}

struct Recorder {
  std::mutex mu;
  std::vector<KvHandoff> completed;
  std::vector<std::pair<std::string, Status>> failed;
  std::promise<void> fail_seen;
  std::atomic<bool> fail_signalled{false};

  KvReceiveHandler Handler(Status accept_with = OkStatus()) {
    KvReceiveHandler h;
    h.accept = [accept_with](const KvHandoff&) { return accept_with; };
    h.complete = [this](KvHandoff kv) {
      std::lock_guard<std::mutex> lock(mu);
      completed.push_back(std::move(kv));
      return OkStatus();
    };
    h.fail = [this](const std::string& id, const Status& s) {
      {
        std::lock_guard<std::mutex> lock(mu);
        failed.emplace_back(id, s);
      }
      if (!fail_signalled.exchange(true)) fail_seen.set_value();
    };
    return h;
  }
};

TEST(TcpKvTransportTest, RandomBlocksRoundTrip) {
  Recorder rec;
  TcpKvTransport receiver;
  auto endpoint = receiver.Listen("127.0.0.1:0", rec.Handler());
  ASSERT_TRUE(endpoint.ok()) << endpoint.status().ToString();
  TcpKvTransport sender;
  std::vector<KvHandoff> sent;
  for (int i = 0; i < 4; ++i) sent.push_back(RandomHandoff("r" + std::to_string(i), 1 + 97 * i, i));
  std::vector<std::thread> threads;
  std::vector<Status> results(sent.size());
  for (size_t i = 0; i < sent.size(); ++i) {
    threads.emplace_back([&, i] { results[i] = sender.Send(*endpoint, sent[i]); });
  }
  for (auto& t : threads) t.join();
  for (const Status& s : results) EXPECT_TRUE(s.ok()) << s.ToString();
  std::lock_guard<std::mutex> lock(rec.mu);
  ASSERT_EQ(rec.completed.size(), sent.size());
  EXPECT_TRUE(rec.failed.empty());
  for (const KvHandoff& got : rec.completed) {
    const KvHandoff& want = sent[static_cast<size_t>(std::stoi(got.request_id.substr(1)))];
    EXPECT_EQ(got.geometry, want.geometry);
    EXPECT_EQ(got.num_tokens, want.num_tokens);
    EXPECT_EQ(got.num_blocks, want.num_blocks);
    EXPECT_EQ(got.first_token, want.first_token);
    EXPECT_TRUE(got.data == want.data) << got.request_id;
  }
}

TEST(TcpKvTransportTest, RejectedHandshakeReachesTheSender) {
  Recorder rec;
  TcpKvTransport receiver;
  auto endpoint = receiver.Listen("127.0.0.1:0", rec.Handler(NotFoundError("no reservation")));
  ASSERT_TRUE(endpoint.ok());
  TcpKvTransport sender;
  Status s = sender.Send(*endpoint, RandomHandoff("x", 20, 1));
  EXPECT_EQ(s.code(), StatusCode::kNotFound) << s.ToString();
  EXPECT_NE(s.message().find("no reservation"), std::string::npos);
  std::lock_guard<std::mutex> lock(rec.mu);
  EXPECT_TRUE(rec.completed.empty());
  EXPECT_TRUE(rec.failed.empty());  // never accepted: neither complete nor fail
}

TEST(TcpKvTransportTest, ListeningTwiceOrWithAnIncompleteHandlerIsRefused) {
  TcpKvTransport receiver;
  Recorder rec;
  KvReceiveHandler partial = rec.Handler();
  partial.fail = nullptr;
  EXPECT_EQ(receiver.Listen("127.0.0.1:0", partial).status().code(), StatusCode::kInvalidArgument);
  ASSERT_TRUE(receiver.Listen("127.0.0.1:0", rec.Handler()).ok());
  EXPECT_EQ(receiver.Listen("127.0.0.1:0", rec.Handler()).status().code(), StatusCode::kFailedPrecondition);
}

TEST(TcpKvTransportTest, NobodyListeningIsUnavailable) {
  // Bind a port, then close it: nothing listens there.
  TcpKvTransport probe;
  Recorder rec;
  auto endpoint = probe.Listen("127.0.0.1:0", rec.Handler());
  ASSERT_TRUE(endpoint.ok());
  probe.Shutdown();
  TcpKvTransport sender;
  const auto start = std::chrono::steady_clock::now();
  Status s = sender.Send(*endpoint, RandomHandoff("x", 5, 2));
  EXPECT_EQ(s.code(), StatusCode::kUnavailable) << s.ToString();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 3s);
}

// A raw socket peer that speaks the protocol up to a point, then dies or goes silent.
int ConnectRaw(const std::string& endpoint) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(std::stoi(endpoint.substr(endpoint.rfind(':') + 1))));
  inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
  EXPECT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  return fd;
}

TEST(TcpKvTransportTest, SenderDyingMidTransferFailsTheReservation) {
  Recorder rec;
  KvTransportOptions options;
  options.io_timeout = 10s;  // death must be noticed at once, not by timeout
  TcpKvTransport receiver(options);
  auto endpoint = receiver.Listen("127.0.0.1:0", rec.Handler());
  ASSERT_TRUE(endpoint.ok());
  // A raw peer: a valid handshake, part of layer 0, then it dies (the socket closes, as when the
  // prefill worker's process is killed).
  const KvHandoff big = RandomHandoff("dies", 4000, 3);
  const int fd = ConnectRaw(*endpoint);
  auto put = [](std::vector<std::byte>& b, const void* p, size_t n) {
    b.insert(b.end(), static_cast<const std::byte*>(p), static_cast<const std::byte*>(p) + n);
  };
  std::vector<std::byte> hello;
  uint32_t version = 1, len = static_cast<uint32_t>(big.request_id.size()), dtype = 0;
  put(hello, &version, 4);
  put(hello, &len, 4);
  put(hello, big.request_id.data(), len);
  for (int32_t v : {big.geometry.num_layers, big.geometry.block_size, big.geometry.num_kv_heads,
                    big.geometry.head_dim}) {
    put(hello, &v, 4);
  }
  put(hello, &dtype, 4);
  for (int32_t v : {big.num_tokens, big.num_blocks, big.first_token}) put(hello, &v, 4);
  uint64_t total = big.TotalBytes();
  put(hello, &total, 8);
  struct {
    uint32_t magic = 0x31564b54, type = 1;
    uint64_t length;
  } header;
  header.length = hello.size();
  ASSERT_EQ(write(fd, &header, 16), 16);
  ASSERT_EQ(write(fd, hello.data(), hello.size()), static_cast<ssize_t>(hello.size()));
  char verdict[64];
  ASSERT_GT(read(fd, verdict, sizeof(verdict)), 0);  // accepted
  header.type = 3;
  header.length = 4 + big.LayerBytes();
  uint32_t layer = 0;
  ASSERT_EQ(write(fd, &header, 16), 16);
  ASSERT_EQ(write(fd, &layer, 4), 4);
  ASSERT_EQ(write(fd, big.data.data(), 1000), 1000);
  const auto start = std::chrono::steady_clock::now();
  close(fd);  // the peer dies
  auto seen = rec.fail_seen.get_future();
  ASSERT_EQ(seen.wait_for(5s), std::future_status::ready) << "the receiver hangs on a dead peer";
  EXPECT_LT(std::chrono::steady_clock::now() - start, 2s);
  std::lock_guard<std::mutex> lock(rec.mu);
  ASSERT_EQ(rec.failed.size(), 1u);
  EXPECT_EQ(rec.failed[0].first, "dies");
  EXPECT_EQ(rec.failed[0].second.code(), StatusCode::kUnavailable) << rec.failed[0].second.ToString();
  EXPECT_TRUE(rec.completed.empty());
}

TEST(TcpKvTransportTest, SilentReceiverTimesOutTheSender) {
  // A listener that accepts and never answers the handshake.
  const int listener = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
  ASSERT_EQ(bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(listen(listener, 4), 0);
  socklen_t len = sizeof(addr);
  getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len);
  const std::string endpoint = "127.0.0.1:" + std::to_string(ntohs(addr.sin_port));
  KvTransportOptions options;
  options.io_timeout = 300ms;
  TcpKvTransport sender(options);
  const auto start = std::chrono::steady_clock::now();
  Status s = sender.Send(endpoint, RandomHandoff("slow", 10, 4));
  const auto took = std::chrono::steady_clock::now() - start;
  EXPECT_EQ(s.code(), StatusCode::kDeadlineExceeded) << s.ToString();
  EXPECT_GE(took, 250ms);
  EXPECT_LT(took, 3s);
  close(listener);
}

TEST(TcpKvTransportTest, SilentSenderTimesOutTheReceiver) {
  Recorder rec;
  KvTransportOptions options;
  options.io_timeout = 300ms;
  TcpKvTransport receiver(options);
  auto endpoint = receiver.Listen("127.0.0.1:0", rec.Handler());
  ASSERT_TRUE(endpoint.ok());
  const int fd = ConnectRaw(*endpoint);  // connects, says nothing
  std::this_thread::sleep_for(600ms);
  char buf[64];
  // The receiver gave up: it answered with an error verdict and/or closed the connection.
  ssize_t n;
  do {
    n = read(fd, buf, sizeof(buf));
  } while (n > 0);
  EXPECT_EQ(n, 0);
  close(fd);
  receiver.Shutdown();  // joins promptly: no connection thread is stuck
  std::lock_guard<std::mutex> lock(rec.mu);
  EXPECT_TRUE(rec.completed.empty());
}

TEST(TcpKvTransportTest, MalformedHandshakeIsRejected) {
  Recorder rec;
  TcpKvTransport receiver;
  auto endpoint = receiver.Listen("127.0.0.1:0", rec.Handler());
  ASSERT_TRUE(endpoint.ok());
  const int fd = ConnectRaw(*endpoint);
  const char junk[16] = "GET / HTTP/1.1\n";
  ASSERT_EQ(write(fd, junk, 16), 16);
  char buf[64];
  ssize_t n;
  do {
    n = read(fd, buf, sizeof(buf));
  } while (n > 0);
  EXPECT_EQ(n, 0);
  close(fd);
  std::lock_guard<std::mutex> lock(rec.mu);
  EXPECT_TRUE(rec.completed.empty());
  EXPECT_TRUE(rec.failed.empty());
}

}  // namespace
}  // namespace tandem
