#include "flexsp/core/net/transport.hpp"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <atomic>
#include <deque>
#include <future>
#include <mutex>
#include <thread>
#include <unordered_map>

#include <asio.hpp>
#include <kj/exception.h>

#include "flexsp/core/check.hpp"
#include "flexsp/core/log.hpp"
#include "flexsp/core/wire/hmac.hpp"

namespace flexsp::net {

using wire::schema::Role;

// ---------------------------------------------------------------------------------------------
// endpoint, config, backoff

expected<endpoint> endpoint::parse(std::string_view text) {
  const auto colon = text.rfind(':');
  if (colon == std::string_view::npos || colon == 0 || colon + 1 == text.size())
    return make_error(errc::invalid_argument, "address '{}' is not of the form HOST:PORT", text);
  std::string_view host = text.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  unsigned port = 0;
  for (char c : text.substr(colon + 1)) {
    if (c < '0' || c > '9' || port > 65535)
      return make_error(errc::invalid_argument, "address '{}': port '{}' is not a number in 0..65535", text,
                        text.substr(colon + 1));
    port = port * 10 + static_cast<unsigned>(c - '0');
  }
  if (port > 65535) return make_error(errc::invalid_argument, "address '{}': port {} is above 65535", text, port);
  return endpoint{std::string{host}, static_cast<std::uint16_t>(port)};
}

std::string endpoint::to_string() const {
  if (host.find(':') != std::string::npos) return fmt::format("[{}]:{}", host, port);
  return fmt::format("{}:{}", host, port);
}

expected<void> transport_config::validate() const {
  if (secret.empty()) return make_error(errc::invalid_argument, "the cluster secret is empty");
  if (handshake_timeout.count() <= 0) return make_error(errc::invalid_argument, "handshake_timeout must be positive");
  return limits.validate();
}

std::chrono::milliseconds backoff::next() {
  current = current.count() == 0 ? initial : std::min(max, current * 2);
  return current;
}

// ---------------------------------------------------------------------------------------------
// event_loop

struct event_loop::impl {
  asio::io_context io{1};
  asio::executor_work_guard<asio::io_context::executor_type> guard{io.get_executor()};
  std::thread thread;
  std::atomic<std::thread::id> loop_thread{};
  std::mutex timer_mutex;
  std::uint64_t next_timer = 1;
  std::unordered_map<std::uint64_t, std::shared_ptr<asio::steady_timer>> timers;
  std::mutex stop_mutex;
};

event_loop::event_loop() : impl_{std::make_unique<impl>()} {}

event_loop::~event_loop() { stop(); }

void event_loop::start() {
  impl_->thread = std::thread{[this]() {
    impl_->loop_thread = std::this_thread::get_id();
    impl_->io.run();
  }};
}

void event_loop::run() {
  impl_->loop_thread = std::this_thread::get_id();
  impl_->io.run();
}

void event_loop::stop() {
  std::lock_guard lock{impl_->stop_mutex};
  impl_->guard.reset();
  impl_->io.stop();
  if (impl_->thread.joinable() && impl_->thread.get_id() != std::this_thread::get_id()) impl_->thread.join();
}

void event_loop::post(std::function<void()> fn) { asio::post(impl_->io, std::move(fn)); }

bool event_loop::in_loop_thread() const { return impl_->loop_thread.load() == std::this_thread::get_id(); }

std::uint64_t event_loop::schedule(std::chrono::milliseconds delay, std::function<void()> fn) {
  auto timer = std::make_shared<asio::steady_timer>(impl_->io, delay);
  std::lock_guard lock{impl_->timer_mutex};
  const std::uint64_t id = impl_->next_timer++;
  impl_->timers.emplace(id, timer);
  timer->async_wait([this, id, fn = std::move(fn)](const std::error_code& ec) {
    {
      std::lock_guard lock{impl_->timer_mutex};
      impl_->timers.erase(id);
    }
    if (!ec) fn();
  });
  return id;
}

void event_loop::cancel(std::uint64_t timer_id) {
  std::shared_ptr<asio::steady_timer> timer;
  {
    std::lock_guard lock{impl_->timer_mutex};
    auto it = impl_->timers.find(timer_id);
    if (it == impl_->timers.end()) return;
    timer = std::move(it->second);
    impl_->timers.erase(it);
  }
  // steady_timer is not thread-safe: cancel it where its handlers run.
  if (in_loop_thread()) {
    timer->cancel();
  } else {
    asio::post(impl_->io, [timer]() { timer->cancel(); });
  }
}

// ---------------------------------------------------------------------------------------------
// tcp_connection

namespace {

std::atomic<std::uint64_t> g_next_connection_id{1};
constexpr std::size_t kNonceBytes = 32;
constexpr std::string_view kClientLabel = "flexsp-auth-c";
constexpr std::string_view kServerLabel = "flexsp-auth-s";

std::span<const std::uint8_t> bytes_of(std::string_view s) {
  return {reinterpret_cast<const std::uint8_t*>(s.data()), s.size()};
}
std::span<const std::uint8_t> bytes_of(capnp::Data::Reader d) { return {d.begin(), d.size()}; }

wire::digest auth_mac(const std::vector<std::uint8_t>& secret, std::string_view label,
                      std::span<const std::uint8_t> first, std::span<const std::uint8_t> second) {
  const std::array<std::span<const std::uint8_t>, 3> parts{bytes_of(label), first, second};
  return wire::hmac_sha256(secret, parts);
}

const char* role_name(Role r) {
  switch (r) {
    case Role::NODE: return "node";
    case Role::CLIENT: return "client";
    case Role::PEER: return "peer";
  }
  return "unknown";
}

wire::frame_limits handshake_limits(const transport_config& c) {
  wire::frame_limits l = c.limits;
  l.max_frame_bytes = std::min(l.max_frame_bytes, c.max_handshake_frame_bytes);
  return l;
}

class tcp_connection final : public connection {
public:
  enum class state { server_handshake, client_handshake, authenticated, running, closing, closed };

