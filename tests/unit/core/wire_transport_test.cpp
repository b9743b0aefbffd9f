// The transport in one process over loopback: handshake, ordering, rejection, malformed input.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <future>
#include <mutex>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "flexsp/core/net/transport.hpp"

namespace {

using namespace flexsp;
using namespace std::chrono_literals;
using wire::schema::Role;

net::transport_config config_with(std::string secret) {
  net::transport_config c;
  c.secret.assign(secret.begin(), secret.end());
  c.handshake_timeout = 2000ms;
  return c;
}

// A server that echoes every message back with the same number and records closes.
struct echo_server {
  net::event_loop loop;
  std::unique_ptr<net::listener> listener;
  std::mutex mutex;
  std::condition_variable cv;
  std::vector<error> closes;
  std::vector<std::shared_ptr<net::connection>> conns;

  explicit echo_server(net::transport_config config) {
    loop.start();
    auto l = net::listener::open(loop, {"127.0.0.1", 0}, std::move(config), [this](std::shared_ptr<net::connection> c) {
      {
        std::lock_guard lock{mutex};
        conns.push_back(c);
        cv.notify_all();
      }
      c->start(
          [](net::connection& conn, wire::envelope_reader env) {
            capnp::MallocMessageBuilder reply;
            auto a = wire::start_envelope(reply, env.getRequestId()).getBody().initActor();
            a.setTypeId(env.getBody().getActor().getTypeId());
            conn.send(reply);
          },
          [this](net::connection&, const error& e) {
            std::lock_guard lock{mutex};
            closes.push_back(e);
            cv.notify_all();
          });
    });
    EXPECT_TRUE(l) << l.error().to_string();
    listener = std::move(*l);
  }
  ~echo_server() {
    listener.reset();
    loop.stop();
  }
  bool wait_conns(std::size_t n) {
    std::unique_lock lock{mutex};
    return cv.wait_for(lock, 10s, [&]() { return conns.size() >= n; });
  }
  bool wait_closes(std::size_t n) {
    std::unique_lock lock{mutex};
    return cv.wait_for(lock, 10s, [&]() { return closes.size() >= n; });
  }
  net::endpoint address() const { return {"127.0.0.1", listener->port()}; }
};

// A client connection that collects echoed sequence numbers.
struct echo_client {
  explicit echo_client(std::shared_ptr<net::connection> c) : conn{std::move(c)} {}
  std::shared_ptr<net::connection> conn;
  std::mutex mutex;
  std::condition_variable cv;
  std::vector<std::uint64_t> received;
  std::optional<error> closed;

  void start() {
    conn->start(
        [this](net::connection&, wire::envelope_reader env) {
          std::lock_guard lock{mutex};
          received.push_back(env.getBody().getActor().getTypeId());
          cv.notify_all();
        },
        [this](net::connection&, const error& e) {
          std::lock_guard lock{mutex};
          closed = e;
          cv.notify_all();
        });
  }
  void send(std::uint64_t seq) {
    capnp::MallocMessageBuilder msg;
    wire::start_envelope(msg).getBody().initActor().setTypeId(seq);
    conn->send(msg);
  }
  bool wait_count(std::size_t n) {
    std::unique_lock lock{mutex};
    return cv.wait_for(lock, 10s, [&]() { return received.size() >= n; });
  }
};

int raw_connect(std::uint16_t port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  return fd;
}

// Reads until EOF or error; true when the server closed within the socket timeout.
bool closed_by_server(int fd) {
  timeval tv{10, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  char buf[4096];
  for (;;) {
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n == 0) return true;
    if (n < 0) return errno == ECONNRESET;
  }
}

TEST(Endpoint, ParsesHostAndPortAndNamesBadInput) {
  auto e = net::endpoint::parse("10.0.0.5:7400");
  ASSERT_TRUE(e);
  EXPECT_EQ(e->host, "10.0.0.5");
  EXPECT_EQ(e->port, 7400);
  EXPECT_EQ(e->to_string(), "10.0.0.5:7400");
  EXPECT_FALSE(net::endpoint::parse("nohost"));
  EXPECT_FALSE(net::endpoint::parse("h:99999"));
  EXPECT_FALSE(net::endpoint::parse("h:7x"));
}

TEST(Backoff, DoublesUpToTheCap) {
  net::backoff b{100ms, 350ms};
  EXPECT_EQ(b.next(), 100ms);
  EXPECT_EQ(b.next(), 200ms);
  EXPECT_EQ(b.next(), 350ms);
  EXPECT_EQ(b.next(), 350ms);
  b.reset();
  EXPECT_EQ(b.next(), 100ms);
}

TEST(Transport, DeliversMessagesFromOneSenderInOrder) {
  echo_server server{config_with("s3cret")};
  net::event_loop loop;
  loop.start();
  auto c = net::connect_blocking(loop, server.address(), Role::PEER, config_with("s3cret"));
  ASSERT_TRUE(c) << c.error().to_string();
  echo_client client{*c};
  client.start();
  constexpr std::size_t kCount = 2000;
  for (std::uint64_t i = 0; i < kCount; ++i) client.send(i);
  ASSERT_TRUE(client.wait_count(kCount));
  for (std::uint64_t i = 0; i < kCount; ++i) ASSERT_EQ(client.received[i], i);
  ASSERT_TRUE(server.wait_conns(1));
  EXPECT_EQ(server.conns.at(0)->role(), Role::PEER);
  client.conn->close(error{errc::cancelled, "done"});
  EXPECT_TRUE(server.wait_closes(1));
  loop.stop();
}

TEST(Transport, RejectsAWrongSecretOnBothSides) {
  echo_server server{config_with("right")};
  net::event_loop loop;
  loop.start();
  auto c = net::connect_blocking(loop, server.address(), Role::NODE, config_with("wrong"));
  ASSERT_FALSE(c);
  EXPECT_NE(c.error().message().find("rejected"), std::string::npos) << c.error().to_string();
  EXPECT_TRUE(server.conns.empty());
  loop.stop();
}

TEST(Transport, ConnectingToAClosedPortFailsFastAsDisconnected) {
  std::uint16_t port;
  {
    echo_server server{config_with("x")};
    port = server.listener->port();
  }
  net::event_loop loop;
  loop.start();
  const auto t0 = std::chrono::steady_clock::now();
  auto c = net::connect_blocking(loop, {"127.0.0.1", port}, Role::PEER, config_with("x"));
  ASSERT_FALSE(c);
  EXPECT_EQ(c.error().kind(), errc::disconnected) << c.error().to_string();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 1s);
  loop.stop();
}

