#pragma once
/// \file
/// The C++ client of the job API:
///
/// ```
/// auto client = flexsp::actors::job_client::connect("127.0.0.1:7400").value();
/// auto job = client->submit(spec).value();
/// auto final = job.wait([](const std::string& metrics_json) { std::puts(metrics_json.c_str()); });
/// ```
/// It talks to the head's "jobs" actor over an authenticated actor channel. `wait` subscribes to
/// the job: the head pushes each committed step's metrics and the job's end as they happen; a
/// query every `poll_interval` without news (and after any gap) is the safety net. Each
/// committed step is delivered exactly once and in order. When the head cannot be reached,
/// `wait` keeps trying (the connection comes back by itself) for `head_wait`, then fails with
/// errc::disconnected saying that the head is gone. Thread-safe.

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "flexsp/actors/job_manager.hpp"
#include "flexsp/actors/job_spec.hpp"
#include "flexsp/actors/remote.hpp"
#include "flexsp/actors/training_messages.hpp"
#include "flexsp/core/actor_system.hpp"
#include "flexsp/core/error.hpp"
#include "flexsp/core/net/transport.hpp"

namespace flexsp::actors {

class job_client;
/// Updates pushed for each job, waiting to be taken (job_client.cpp).
struct job_update_box;

/// Receives the job_update tells the head pushes for `job_handle::wait` (published on the
/// client's actor host; the head reaches it through a proxy).
class update_sink : public core::actor<update_sink> {
public:
  using interface = core::interface<job_update>;
  explicit update_sink(std::shared_ptr<job_update_box> box) : box_{std::move(box)} {}
  void handle(job_update m);

private:
  std::shared_ptr<job_update_box> box_;
};

/// A submitted job.
class job_handle {
public:
  using metrics_fn = std::function<void(const std::string& metrics_json)>;

  const std::string& id() const { return id_; }
  expected<job_info> status(bool with_logs = false) const;
  /// Waits until the job ends, calling `on_metrics` for every committed step not delivered yet.
  /// errc::disconnected when the head went away.
  expected<job_info> wait(metrics_fn on_metrics = {});
  expected<void> cancel() const;

private:
  friend class job_client;
  job_handle(std::shared_ptr<job_client> c, std::string id) : client_{std::move(c)}, id_{std::move(id)} {}
  std::shared_ptr<job_client> client_;
  std::string id_;
  std::uint64_t delivered_ = 0;
};

/// A job's status as a JSON object (text): id, name, state, steps_done, steps_total, devices,
/// first_loss, last_loss, resumed_from, error, final_checksum, and calibration (the profile the
/// job fitted, as an object) when there is one; neither metrics nor logs. What `flexsp job
/// status` prints and the Python package returns.
std::string job_info_to_json(const job_info& i);

class job_client : public std::enable_shared_from_this<job_client> {
public:
  /// Connects to the head at "host:port" with the cluster secret in `transport`.
  static expected<std::shared_ptr<job_client>> connect(const std::string& address, net::transport_config transport);
  /// The same, with the address and secret found as the CLI finds them (local_cluster.hpp): an
  /// empty `address` means FLEXSP_ADDRESS, else the cluster started on this machine; the secret
  /// comes from FLEXSP_CLUSTER_SECRET, FLEXSP_SECRET_FILE, else that cluster's record.
  static expected<std::shared_ptr<job_client>> connect(const std::string& address = {});
  ~job_client();

  /// Submits a spec; errc::invalid_argument naming the field when the head rejects it (a bad
  /// value, or a job the cluster cannot run now: see check_job_fits). A relative
  /// `checkpoint.dir` is resolved against this process's current directory.
  expected<job_handle> submit(const job_spec& spec);
  expected<job_handle> submit_json(const std::string& spec_json);
  /// A handle on an existing job (errc::not_found when there is none).
  expected<job_handle> attach(const std::string& id);
  expected<job_info> query(const std::string& id, std::uint64_t metrics_from, bool with_logs);
  expected<void> cancel(const std::string& id);
  expected<std::vector<job_info>> list();

  /// Asks the head to push job_update tells about `id` to this client.
  expected<void> watch(const std::string& id);
  /// Waits up to `timeout` for pushed updates of job `id` and takes them (empty on timeout).
  std::vector<job_update> take_updates(const std::string& id, std::chrono::milliseconds timeout);

  std::chrono::milliseconds poll_interval{1000};
  std::chrono::milliseconds request_timeout{10'000};
  /// How long `wait` keeps trying when the head cannot be reached before it gives up saying so.
  std::chrono::milliseconds head_wait{30'000};
  /// "host:port" of the head.
  const std::string& head_address() const { return head_address_; }

private:
  job_client() = default;
  template <class M>
  auto ask_jobs(M m) const;

  std::unique_ptr<net::event_loop> loop_;
  std::unique_ptr<core::actor_system> system_;  // runs the update sink
  std::shared_ptr<actor_host> host_;
  core::actor_ref<jobs_actor> jobs_;            // a proxy of the head's "jobs" actor
  std::shared_ptr<job_update_box> updates_;
  core::actor_ref<update_sink> sink_;
  std::uint64_t sink_id_ = 0;
  std::string head_address_;
};

}  // namespace flexsp::actors