  tcp_connection(event_loop& loop, asio::ip::tcp::socket socket, transport_config config, Role role)
      : loop_{loop},
        socket_{std::move(socket)},
        config_{std::move(config)},
        decoder_{handshake_limits(config_)},
        role_{role},
        id_{g_next_connection_id++} {
    std::error_code ec;
    auto ep = socket_.remote_endpoint(ec);
    peer_ = ec ? std::string{"?"} : fmt::format("{}:{}", ep.address().to_string(), ep.port());
    socket_.set_option(asio::ip::tcp::no_delay{true}, ec);
  }

  // -- connection -----------------------------------------------------------------------------
  void start(message_handler on_message, close_handler on_close) override {
    auto self = shared_from_this();
    loop_.post([self, this, on_message = std::move(on_message), on_close = std::move(on_close)]() mutable {
      on_message_ = std::move(on_message);
      on_close_ = std::move(on_close);
      if (state_ != state::authenticated) {
        if (state_ == state::closed && on_close_) {
          auto cb = std::move(on_close_);
          cb(*this, close_reason_.value_or(error{errc::disconnected, "connection closed"}));
        }
        return;
      }
      state_ = state::running;
      process_frames();
      if (state_ == state::running && !reading_) read();
    });
  }

  void send(capnp::MessageBuilder& message) override { enqueue(wire::encode_frame(message)); }

  void close(error reason) override {
    auto self = shared_from_this();
    if (loop_.in_loop_thread()) {
      begin_close(std::move(reason), true);
    } else {
      loop_.post([self, this, reason = std::move(reason)]() mutable { begin_close(std::move(reason), true); });
    }
  }

  void abort(error reason) override {
    auto self = shared_from_this();
    if (loop_.in_loop_thread()) {
      begin_close(std::move(reason), false);
    } else {
      loop_.post([self, this, reason = std::move(reason)]() mutable { begin_close(std::move(reason), false); });
    }
  }

  bool is_open() const override { return open_.load(); }
  const std::string& peer() const override { return peer_; }
  Role role() const override { return role_; }
  std::uint64_t id() const override { return id_; }

  // -- handshake ------------------------------------------------------------------------------
  using ready_handler = std::function<void(expected<std::shared_ptr<connection>>)>;

