#include "flexsp/actors/embedded.hpp"

#include <future>
#include <random>
#include <thread>

#include "flexsp/core/log.hpp"

namespace flexsp::actors {

using namespace std::chrono_literals;

std::vector<std::uint8_t> random_secret() {
  std::random_device rd;
  static constexpr char kHex[] = "0123456789abcdef";
  std::vector<std::uint8_t> s;
  for (int i = 0; i < 64; ++i) s.push_back(static_cast<std::uint8_t>(kHex[rd() % 16]));
  return s;
}

expected<std::unique_ptr<job_service>> job_service::start(std::shared_ptr<actor_host> host, net::endpoint head,
                                                         net::transport_config transport,
                                                         std::shared_ptr<state_store> store, job_defaults defaults) {
  std::unique_ptr<job_service> j{new job_service{}};
  j->host_ = std::move(host);
  scheduler_config sc;
  sc.head = head;
  sc.transport = std::move(transport);
  sc.host = j->host_;
  sc.store = std::move(store);
  sc.default_checkpoint_root = std::move(defaults.checkpoint_root);
  sc.default_checkpoint_every = defaults.checkpoint_every;
  j->jobs_ = std::make_unique<job_manager>(sc);
  if (auto r = j->jobs_->recover(); !r)
    return make_error(r.error().kind(), "cannot take back the recorded jobs: {}", r.error().message());
  FLEXSP_TRY(j->jobs_->serve());
  return j;
}

job_service::~job_service() { stop(); }

void job_service::stop() {
  if (jobs_) jobs_->shutdown();
}

expected<std::unique_ptr<head_runtime>> head_runtime::start(net::event_loop& loop, head_config config) {
  std::unique_ptr<head_runtime> h{new head_runtime{}};
  h->transport_ = config.transport;
  h->host_name_ = config.bind.host;
  FLEXSP_TRY_ASSIGN(h->head_, head_service::start(loop, config));
  FLEXSP_TRY_ASSIGN(h->jobs_, job_service::start(h->head_->host(), h->endpoint(), config.transport, config.store));
  return h;
}

head_runtime::~head_runtime() { stop(); }

net::endpoint head_runtime::endpoint() const {
  return net::endpoint{host_name_ == "0.0.0.0" ? std::string{"127.0.0.1"} : host_name_, head_->port()};
}

void head_runtime::stop() {
  if (jobs_) jobs_->stop();
  if (head_) head_->stop();
}

expected<std::unique_ptr<embedded_cluster>> embedded_cluster::start(int nodes, int devices_per_node,
                                                                    embedded_options options) {
  std::unique_ptr<embedded_cluster> c{new embedded_cluster{}};
  c->loop_.start();
  head_config hc;
  hc.bind = net::endpoint{"127.0.0.1", options.port};
  hc.detector = options.detector;
  hc.transport.secret = random_secret();
  FLEXSP_TRY_ASSIGN(c->head_, head_runtime::start(c->loop_, hc));
  for (int i = 0; i < nodes; ++i) FLEXSP_TRY(c->add_node(devices_per_node));
  return c;
}

expected<std::size_t> embedded_cluster::add_node(int devices) {
  std::vector<device_id> cpus;
  for (int d = 0; d < devices; ++d) cpus.push_back(device_id{device_kind::cpu, static_cast<std::uint32_t>(d)});
  return add_node(std::move(cpus));
}

expected<std::size_t> embedded_cluster::add_node(std::vector<device_id> devices) {
  node_config nc;
  nc.head = head_->endpoint();
  nc.devices = std::move(devices);
  nc.transport = head_->transport();
  auto registered = std::make_shared<std::promise<void>>();
  auto once = std::make_shared<std::once_flag>();
  FLEXSP_TRY_ASSIGN(auto node, node_service::start(loop_, nc, [registered, once](const registration&) {
                      std::call_once(*once, [&registered]() { registered->set_value(); });
                    }));
  if (registered->get_future().wait_for(10s) != std::future_status::ready)
    return make_error(errc::timeout, "an embedded node did not register within 10 s");
  nodes_.push_back(std::move(node));
  return nodes_.size() - 1;
}

void embedded_cluster::stop_node(std::size_t i) {
  if (i < nodes_.size() && nodes_[i]) {
    nodes_[i]->stop();
  }
}

embedded_cluster::~embedded_cluster() {
  if (head_) head_->stop();
  for (auto& n : nodes_)
    if (n) n->stop();
  // Let the loop run the posted stops, then end it.
  std::this_thread::sleep_for(50ms);
  head_.reset();
  loop_.stop();
  nodes_.clear();
}

}  // namespace flexsp::actors