TEST(Transport, MalformedInputClosesOnlyThatConnection) {
  echo_server server{config_with("k")};
  net::event_loop loop;
  loop.start();
  auto good = net::connect_blocking(loop, server.address(), Role::PEER, config_with("k"));
  ASSERT_TRUE(good) << good.error().to_string();
  echo_client client{*good};
  client.start();

  const std::vector<std::vector<std::uint32_t>> attacks = {
      {0xdeadbeef, 0x01020304, 0x55555555, 0xaaaaaaaa},  // random: absurd segment count
      {0, 0x10000000},                                   // oversized: 2 GiB announced
      {0, 2, 0, 0x00010000, 1, 2},                       // wrong schema: a tiny struct, not an envelope
  };
  for (const auto& words : attacks) {
    const int fd = raw_connect(server.listener->port());
    ASSERT_EQ(::send(fd, words.data(), words.size() * 4, 0), static_cast<ssize_t>(words.size() * 4));
    EXPECT_TRUE(closed_by_server(fd));
    ::close(fd);
  }
  client.send(1);
  ASSERT_TRUE(client.wait_count(1)) << "the authenticated connection keeps working";
  EXPECT_TRUE(client.conn->is_open());
  loop.stop();
}

TEST(Transport, ClosesAPeerThatNeverAuthenticates) {
  auto cfg = config_with("k");
  cfg.handshake_timeout = 200ms;
  echo_server server{cfg};
  const int fd = raw_connect(server.listener->port());
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_TRUE(closed_by_server(fd));
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 5s);
  ::close(fd);
}

TEST(Transport, TruncatedFrameThenEofClosesCleanly) {
  echo_server server{config_with("k")};
  const int fd = raw_connect(server.listener->port());
  const std::uint32_t partial[] = {0, 100, 1};  // announces 100 words, sends 4 bytes
  ASSERT_EQ(::send(fd, partial, sizeof partial, 0), static_cast<ssize_t>(sizeof partial));
  ::shutdown(fd, SHUT_WR);
  EXPECT_TRUE(closed_by_server(fd));
  ::close(fd);
}

TEST(Transport, HoldsUnauthenticatedPeersToSmallFrames) {
  echo_server server{config_with("k")};
  const int fd = raw_connect(server.listener->port());
  const std::uint32_t table[] = {0, 1024};  // 8 KiB announced before any handshake
  ASSERT_EQ(::send(fd, table, sizeof table, 0), static_cast<ssize_t>(sizeof table));
  EXPECT_TRUE(closed_by_server(fd));
  ::close(fd);
}

TEST(Transport, DisconnectsAPeerThatStopsReadingInsteadOfBufferingWithoutBound) {
  auto cfg = config_with("k");
  cfg.max_queued_bytes = 1 << 20;
  echo_server server{cfg};
  auto client_loop = std::make_unique<net::event_loop>();
  client_loop->start();
  auto c = net::connect_blocking(*client_loop, server.address(), Role::PEER, config_with("k"));
  ASSERT_TRUE(c) << c.error().to_string();
  ASSERT_TRUE(server.wait_conns(1));
  client_loop->stop();  // the client process "hangs": nothing reads its socket any more
  std::shared_ptr<net::connection> conn;
  {
    std::lock_guard lock{server.mutex};
    conn = server.conns.at(0);
  }
  std::string blob(4096, 'x');
  for (int i = 0; i < 20000 && conn->is_open(); ++i) {
    capnp::MallocMessageBuilder msg;
    wire::start_envelope(msg).getBody().initReject().setReason(blob);
    conn->send(msg);
  }
  ASSERT_TRUE(server.wait_closes(1));
  std::lock_guard lock{server.mutex};
  EXPECT_EQ(server.closes.at(0).kind(), errc::overloaded) << server.closes.at(0).to_string();
}

}  // namespace