  /// Acceptor side. `ready` runs once the peer authenticated (or never, on failure: then the
  /// connection just closes with a logged reason).
  void begin_server(ready_handler ready) {
    state_ = state::server_handshake;
    ready_ = std::move(ready);
    if (auto r = wire::random_bytes(server_nonce_); !r) {
      begin_close(r.error(), false);
      return;
    }
    capnp::MallocMessageBuilder msg{64};
    auto env = wire::start_envelope(msg);
    env.getBody().initChallenge().setNonce(kj::arrayPtr(server_nonce_.data(), server_nonce_.size()));
    enqueue(wire::encode_frame(msg));
    arm_handshake_timer();
    read();
  }

  /// Connector side. `ready` runs exactly once with the connection or the error.
  void begin_client(ready_handler ready) {
    state_ = state::client_handshake;
    ready_ = std::move(ready);
    arm_handshake_timer();
    read();
  }

private:
  void arm_handshake_timer() {
    std::weak_ptr<connection> weak = shared_from_this();
    handshake_timer_ = loop_.schedule(config_.handshake_timeout, [weak, this]() {
      auto self = weak.lock();
      if (!self) return;
      handshake_timer_ = 0;
      if (state_ == state::server_handshake || state_ == state::client_handshake)
        begin_close(error{errc::timeout, fmt::format("no handshake within {} ms", config_.handshake_timeout.count())},
                    false);
    });
  }

  void enqueue(kj::Array<capnp::word> frame) {
    {
      std::lock_guard lock{queue_mutex_};
      if (!accepting_sends_) return;
      queued_bytes_ += frame.size() * sizeof(capnp::word);
      if (queued_bytes_ > config_.max_queued_bytes) {
        accepting_sends_ = false;
        queued_.clear();
        auto self = shared_from_this();
        const std::size_t limit = config_.max_queued_bytes;
        loop_.post([self, this, limit]() {
          log::get("net")->warn("closing connection {} to {}: it stopped reading ({} bytes queued)", id_, peer_, limit);
          begin_close(error{errc::overloaded, fmt::format("{} stopped reading: more than {} bytes queued", peer_, limit)},
                      false);
        });
        return;
      }
      queued_.push_back(std::move(frame));
      if (write_pending_) return;
      write_pending_ = true;
    }
    if (loop_.in_loop_thread()) {
      flush();
    } else {
      auto self = shared_from_this();
      loop_.post([self, this]() { flush(); });
    }
  }

  void flush() {
    if (state_ == state::closed) return;
    {
      std::lock_guard lock{queue_mutex_};
      for (const auto& f : in_flight_) queued_bytes_ -= f.size() * sizeof(capnp::word);
      in_flight_.clear();
      while (!queued_.empty()) {
        in_flight_.push_back(std::move(queued_.front()));
        queued_.pop_front();
      }
      if (in_flight_.empty()) {
        write_pending_ = false;
        if (state_ == state::closing) finish_close();
        return;
      }
    }
    buffers_.clear();
    for (const auto& f : in_flight_) buffers_.emplace_back(f.begin(), f.size() * sizeof(capnp::word));
    auto self = shared_from_this();
    asio::async_write(socket_, buffers_, [self, this](const std::error_code& ec, std::size_t) {
      if (ec) {
        {
          std::lock_guard lock{queue_mutex_};
          write_pending_ = false;
        }
        if (state_ != state::closed)
          begin_close(error{errc::disconnected, fmt::format("write to {} failed: {}", peer_, ec.message())}, false);
        return;
      }
      flush();
    });
  }

  void read() {
    if (state_ == state::closed || state_ == state::closing) return;
    reading_ = true;
    auto self = shared_from_this();
    socket_.async_read_some(asio::buffer(read_buf_), [self, this](const std::error_code& ec, std::size_t n) {
      reading_ = false;
      if (state_ == state::closed || state_ == state::closing) return;
      if (ec) {
        if (ec == asio::error::eof || ec == asio::error::connection_reset)
          begin_close(error{errc::disconnected, fmt::format("{} closed the connection", peer_)}, false);
        else
          begin_close(error{errc::disconnected, fmt::format("read from {} failed: {}", peer_, ec.message())}, false);
        return;
      }
      if (auto r = decoder_.feed(std::as_bytes(std::span{read_buf_.data(), n})); !r) {
        protocol_close(r.error());
        return;
      }
      process_frames();
      if (state_ != state::closed && state_ != state::closing && state_ != state::authenticated) read();
    });
  }

