// The Redis kind of state store (hiredis, synchronous): tables are hashes `NS:t:TABLE`, lists
// are lists `NS:l:LIST`. One connection, used under a lock; a broken connection is opened
// again by the next command (once per command).
#include <hiredis/hiredis.h>

#include <charconv>
#include <mutex>
#include <vector>

#include "state_store_impl.hpp"

namespace flexsp::actors {

namespace {

struct reply_deleter {
  void operator()(redisReply* r) const { freeReplyObject(r); }
};
using reply_ptr = std::unique_ptr<redisReply, reply_deleter>;
struct context_deleter {
  void operator()(redisContext* c) const { redisFree(c); }
};

class redis_state_store final : public state_store {
public:
  redis_state_store(std::string host, int port, std::string ns)
      : host_{std::move(host)}, port_{port}, ns_{std::move(ns)} {}

  expected<void> connect() {
    std::lock_guard lock{mutex_};
    return reconnect();
  }

  std::string describe() const override { return fmt::format("redis {}:{} namespace '{}'", host_, port_, ns_); }

  expected<void> put(std::string_view t, std::string_view k, std::string_view v) override {
    FLEXSP_TRY(command({"HSET", table_key(t), k, v}));
    return {};
  }
  expected<void> erase(std::string_view t, std::string_view k) override {
    FLEXSP_TRY(command({"HDEL", table_key(t), k}));
    return {};
  }
  expected<void> clear(std::string_view t) override {
    FLEXSP_TRY(command({"DEL", table_key(t)}));
    return {};
  }
  expected<std::map<std::string, std::string>> entries(std::string_view t) override {
    FLEXSP_TRY_ASSIGN(auto r, command({"HGETALL", table_key(t)}));
    std::map<std::string, std::string> out;
    if (r->type != REDIS_REPLY_ARRAY) return out;
    for (std::size_t i = 0; i + 1 < r->elements; i += 2)
      out.emplace(std::string{r->element[i]->str, r->element[i]->len},
                  std::string{r->element[i + 1]->str, r->element[i + 1]->len});
    return out;
  }
  expected<void> append(std::string_view l, std::string_view v) override {
    FLEXSP_TRY(command({"RPUSH", list_key(l), v}));
    return {};
  }
  expected<std::vector<std::string>> items(std::string_view l) override {
    FLEXSP_TRY_ASSIGN(auto r, command({"LRANGE", list_key(l), "0", "-1"}));
    std::vector<std::string> out;
    if (r->type != REDIS_REPLY_ARRAY) return out;
    for (std::size_t i = 0; i < r->elements; ++i) out.emplace_back(r->element[i]->str, r->element[i]->len);
    return out;
  }
  expected<void> drop(std::string_view l) override {
    FLEXSP_TRY(command({"DEL", list_key(l)}));
    return {};
  }

private:
  std::string table_key(std::string_view t) const { return fmt::format("{}:t:{}", ns_, t); }
  std::string list_key(std::string_view l) const { return fmt::format("{}:l:{}", ns_, l); }

  expected<void> reconnect() {
    ctx_.reset();
    timeval tv{2, 0};
    ctx_.reset(redisConnectWithTimeout(host_.c_str(), port_, tv));
    if (!ctx_) return make_error(errc::io, "redis {}:{}: cannot allocate a connection", host_, port_);
    if (ctx_->err) {
      auto e = make_error(errc::disconnected, "cannot reach redis at {}:{}: {}", host_, port_, ctx_->errstr);
      ctx_.reset();
      return e;
    }
    timeval op{5, 0};
    redisSetTimeout(ctx_.get(), op);
    return {};
  }

  expected<reply_ptr> command(std::initializer_list<std::string_view> args) {
    std::vector<const char*> argv;
    std::vector<std::size_t> lens;
    for (auto a : args) {
      argv.push_back(a.data());
      lens.push_back(a.size());
    }
    std::lock_guard lock{mutex_};
    std::string last;
    for (int attempt = 0; attempt < 2; ++attempt) {
      if (!ctx_) {
        if (auto c = reconnect(); !c) {
          last = c.error().message();
          continue;
        }
      }
      reply_ptr r{static_cast<redisReply*>(
          redisCommandArgv(ctx_.get(), static_cast<int>(argv.size()), argv.data(), lens.data()))};
      if (!r) {
        last = fmt::format("redis {}:{}: {}", host_, port_, ctx_->errstr);
        ctx_.reset();
        continue;
      }
      if (r->type == REDIS_REPLY_ERROR)
        return make_error(errc::failed, "redis {}:{} refused {}: {}", host_, port_, *args.begin(),
                          std::string{r->str, r->len});
      return r;
    }
    return make_error(errc::disconnected, "{}", last);
  }

  std::string host_;
  int port_;
  std::string ns_;
  std::mutex mutex_;
  std::unique_ptr<redisContext, context_deleter> ctx_;
};

}  // namespace

expected<std::shared_ptr<state_store>> open_redis_state_store(std::string_view url) {
  auto rest = url.substr(std::string_view{"redis://"}.size());
  std::string ns = "flexsp";
  if (const auto slash = rest.find('/'); slash != std::string_view::npos) {
    if (slash + 1 < rest.size()) ns = std::string{rest.substr(slash + 1)};
    rest = rest.substr(0, slash);
  }
  const auto colon = rest.rfind(':');
  std::string host{rest.substr(0, colon)};
  int port = 6379;
  if (colon != std::string_view::npos) {
    const auto p = rest.substr(colon + 1);
    const auto [end, ec] = std::from_chars(p.data(), p.data() + p.size(), port);
    if (ec != std::errc{} || end != p.data() + p.size() || port <= 0 || port > 65535)
      return make_error(errc::invalid_argument, "state store '{}': bad port '{}'", url, p);
  }
  if (host.empty()) return make_error(errc::invalid_argument, "state store '{}': no host", url);
  auto s = std::make_shared<redis_state_store>(std::move(host), port, std::move(ns));
  FLEXSP_TRY(s->connect());
  return std::shared_ptr<state_store>{std::move(s)};
}

}  // namespace flexsp::actors
