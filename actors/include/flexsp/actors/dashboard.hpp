#pragma once
/// \file
/// The head's HTTP endpoint (cpp-httplib; its accept loop runs on a blocking actor of the head's
/// actor system): a JSON API of the cluster and its jobs, and their metrics in the Prometheus
/// text format.
///
///   GET /                     the dashboard page (embedded at build time): cluster, jobs, charts of
///                             loss / step time / tokens/s, the plans of the last steps as a Gantt
///   GET /api/cluster          epoch, nodes (state, address, devices), devices alive
///   GET /api/jobs             every job: state, steps, losses, devices
///   GET /api/jobs/<id>        one job: the same, its log, its metrics lines and its events
///   GET /api/jobs/<id>/events its typed events: node_lost, attempt_aborted, devices_joined,
///                             rewind, state_lost, checkpoint, finished (time, step, detail)
///   GET /metrics              Prometheus text (text/plain; version=0.0.4): per job the latest step
///                             time, tokens/s, loss, planner time, cost-model error, steps, retried
///                             attempts and recoveries; per cluster nodes alive/lost, devices, epoch
///
/// It binds to loopback unless told otherwise; a bind to any other address needs a token, which
/// every request must then carry (`Authorization: Bearer <token>` or `?token=<token>`).

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "flexsp/actors/client.hpp"
#include "flexsp/actors/job_controller.hpp"
#include "flexsp/actors/remote.hpp"
#include "flexsp/core/actor_system.hpp"
#include "flexsp/core/error.hpp"
#include "flexsp/core/net/transport.hpp"

namespace flexsp::actors {

class job_manager;

struct dashboard_config {
  std::string host = "127.0.0.1";
  std::uint16_t port = 8265;  ///< 0: any free port
  std::string token;          ///< required when `host` is not a loopback address
};

/// A job as the metrics see it: its status and its latest step metrics line (JSON; empty before
/// the first step).
struct job_snapshot {
  job_status status;
  std::string last_metrics;
};

/// The Prometheus text exposition of a cluster and its jobs.
std::string prometheus_text(const cluster_status& cluster, const std::vector<job_snapshot>& jobs);

class dashboard {
public:
  /// Listens on `config` and answers from the head's cluster actor (through `host`, at `head`)
  /// and `jobs`; the accept loop runs on a blocking actor of `system`. errc::invalid_argument for
  /// a non-loopback bind without a token, errc::io when the address cannot be bound.
  static expected<std::unique_ptr<dashboard>> start(dashboard_config config, core::actor_system& system,
                                                    std::shared_ptr<actor_host> host, net::endpoint head,
                                                    job_manager& jobs);
  ~dashboard();
  dashboard(const dashboard&) = delete;
  dashboard& operator=(const dashboard&) = delete;

  std::uint16_t port() const noexcept;
  /// "http://host:port/"
  std::string url() const;

  struct impl;

private:
  explicit dashboard(std::unique_ptr<impl> p);
  std::unique_ptr<impl> p_;
};

}  // namespace flexsp::actors