  void protocol_close(const error& e) {
    log::get("net")->warn("closing connection {} from {}: {}", id_, peer_, e.message());
    begin_close(e, false);
  }

  void process_frames() {
    while (state_ == state::server_handshake || state_ == state::client_handshake || state_ == state::running) {
      auto f = decoder_.next();
      if (!f) return;
      try {
        wire::inbound_message msg{std::move(*f), config_.limits};
        auto env = wire::open_envelope(msg);
        if (!env) {
          protocol_close(env.error());
          return;
        }
        switch (state_) {
          case state::server_handshake: on_server_handshake(*env); break;
          case state::client_handshake: on_client_handshake(*env); break;
          case state::running:
            if (on_message_) on_message_(*this, *env);
            break;
          default: return;
        }
      } catch (const kj::Exception& e) {
        protocol_close(error{errc::protocol, fmt::format("malformed frame: {}", e.getDescription().cStr())});
        return;
      } catch (const std::exception& e) {
        log::get("net")->error("closing connection {} from {}: handler failed: {}", id_, peer_, e.what());
        begin_close(error{errc::failed, fmt::format("handler failed: {}", e.what())}, false);
        return;
      }
    }
  }

  void reject(std::string reason) {
    log::get("net")->warn("rejected connection {} from {}: {}", id_, peer_, reason);
    capnp::MallocMessageBuilder msg{64};
    wire::start_envelope(msg).getBody().initReject().setReason(reason);
    enqueue(wire::encode_frame(msg));
    begin_close(error{errc::failed, std::move(reason)}, true);
  }

  void on_server_handshake(wire::envelope_reader env) {
    if (env.getBody().which() != wire::body_kind::AUTH) {
      reject(fmt::format("expected auth, got {}", wire::body_name(env.getBody().which())));
      return;
    }
    auto auth = env.getBody().getAuth();
    const auto role = auth.getRole();
    if (static_cast<unsigned>(role) > static_cast<unsigned>(Role::PEER)) {
      reject(fmt::format("unknown role {}", static_cast<unsigned>(role)));
      return;
    }
    role_ = role;
    auto client_nonce = auth.getNonce();
    if (client_nonce.size() != kNonceBytes) {
      reject(fmt::format("authentication failed: client nonce has {} bytes, expected {}", client_nonce.size(),
                         kNonceBytes));
      return;
    }
    const auto expected_mac = auth_mac(config_.secret, kClientLabel, server_nonce_, bytes_of(client_nonce));
    if (!wire::constant_time_equal(expected_mac, bytes_of(auth.getMac()))) {
      reject(fmt::format("authentication failed for a {} (wrong or missing cluster secret)", role_name(role)));
      return;
    }
    const auto server_mac = auth_mac(config_.secret, kServerLabel, bytes_of(client_nonce), server_nonce_);
    capnp::MallocMessageBuilder msg{64};
    wire::start_envelope(msg).getBody().initWelcome().setMac(kj::arrayPtr(server_mac.data(), server_mac.size()));
    enqueue(wire::encode_frame(msg));
    authenticated();
  }

  void on_client_handshake(wire::envelope_reader env) {
    const auto kind = env.getBody().which();
    if (kind == wire::body_kind::REJECT) {
      auto reason = std::string{env.getBody().getReject().getReason().cStr()};
      fail_client(error{errc::failed, fmt::format("{} rejected the connection: {}", peer_, reason)});
      return;
    }
    if (kind == wire::body_kind::CHALLENGE && !challenged_) {
      challenged_ = true;
      auto server_nonce = env.getBody().getChallenge().getNonce();
      if (server_nonce.size() != kNonceBytes) {
        fail_client(error{errc::protocol, fmt::format("{} sent a challenge of {} bytes", peer_, server_nonce.size())});
        return;
      }
      std::memcpy(server_nonce_.data(), server_nonce.begin(), kNonceBytes);
      if (auto r = wire::random_bytes(client_nonce_); !r) {
        fail_client(r.error());
        return;
      }
      const auto mac = auth_mac(config_.secret, kClientLabel, server_nonce_, client_nonce_);
      capnp::MallocMessageBuilder msg{64};
      auto auth = wire::start_envelope(msg).getBody().initAuth();
      auth.setRole(role_);
      auth.setNonce(kj::arrayPtr(client_nonce_.data(), client_nonce_.size()));
      auth.setMac(kj::arrayPtr(mac.data(), mac.size()));
      enqueue(wire::encode_frame(msg));
      return;
    }
    if (kind == wire::body_kind::WELCOME && challenged_) {
      const auto expected_mac = auth_mac(config_.secret, kServerLabel, client_nonce_, server_nonce_);
      if (!wire::constant_time_equal(expected_mac, bytes_of(env.getBody().getWelcome().getMac()))) {
        fail_client(error{errc::failed, fmt::format("{} did not prove knowledge of the cluster secret", peer_)});
        return;
      }
      authenticated();
      return;
    }
    fail_client(error{errc::protocol, fmt::format("unexpected {} during the handshake", wire::body_name(kind))});
  }

