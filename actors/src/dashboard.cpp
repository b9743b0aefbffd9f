#include "flexsp/actors/dashboard.hpp"

#include <httplib.h>

#include <chrono>
#include <future>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "flexsp/actors/head.hpp"
#include "flexsp/actors/job_manager.hpp"
#include "flexsp/core/log.hpp"

namespace flexsp::actors {

namespace {

using json = nlohmann::json;

/// Runs the HTTP server's accept loop (it blocks until the server is stopped).
struct serve {
  std::function<void()> run;
};

}  // namespace

class http_listener : public core::actor<http_listener> {
public:
  using interface = core::interface<serve>;
  void handle(serve s) { s.run(); }
};

namespace {

bool loopback(const std::string& host) { return host == "127.0.0.1" || host == "localhost" || host == "::1"; }

/// A Prometheus label value: backslash, quote and newline escaped.
std::string label(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

json status_json(const job_status& s) {
  return {{"id", s.id},
          {"name", s.name},
          {"state", std::string{to_string(s.state)}},
          {"steps_done", s.steps_done},
          {"steps_total", s.steps_total},
          {"resumed_from", s.resumed_from},
          {"devices", s.devices},
          {"first_loss", s.first_loss},
          {"last_loss", s.last_loss},
          {"aborted_attempts", s.aborted_attempts},
          {"error", s.error}};
}

}  // namespace

std::string prometheus_text(const cluster_status& cluster, const std::vector<job_snapshot>& jobs) {
  std::string out;
  auto family = [&](const char* name, const char* type, const char* help) {
    out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
  };
  std::size_t alive = 0, lost = 0, devices = 0;
  for (const auto& n : cluster.nodes) {
    if (n.state == node_state::alive) {
      ++alive;
      devices += n.devices.size();
    } else {
      ++lost;
    }
  }
  family("flexsp_cluster_epoch", "gauge", "Membership epoch of the cluster.");
  out += fmt::format("flexsp_cluster_epoch {}\n", cluster.epoch);
  family("flexsp_cluster_nodes", "gauge", "Nodes the head knows, by state.");
  out += fmt::format("flexsp_cluster_nodes{{state=\"alive\"}} {}\nflexsp_cluster_nodes{{state=\"dead\"}} {}\n", alive,
                     lost);
  family("flexsp_cluster_devices", "gauge", "Devices on nodes that are alive.");
  out += fmt::format("flexsp_cluster_devices {}\n", devices);

  struct gauge {
    const char* name;
    const char* type;
    const char* help;
    std::function<std::optional<double>(const job_snapshot&, const json&)> value;
  };
  auto field = [](const char* key) {
    return [key](const job_snapshot&, const json& m) -> std::optional<double> {
      if (!m.is_object() || !m.contains(key) || !m[key].is_number()) return std::nullopt;
      return m[key].get<double>();
    };
  };
  const std::vector<gauge> gauges = {
      {"flexsp_job_steps_committed_total", "counter", "Committed steps of the job.",
       [](const job_snapshot& j, const json&) { return std::optional<double>{static_cast<double>(j.status.steps_done)}; }},
      {"flexsp_job_steps_planned", "gauge", "Steps the job runs in all.",
       [](const job_snapshot& j, const json&) { return std::optional<double>{static_cast<double>(j.status.steps_total)}; }},
      {"flexsp_job_running", "gauge", "1 while the job is pending or running, 0 once it ended.",
       [](const job_snapshot& j, const json&) { return std::optional<double>{j.status.terminal() ? 0.0 : 1.0}; }},
      {"flexsp_job_devices", "gauge", "Devices of the latest committed step.",
       [](const job_snapshot& j, const json&) { return std::optional<double>{static_cast<double>(j.status.devices)}; }},
      {"flexsp_job_loss", "gauge", "Mean token loss of the latest committed step.", field("loss")},
      {"flexsp_job_step_seconds", "gauge", "Wall time of the latest committed step.",
       [](const job_snapshot&, const json& m) -> std::optional<double> {
         if (!m.is_object() || !m.contains("step_ms")) return std::nullopt;
         return m["step_ms"].get<double>() / 1000.0;
       }},
      {"flexsp_job_tokens_per_second", "gauge", "Tokens of the latest step over its wall time.",
       [](const job_snapshot&, const json& m) -> std::optional<double> {
         if (!m.is_object() || !m.contains("step_ms") || !m.contains("tokens")) return std::nullopt;
         const double ms = m["step_ms"].get<double>();
         return ms > 0 ? std::optional<double>{m["tokens"].get<double>() / (ms / 1000.0)} : std::nullopt;
       }},
      {"flexsp_job_planner_seconds", "gauge", "Planner time of the latest step's batch.",
       [](const job_snapshot&, const json& m) -> std::optional<double> {
         if (!m.is_object() || !m.contains("solve_ms")) return std::nullopt;
         return m["solve_ms"].get<double>() / 1000.0;
       }},
      {"flexsp_job_cost_model_error", "gauge",
       "Mean relative error of the predicted SP-group times of the latest step.", field("group_error")},
      {"flexsp_job_aborted_attempts_total", "counter", "Step attempts aborted and re-planned over the job.",
       [](const job_snapshot& j, const json&) {
         return std::optional<double>{static_cast<double>(j.status.aborted_attempts)};
       }},
      {"flexsp_job_recoveries_total", "counter", "Steps committed after at least one aborted attempt.",
       [](const job_snapshot& j, const json&) {
         return std::optional<double>{static_cast<double>(j.status.recovered_steps)};
       }},
  };
  std::vector<json> latest;
  for (const auto& j : jobs) latest.push_back(j.last_metrics.empty() ? json{} : json::parse(j.last_metrics, nullptr, false));
  for (const auto& g : gauges) {
    family(g.name, g.type, g.help);
    for (std::size_t i = 0; i < jobs.size(); ++i) {
      const auto v = g.value(jobs[i], latest[i]);
      if (!v) continue;
      out += fmt::format("{}{{job=\"{}\",name=\"{}\"}} {}\n", g.name, label(jobs[i].status.id),
                         label(jobs[i].status.name), *v);
    }
  }
  return out;
}

struct dashboard::impl {
  dashboard_config config;
  std::shared_ptr<actor_host> host;
  net::endpoint head;
  job_manager* jobs = nullptr;
  httplib::Server server;
  core::actor_system* system = nullptr;
  core::actor_ref<http_listener> listener;  // runs the accept loop until server.stop()
  int port = 0;

