#include "embedded_setup.hpp"

#include <cstdlib>
#include <fstream>

#include "flexsp/actors/membership.hpp"
#include "flexsp/kernels/device_backend.hpp"

namespace flexsp::app {

expected<embedded_run> start_embedded(const std::string& devices, int nodes, actors::failure_detector_config detector) {
  if (auto ok = detector.validate(); !ok)
    return make_error(errc::invalid_argument, "--heartbeat-interval/--failure-timeout: {}", ok.error().message());
  const auto backend = kernels::select_device_backend(kernels::backend_request::automatic);
  const bool cuda_usable = backend && backend->kind == kernels::backend_kind::cuda;
  auto devs = actors::parse_devices(devices, cuda_usable ? backend->gpu_count : 0);
  if (!devs)
    return make_error(errc::invalid_argument, "--devices: {}{}", devs.error().message(),
                      cuda_usable || devices.find("cuda") == std::string::npos
                          ? std::string{}
                          : fmt::format(" ({})", backend ? backend->reason : backend.error().message()));
  embedded_run run;
  run.devices = static_cast<int>(devs->size());
  if (nodes < 1 || nodes > run.devices || run.devices % nodes != 0)
    return make_error(errc::invalid_argument, "--nodes {} must divide the {} devices", nodes, run.devices);
  for (const auto& d : *devs)
    if (const std::string kind{actors::to_string(d.kind)}; run.kinds.find(kind) == std::string::npos)
      run.kinds += (run.kinds.empty() ? "" : "+") + kind;
  actors::embedded_options options;
  options.detector = detector;
  auto cluster = actors::embedded_cluster::start(0, 0, options);
  if (!cluster) return make_error(cluster.error().kind(), "cannot start the embedded cluster: {}", cluster.error().message());
  const auto per = static_cast<std::ptrdiff_t>(run.devices / nodes);
  for (int n = 0; n < nodes; ++n)
    if (auto added = (*cluster)->add_node({devs->begin() + n * per, devs->begin() + (n + 1) * per}); !added)
      return make_error(added.error().kind(), "cannot start an embedded node: {}", added.error().message());
  run.cluster = std::move(*cluster);
  return run;
}

bool default_log_levels(const CLI::App& cmd) {
  return cmd.get_parent()->get_option("--log-level")->count() == 0 && std::getenv("FLEXSP_LOG") == nullptr;
}

expected<nlohmann::json> read_spec_json(const std::string& path) {
  if (path.empty()) return nlohmann::json::object();
  std::ifstream in{path};
  if (!in) return make_error(errc::invalid_argument, "--config: cannot read {}", path);
  nlohmann::json j;
  try {
    in >> j;
  } catch (const nlohmann::json::exception& e) {
    return make_error(errc::invalid_argument, "--config {}: not valid JSON: {}", path, e.what());
  }
  if (!j.is_object()) return make_error(errc::invalid_argument, "--config {}: must hold a JSON object", path);
  return j;
}

}  // namespace flexsp::app