  void fail_client(error e) {
    log::get("net")->warn("connection {} to {}: {}", id_, peer_, e.message());
    begin_close(std::move(e), false);
  }

  void authenticated() {
    decoder_.set_max_frame_bytes(config_.limits.max_frame_bytes);
    if (handshake_timer_) loop_.cancel(handshake_timer_);
    handshake_timer_ = 0;
    state_ = state::authenticated;
    auto ready = std::move(ready_);
    ready_ = nullptr;
    if (ready) ready(std::static_pointer_cast<connection>(shared_from_this()));
  }

  void begin_close(error reason, bool graceful) {
    if (state_ == state::closed || state_ == state::closing) {
      if (state_ == state::closing && !graceful) finish_close();
      return;
    }
    if (handshake_timer_) loop_.cancel(handshake_timer_);
    handshake_timer_ = 0;
    close_reason_ = std::move(reason);
    open_ = false;
    bool idle;
    {
      std::lock_guard lock{queue_mutex_};
      accepting_sends_ = false;
      if (!graceful) queued_.clear();
      idle = !write_pending_;
    }
    state_ = state::closing;
    std::error_code ec;
    socket_.shutdown(asio::ip::tcp::socket::shutdown_receive, ec);
    if (!graceful || idle) {
      finish_close();
    } else {
      // Bound the time a peer that stopped reading can hold a closing connection open.
      std::weak_ptr<connection> weak = shared_from_this();
      loop_.schedule(std::chrono::milliseconds{2000}, [weak, this]() {
        if (auto self = weak.lock()) finish_close();
      });
    }
  }

  void finish_close() {
    if (state_ == state::closed) return;
    state_ = state::closed;
    std::error_code ec;
    socket_.shutdown(asio::ip::tcp::socket::shutdown_both, ec);
    socket_.close(ec);
    const error reason = close_reason_.value_or(error{errc::disconnected, "connection closed"});
    if (ready_) {
      auto ready = std::move(ready_);
      ready_ = nullptr;
      ready(unexpected<error>{reason});
    }
    if (on_close_) {
      auto cb = std::move(on_close_);
      on_close_ = nullptr;
      on_message_ = nullptr;
      cb(*this, reason);
    }
  }

  event_loop& loop_;
  asio::ip::tcp::socket socket_;
  transport_config config_;
  wire::frame_decoder decoder_;
  Role role_;
  std::uint64_t id_;
  std::string peer_;
  state state_ = state::authenticated;
  std::atomic<bool> open_{true};
  bool reading_ = false;
  bool challenged_ = false;
  std::uint64_t handshake_timer_ = 0;
  std::array<std::uint8_t, kNonceBytes> server_nonce_{};
  std::array<std::uint8_t, kNonceBytes> client_nonce_{};
  std::optional<error> close_reason_;
  ready_handler ready_;
  message_handler on_message_;
  close_handler on_close_;
  std::array<std::byte, 64 * 1024> read_buf_;

  std::mutex queue_mutex_;
  std::deque<kj::Array<capnp::word>> queued_;
  bool write_pending_ = false;
  bool accepting_sends_ = true;
  std::size_t queued_bytes_ = 0;  // queued plus in flight
  std::vector<kj::Array<capnp::word>> in_flight_;
  std::vector<asio::const_buffer> buffers_;
};

// ---------------------------------------------------------------------------------------------
// listener

class tcp_listener final : public listener, public std::enable_shared_from_this<tcp_listener> {
public:
  tcp_listener(event_loop& loop, transport_config config, accept_handler on_accept)
      : loop_{loop}, acceptor_{loop.internals().io}, config_{std::move(config)}, on_accept_{std::move(on_accept)} {}