  expected<cluster_status> cluster() const {
    auto view = cluster_at(*host, head).ask(get_cluster_view{}, std::chrono::seconds{5}).get();
    if (!view) return unexpected<error>{view.error()};
    return from_wire(*view);
  }
  std::vector<job_snapshot> snapshots() const {
    std::vector<job_snapshot> out;
    for (const auto& s : jobs->list()) {
      job_snapshot j;
      j.status = s;
      if (auto job = jobs->find(s.id)) j.last_metrics = (*job)->last_metrics();
      out.push_back(std::move(j));
    }
    return out;
  }
  bool authorised(const httplib::Request& r) const {
    if (config.token.empty()) return true;
    if (r.get_param_value("token") == config.token) return true;
    return r.get_header_value("Authorization") == "Bearer " + config.token;
  }
};

dashboard::dashboard(std::unique_ptr<impl> p) : p_{std::move(p)} {}

dashboard::~dashboard() {
  p_->server.stop();  // the accept loop returns, and the listener with it
  auto done = std::make_shared<std::promise<void>>();
  p_->system->monitor(p_->listener, [done](const core::down_msg&) { done->set_value(); });
  p_->listener.stop(core::stop_mode::discard);
  done->get_future().wait();
}

std::uint16_t dashboard::port() const noexcept { return static_cast<std::uint16_t>(p_->port); }
std::string dashboard::url() const { return fmt::format("http://{}:{}/", p_->config.host, p_->port); }

expected<std::unique_ptr<dashboard>> dashboard::start(dashboard_config config, core::actor_system& system,
                                                      std::shared_ptr<actor_host> host, net::endpoint head,
                                                      job_manager& jobs) {
  if (!loopback(config.host) && config.token.empty())
    return make_error(errc::invalid_argument,
                      "--dashboard-host {}: a dashboard reachable from other hosts needs --dashboard-token", config.host);
  auto p = std::make_unique<impl>();
  p->config = config;
  p->system = &system;
  p->host = std::move(host);
  p->head = std::move(head);
  p->jobs = &jobs;
  auto* self = p.get();
  auto guard = [self](const httplib::Request& r, httplib::Response& res) {
    if (self->authorised(r)) return true;
    res.status = 401;
    res.set_content("{\"error\": \"a token is required\"}", "application/json");
    return false;
  };
  auto send_json = [](httplib::Response& res, const json& j) { res.set_content(j.dump(1), "application/json"); };
  auto fail = [](httplib::Response& res, int code, const std::string& why) {
    res.status = code;
    res.set_content(json{{"error", why}}.dump(), "application/json");
  };
  p->server.Get("/api/cluster", [=](const httplib::Request& r, httplib::Response& res) {
    if (!guard(r, res)) return;
    auto c = self->cluster();
    if (!c) return fail(res, 503, c.error().message());
    json nodes = json::array();
    std::size_t devices = 0;
    for (const auto& n : c->nodes) {
      json d = json::array();
      for (const auto& dev : n.devices) d.push_back(dev.to_string());
      if (n.state == node_state::alive) devices += n.devices.size();
      nodes.push_back({{"id", n.id},
                       {"address", n.address},
                       {"state", std::string{to_string(n.state)}},
                       {"devices", d},
                       {"joined_epoch", n.joined_epoch},
                       {"lost_epoch", n.lost_epoch},
                       {"lost_reason", n.lost_reason}});
    }
    send_json(res, {{"epoch", c->epoch}, {"nodes", nodes}, {"devices_alive", devices}, {"head_pid", c->head_pid}});
  });
  p->server.Get("/api/jobs", [=](const httplib::Request& r, httplib::Response& res) {
    if (!guard(r, res)) return;
    json out = json::array();
    for (const auto& s : self->jobs->list()) out.push_back(status_json(s));
    send_json(res, out);
  });
  p->server.Get(R"(/api/jobs/([A-Za-z0-9_.\-]+))", [=](const httplib::Request& r, httplib::Response& res) {
    if (!guard(r, res)) return;
    auto job = self->jobs->find(r.matches[1].str());
    if (!job) return fail(res, 404, job.error().message());
    json j = status_json((*job)->status());
    j["spec"] = json::parse(job_spec_to_json((*job)->spec()), nullptr, false);
    j["logs"] = (*job)->logs();
    json metrics = json::array();
    for (const auto& l : (*job)->metrics_since(0)) metrics.push_back(json::parse(l, nullptr, false));
    j["metrics"] = metrics;
    json events = json::array();
    for (const auto& e : (*job)->events()) events.push_back(json::parse(e, nullptr, false));
    j["events"] = events;
    send_json(res, j);
  });
  p->server.Get(R"(/api/jobs/([A-Za-z0-9_.\-]+)/events)", [=](const httplib::Request& r, httplib::Response& res) {
    if (!guard(r, res)) return;
    auto job = self->jobs->find(r.matches[1].str());
    if (!job) return fail(res, 404, job.error().message());
    json events = json::array();
    for (const auto& e : (*job)->events()) events.push_back(json::parse(e, nullptr, false));
    send_json(res, events);
  });
  p->server.Get(R"(/api/jobs/([A-Za-z0-9_.\-]+)/spec)", [=](const httplib::Request& r, httplib::Response& res) {
    if (!guard(r, res)) return;
    auto job = self->jobs->find(r.matches[1].str());
    if (!job) return fail(res, 404, job.error().message());
    res.set_content(job_spec_to_json((*job)->spec()), "application/json");
  });
  p->server.Get("/metrics", [=](const httplib::Request& r, httplib::Response& res) {
    if (!guard(r, res)) return;
    auto c = self->cluster();
    if (!c) return fail(res, 503, c.error().message());
    res.set_content(prometheus_text(*c, self->snapshots()), "text/plain; version=0.0.4");
  });
  p->server.Get("/", [=](const httplib::Request& r, httplib::Response& res) {
    if (!guard(r, res)) return;
    static constexpr const char* kPage =
#include "flexsp/actors/dashboard_page.inc"
        ;
    res.set_content(kPage, "text/html; charset=utf-8");
  });
  p->port = config.port == 0 ? p->server.bind_to_any_port(config.host) : (p->server.bind_to_port(config.host, config.port) ? config.port : -1);
  if (p->port <= 0)
    return make_error(errc::io, "dashboard: cannot listen on {}:{}", config.host, config.port);
  core::spawn_options o;
  o.blocking = true;
  o.name = "dashboard";
  p->listener = system.spawn<http_listener>(o);
  p->listener.tell(serve{[self] { self->server.listen_after_bind(); }});
  log::get("actors")->info("head: dashboard at http://{}:{}/", config.host, p->port);
  return std::unique_ptr<dashboard>{new dashboard{std::move(p)}};
}

}  // namespace flexsp::actors
