#pragma once
/// \file
/// A whole cluster in one process: a head (with its job manager and the "jobs" API actor) and
/// any number of nodes, on one event loop and loopback sockets, sharing a generated secret.
/// `flexsp train`, examples and tests use it; the messages between scheduler and devices still
/// cross real sockets as Cap'n Proto frames, exactly as between processes.

#include <chrono>
#include <memory>
#include <vector>

#include "flexsp/actors/client.hpp"
#include "flexsp/actors/head.hpp"
#include "flexsp/actors/job_manager.hpp"
#include "flexsp/actors/membership.hpp"
#include "flexsp/actors/node.hpp"
#include "flexsp/core/net/transport.hpp"

namespace flexsp::actors {

struct embedded_options {
  failure_detector_config detector{std::chrono::milliseconds{200}, std::chrono::milliseconds{1000}};
  /// Port of the head (0: any free port).
  std::uint16_t port = 0;
};

/// Defaults a head applies to submitted jobs (scheduler_config).
struct job_defaults {
  std::string checkpoint_root;  ///< empty: jobs without a checkpoint directory have none
  std::uint32_t checkpoint_every = 50;
};

/// The job side of a head process: the job manager, whose scheduler actors and "jobs" API actor
/// are published on the head's actor host (the API is also registered under the name "jobs").
/// `flexsp start --head` runs one next to its head service.
class job_service {
public:
  /// `host` is the head's actor host; the head must accept connections at `head`. With a
  /// `store`, jobs are recorded there, and the jobs it holds are taken back before the API is
  /// served (job_manager::recover).
  static expected<std::unique_ptr<job_service>> start(std::shared_ptr<actor_host> host, net::endpoint head,
                                                      net::transport_config transport,
                                                      std::shared_ptr<state_store> store = {},
                                                      job_defaults defaults = {});
  ~job_service();
  job_manager& jobs() { return *jobs_; }
  std::shared_ptr<actor_host> host() const { return host_; }
  /// Cancels the jobs and stops serving the API. Idempotent.
  void stop();

private:
  job_service() = default;
  std::shared_ptr<actor_host> host_;
  std::unique_ptr<job_manager> jobs_;
};

/// The head side: head service plus job service.
class head_runtime {
public:
  /// Starts on `loop` (which must already run). Serves the job API.
  static expected<std::unique_ptr<head_runtime>> start(net::event_loop& loop, head_config config);
  ~head_runtime();

  net::endpoint endpoint() const;
  const net::transport_config& transport() const { return transport_; }
  job_manager& jobs() { return jobs_->jobs(); }
  std::shared_ptr<actor_host> host() const { return jobs_->host(); }
  void stop();

private:
  head_runtime() = default;
  std::unique_ptr<head_service> head_;
  std::unique_ptr<job_service> jobs_;
  net::transport_config transport_;
  std::string host_name_;
};

class embedded_cluster {
public:
  /// Starts a head and `nodes` nodes with `devices_per_node` CPU devices each, and waits until
  /// every node registered.
  static expected<std::unique_ptr<embedded_cluster>> start(int nodes, int devices_per_node, embedded_options options = {});
  ~embedded_cluster();

  head_runtime& head() { return *head_; }
  job_manager& jobs() { return head_->jobs(); }
  /// Adds a node with `devices` CPU devices (returns its position in nodes()).
  expected<std::size_t> add_node(int devices);
  /// Adds a node with these devices (cpu:N and cuda:N; a CUDA device opens its GPU when it
  /// first joins a job).
  expected<std::size_t> add_node(std::vector<device_id> devices);
  /// Stops node `i` (its connections close: the head sees it leave at once).
  void stop_node(std::size_t i);
  std::size_t node_count() const { return nodes_.size(); }

private:
  embedded_cluster() = default;
  net::event_loop loop_;
  std::unique_ptr<head_runtime> head_;
  std::vector<std::unique_ptr<node_service>> nodes_;
};

/// A random cluster secret (64 hex characters).
std::vector<std::uint8_t> random_secret();

}  // namespace flexsp::actors