  expected<void> bind(const endpoint& at) {
    std::error_code ec;
    auto address = asio::ip::make_address(at.host == "localhost" ? "127.0.0.1" : at.host, ec);
    if (ec) return make_error(errc::invalid_argument, "bind address '{}' is not an IP address", at.host);
    asio::ip::tcp::endpoint ep{address, at.port};
    acceptor_.open(ep.protocol(), ec);
    if (!ec) acceptor_.set_option(asio::ip::tcp::acceptor::reuse_address(true), ec);
    if (!ec) acceptor_.bind(ep, ec);
    if (!ec) acceptor_.listen(asio::socket_base::max_listen_connections, ec);
    if (ec) return make_error(errc::io, "cannot listen on {}: {}", at.to_string(), ec.message());
    port_ = acceptor_.local_endpoint(ec).port();
    return {};
  }

  void accept_next(std::shared_ptr<tcp_listener> self) {
    acceptor_.async_accept([self, this](const std::error_code& ec, asio::ip::tcp::socket socket) {
      if (ec == asio::error::operation_aborted || !acceptor_.is_open()) return;
      if (!ec) {
        auto conn = std::make_shared<tcp_connection>(loop_, std::move(socket), config_, Role::CLIENT);
        std::weak_ptr<tcp_listener> weak = self;
        conn->begin_server([weak](expected<std::shared_ptr<connection>> c) {
          auto listener = weak.lock();
          if (listener && c && listener->on_accept_) listener->on_accept_(std::move(*c));
        });
      } else {
        log::get("net")->warn("accept failed: {}", ec.message());
      }
      accept_next(self);
    });
  }

  std::uint16_t port() const override { return port_; }

  void close() override {
    auto self = shared_from_this();
    loop_.post([self, this]() {
      std::error_code ec;
      acceptor_.close(ec);
    });
  }

private:
  event_loop& loop_;
  asio::ip::tcp::acceptor acceptor_;
  transport_config config_;
  accept_handler on_accept_;
  std::uint16_t port_ = 0;
};

// Keeps the shared listener alive for as long as the owner holds the handle.
class listener_handle final : public listener {
public:
  explicit listener_handle(std::shared_ptr<tcp_listener> l) : impl_{std::move(l)} {}
  ~listener_handle() override { impl_->close(); }
  std::uint16_t port() const override { return impl_->port(); }
  void close() override { impl_->close(); }

private:
  std::shared_ptr<tcp_listener> impl_;
};

}  // namespace

expected<std::unique_ptr<listener>> listener::open(event_loop& loop, const endpoint& bind, transport_config config,
                                                   accept_handler on_accept) {
  FLEXSP_TRY(config.validate());
  auto l = std::make_shared<tcp_listener>(loop, std::move(config), std::move(on_accept));
  FLEXSP_TRY(l->bind(bind));
  loop.post([l]() { l->accept_next(l); });
  return std::unique_ptr<listener>{std::make_unique<listener_handle>(l)};
}

// ---------------------------------------------------------------------------------------------
// connect

namespace {
struct connect_op : std::enable_shared_from_this<connect_op> {
  connect_op(event_loop& l, endpoint t, Role r, transport_config c, connect_handler d)
      : loop{l}, to{std::move(t)}, role{r}, config{std::move(c)}, done{std::move(d)},
        resolver{l.internals().io}, socket{l.internals().io} {}

  void finish(expected<std::shared_ptr<connection>> result) {
    if (finished) return;
    finished = true;
    if (timer) loop.cancel(timer);
    auto cb = std::move(done);
    cb(std::move(result));
  }

  void run() {
    auto self = shared_from_this();
    timer = loop.schedule(config.handshake_timeout, [self, this]() {
      timer = 0;
      if (finished) return;
      std::error_code ec;
      socket.close(ec);
      resolver.cancel();
      if (conn) conn->abort(error{errc::timeout, "handshake timed out"});
      finish(make_error(errc::timeout, "no answer from {} within {} ms", to.to_string(),
                        config.handshake_timeout.count()));
    });
    resolver.async_resolve(to.host, std::to_string(to.port),
                           [self, this](const std::error_code& ec, asio::ip::tcp::resolver::results_type results) {
                             if (finished) return;
                             if (ec) {
                               finish(make_error(errc::disconnected, "cannot resolve {}: {}", to.host, ec.message()));
                               return;
                             }
                             asio::async_connect(socket, results,
                                                 [self, this](const std::error_code& ec2, const asio::ip::tcp::endpoint&) {
                                                   on_connected(ec2);
                                                 });
                           });
  }

