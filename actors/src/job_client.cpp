#include "flexsp/actors/job_client.hpp"

#include "flexsp/actors/local_cluster.hpp"

#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <map>
#include <mutex>
#include <sstream>
#include <algorithm>
#include <thread>

#include <nlohmann/json.hpp>

#include "flexsp/actors/client.hpp"

namespace flexsp::actors {

struct job_update_box {
  std::mutex mutex;
  std::condition_variable arrived;
  std::map<std::string, std::deque<job_update>> updates;

  std::vector<job_update> take(const std::string& id, std::chrono::milliseconds timeout) {
    std::unique_lock lock{mutex};
    arrived.wait_for(lock, timeout, [&]() { return !updates[id].empty(); });
    auto& q = updates[id];
    std::vector<job_update> out{std::make_move_iterator(q.begin()), std::make_move_iterator(q.end())};
    q.clear();
    return out;
  }
};

void update_sink::handle(job_update m) {
  {
    std::lock_guard lock{box_->mutex};
    box_->updates[m.id].push_back(std::move(m));
  }
  box_->arrived.notify_all();
}

template <class M>
auto job_client::ask_jobs(M m) const {
  return jobs_.ask(std::move(m), request_timeout).get();
}

expected<std::shared_ptr<job_client>> job_client::connect(const std::string& address, net::transport_config transport) {
  FLEXSP_TRY_ASSIGN(auto head, net::endpoint::parse(address));
  std::shared_ptr<job_client> c{new job_client{}};
  c->loop_ = std::make_unique<net::event_loop>();
  c->loop_->start();
  actor_host_config hc;
  hc.transport = transport;
  // The head pushes job updates to this host: listen where it can reach us.
  if (net::is_loopback(head.host)) {
    hc.bind = net::endpoint{"127.0.0.1", 0};
  } else {
    hc.bind = net::endpoint{"0.0.0.0", 0};
    FLEXSP_TRY_ASSIGN(hc.advertise_host, net::local_address_towards(head));
  }
  FLEXSP_TRY_ASSIGN(c->host_, actor_host::start(*c->loop_, hc));
  c->system_ = std::make_unique<core::actor_system>(core::actor_system_config{.workers = 1});
  c->updates_ = std::make_shared<job_update_box>();
  c->sink_ = c->system_->spawn<update_sink>(c->updates_);
  c->sink_id_ = c->host_->publish(c->sink_);
  c->head_address_ = head.to_string();
  c->jobs_ = c->host_->proxy<jobs_actor>(remote_address{head.to_string(), jobs_actor_id});
  // Fail now, with the reason, when the head cannot be reached or serves no job API.
  if (auto probe = c->jobs_.ask(list_jobs{}, c->request_timeout).get(); !probe)
    return make_error(probe.error().kind(), "the head at {} does not answer job requests: {}", address,
                      probe.error().message());
  return c;
}

expected<std::shared_ptr<job_client>> job_client::connect(const std::string& address) {
  FLEXSP_TRY_ASSIGN(const std::string resolved, resolve_head_address(address));
  net::transport_config t;
  FLEXSP_TRY_ASSIGN(t.secret, resolve_cluster_secret("", resolved));
  return connect(resolved, t);
}

std::string job_info_to_json(const job_info& i) {
  nlohmann::json j{{"id", i.id},
                   {"name", i.name},
                   {"state", std::string{to_string(i.state)}},
                   {"steps_done", i.steps_done},
                   {"steps_total", i.steps_total},
                   {"devices", i.devices},
                   {"first_loss", i.first_loss},
                   {"last_loss", i.last_loss},
                   {"resumed_from", i.resumed_from},
                   {"error", i.error},
                   {"final_checksum", i.final_checksum}};
  if (!i.calibration.empty()) j["calibration"] = nlohmann::json::parse(i.calibration, nullptr, false);
  return j.dump();
}

job_client::~job_client() {
  if (host_) host_->stop();
  if (system_) system_->shutdown();
  if (loop_) loop_->stop();
}

expected<job_handle> job_client::submit(const job_spec& spec) {
  FLEXSP_TRY(validate_job_spec(spec));
  return submit_json(job_spec_to_json(spec));
}

expected<job_handle> job_client::submit_json(const std::string& spec_json) {
  // The job runs elsewhere: a relative checkpoint directory means one relative to us.
  std::string text = spec_json;
  auto j = nlohmann::json::parse(spec_json, nullptr, /*allow_exceptions=*/false);
  if (j.is_object() && j.contains("checkpoint") && j["checkpoint"].is_object() && j["checkpoint"].contains("dir") &&
      j["checkpoint"]["dir"].is_string()) {
    const std::filesystem::path dir = j["checkpoint"]["dir"].get<std::string>();
    if (!dir.empty() && dir.is_relative() && dir != "none") {  // "none": no checkpoints, not a path
      j["checkpoint"]["dir"] = std::filesystem::absolute(dir).string();
      text = j.dump();
    }
  }
  // So do relative paths of the data.
  if (j.is_object() && j.contains("data") && j["data"].is_object()) {
    auto absolute = [&](nlohmann::json& v) {
      if (!v.is_string()) return;
      const std::filesystem::path p = v.get<std::string>();
      if (!p.empty() && p.is_relative()) {
        v = std::filesystem::absolute(p).string();
        text.clear();
      }
    };
    auto& d = j["data"];
    for (const char* key : {"path", "prepared"})
      if (d.contains(key)) absolute(d[key]);
    if (d.contains("mixture") && d["mixture"].is_array())
      for (auto& m : d["mixture"])
        if (m.is_object() && m.contains("prepared")) absolute(m["prepared"]);
    if (text.empty()) text = j.dump();
  }
  FLEXSP_TRY_ASSIGN(auto info, ask_jobs(submit_job{text}));
  return job_handle{shared_from_this(), info.id};
}

expected<job_handle> job_client::attach(const std::string& id) {
  FLEXSP_TRY(query(id, ~std::uint64_t{0}, false));
  return job_handle{shared_from_this(), id};
}

expected<job_info> job_client::query(const std::string& id, std::uint64_t metrics_from, bool with_logs) {
  return ask_jobs(query_job{id, metrics_from, with_logs});
}

expected<void> job_client::cancel(const std::string& id) {
  FLEXSP_TRY(ask_jobs(cancel_job{id}));
  return {};
}

expected<void> job_client::watch(const std::string& id) {
  FLEXSP_TRY(ask_jobs(watch_job{id, host_->address(), sink_id_}));
  return {};
}

std::vector<job_update> job_client::take_updates(const std::string& id, std::chrono::milliseconds timeout) {
  return updates_->take(id, timeout);
}

expected<std::vector<job_info>> job_client::list() {
  FLEXSP_TRY_ASSIGN(auto l, ask_jobs(list_jobs{}));
  return l.jobs;
}

expected<job_info> job_handle::status(bool with_logs) const { return client_->query(id_, ~std::uint64_t{0}, with_logs); }

expected<void> job_handle::cancel() const { return client_->cancel(id_); }

expected<job_info> job_handle::wait(metrics_fn on_metrics) {
  // Pushed updates deliver steps as they commit; a query fills any gap, finds the end and is
  // the fallback when the head cannot push (an older head, or no route back to this client).
  bool pushed = static_cast<bool>(client_->watch(id_));
  std::chrono::steady_clock::time_point unreachable_since{};
  auto catch_up = [&]() -> expected<job_info> {
    for (;;) {
      auto info = client_->query(id_, delivered_, false);
      if (info) {
        if (unreachable_since != std::chrono::steady_clock::time_point{}) {
          unreachable_since = {};
          pushed = static_cast<bool>(client_->watch(id_));  // the head may have lost our watch
        }
        for (const auto& m : info->metrics) {
          if (on_metrics) on_metrics(m);
          ++delivered_;
        }
        return info;
      }
      const auto kind = info.error().kind();
      if (kind != errc::disconnected && kind != errc::timeout) return info;
      // The head is unreachable: keep knocking (the next request reconnects) for a while.
      const auto now = std::chrono::steady_clock::now();
      if (unreachable_since == std::chrono::steady_clock::time_point{}) unreachable_since = now;
      if (now - unreachable_since > client_->head_wait)
        return make_error(errc::disconnected,
                          "the head at {} is gone: unreachable for {} s while waiting for job {} ({}); the job's "
                          "state is unknown",
                          client_->head_address(),
                          std::chrono::duration_cast<std::chrono::seconds>(client_->head_wait).count(), id_,
                          info.error().message());
      std::this_thread::sleep_for(std::min(client_->poll_interval, std::chrono::milliseconds{500}));
    }
  };
  for (;;) {
    FLEXSP_TRY_ASSIGN(auto info, catch_up());
    if (terminal(info)) return info;
    if (!pushed) {
      std::this_thread::sleep_for(client_->poll_interval);
      continue;
    }
    // Deliver pushed lines while they come in order; anything else goes back to a query.
    for (;;) {
      const auto updates = client_->take_updates(id_, client_->poll_interval);
      bool query = updates.empty();
      for (const auto& u : updates) {
        if (is_terminal(u.state) || u.index > delivered_) {
          query = true;  // the end, or a gap
        } else if (u.index == delivered_) {
          if (on_metrics) on_metrics(u.metrics);
          ++delivered_;
        }
      }
      if (query) break;
    }
  }
}

}  // namespace flexsp::actors