  void on_connected(const std::error_code& ec) {
    if (finished) return;
    if (ec) {
      finish(make_error(errc::disconnected, "cannot connect to {}: {}", to.to_string(), ec.message()));
      return;
    }
    conn = std::make_shared<tcp_connection>(loop, std::move(socket), config, role);
    auto self = shared_from_this();
    conn->begin_client([self, this](expected<std::shared_ptr<connection>> c) { finish(std::move(c)); });
  }

  event_loop& loop;
  endpoint to;
  Role role;
  transport_config config;
  connect_handler done;
  asio::ip::tcp::resolver resolver;
  asio::ip::tcp::socket socket;
  std::shared_ptr<tcp_connection> conn;
  std::uint64_t timer = 0;
  bool finished = false;
};
}  // namespace

void connect(event_loop& loop, const endpoint& to, Role role, transport_config config, connect_handler done) {
  if (auto v = config.validate(); !v) {
    loop.post([done = std::move(done), e = v.error()]() { done(unexpected<error>{e}); });
    return;
  }
  auto op = std::make_shared<connect_op>(loop, to, role, std::move(config), std::move(done));
  loop.post([op]() { op->run(); });
}

expected<std::shared_ptr<connection>> connect_blocking(event_loop& loop, const endpoint& to, Role role,
                                                       transport_config config) {
  FLEXSP_EXPECTS(!loop.in_loop_thread(), "connect_blocking called on the loop thread");
  auto promise = std::make_shared<std::promise<expected<std::shared_ptr<connection>>>>();
  auto future = promise->get_future();
  connect(loop, to, role, std::move(config),
          [promise](expected<std::shared_ptr<connection>> c) { promise->set_value(std::move(c)); });
  return future.get();
}

// A connected UDP socket sends nothing; getsockname tells which local address routes to `to`.
expected<std::string> local_address_towards(const endpoint& to) {
  addrinfo hints{};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_DGRAM;
  addrinfo* res = nullptr;
  if (::getaddrinfo(to.host.c_str(), std::to_string(to.port).c_str(), &hints, &res) != 0 || !res)
    return make_error(errc::invalid_argument, "cannot resolve {}", to.host);
  const int fd = ::socket(AF_INET, SOCK_DGRAM, 0);
  const int rc = fd < 0 ? -1 : ::connect(fd, res->ai_addr, res->ai_addrlen);
  ::freeaddrinfo(res);
  sockaddr_in local{};
  socklen_t len = sizeof local;
  const bool ok = rc == 0 && ::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len) == 0;
  if (fd >= 0) ::close(fd);
  if (!ok) return make_error(errc::io, "cannot find a local address that reaches {}", to.to_string());
  char buf[INET_ADDRSTRLEN];
  ::inet_ntop(AF_INET, &local.sin_addr, buf, sizeof buf);
  return std::string{buf};
}

expected<std::string> primary_address() {
  ifaddrs* list = nullptr;
  if (::getifaddrs(&list) != 0) return make_error(errc::io, "cannot list this machine's addresses: {}", std::strerror(errno));
  std::string found;
  for (const ifaddrs* a = list; a != nullptr && found.empty(); a = a->ifa_next) {
    if (a->ifa_addr == nullptr || a->ifa_addr->sa_family != AF_INET) continue;
    if (!(a->ifa_flags & IFF_UP) || (a->ifa_flags & IFF_LOOPBACK)) continue;
    char buf[INET_ADDRSTRLEN];
    ::inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(a->ifa_addr)->sin_addr, buf, sizeof buf);
    found = buf;
  }
  ::freeifaddrs(list);
  if (found.empty()) return make_error(errc::not_found, "this machine has no IPv4 address but loopback");
  return found;
}

bool is_loopback(const std::string& host) noexcept { return host == "localhost" || host.rfind("127.", 0) == 0; }

}  // namespace flexsp::net
