// Per-user cluster state shared by the cluster and job commands.
#include "cluster_state.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "flexsp/actors/job_client.hpp"
#include "flexsp/core/check.hpp"
#include "flexsp/core/net/transport.hpp"

namespace flexsp::app {

namespace fs = std::filesystem;

namespace {

std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
  return s;
}

bool is_local_host(std::string_view host) {
  return host == "localhost" || host == "0.0.0.0" || host.starts_with("127.");
}

// Whether two addresses name the same head on this machine.
bool same_cluster(const std::string& recorded, const std::string& given) {
  if (recorded == given) return true;
  auto a = net::endpoint::parse(recorded);
  auto b = net::endpoint::parse(given);
  return a && b && a->port == b->port && is_local_host(a->host) && is_local_host(b->host);
}

}  // namespace

expected<fs::path> state_dir() {
  fs::path dir;
  if (const char* s = std::getenv("FLEXSP_STATE_DIR"); s && *s) {
    dir = s;
  } else if (const char* x = std::getenv("XDG_RUNTIME_DIR"); x && *x) {
    dir = fs::path{x} / "flexsp";
  } else {
    dir = fs::path{"/tmp"} / ("flexsp-" + std::to_string(::getuid()));
  }
  std::error_code ec;
  fs::create_directories(dir / "procs", ec);
  fs::create_directories(dir / "logs", ec);
  if (ec) return make_error(errc::io, "cannot create state directory {}: {}", dir.string(), ec.message());
  ::chmod(dir.c_str(), 0700);
  return dir;
}

expected<std::string> read_file(const fs::path& p) {
  std::ifstream in{p, std::ios::binary};
  if (!in) return make_error(errc::not_found, "cannot read {}", p.string());
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

expected<void> write_file_atomic(const fs::path& p, const std::string& content, mode_t mode) {
  const fs::path tmp = p.string() + ".tmp" + std::to_string(::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, mode);
  FLEXSP_SYSCALL(fd);
  const ssize_t n = ::write(fd, content.data(), content.size());
  ::close(fd);
  if (n != static_cast<ssize_t>(content.size())) return make_error(errc::io, "short write to {}", tmp.string());
  FLEXSP_SYSCALL(::rename(tmp.c_str(), p.c_str()));
  return {};
}

std::optional<nlohmann::json> current_cluster() {
  auto dir = state_dir();
  if (!dir) return std::nullopt;
  auto text = read_file(*dir / "current_cluster.json");
  if (!text) return std::nullopt;
  auto j = nlohmann::json::parse(*text, nullptr, false);
  if (j.is_discarded() || !j.contains("address")) return std::nullopt;
  return j;
}

expected<std::vector<std::uint8_t>> resolve_secret(const std::string& secret_file, const std::string& address) {
  std::string secret;
  if (!secret_file.empty()) {
    FLEXSP_TRY_ASSIGN(secret, read_file(secret_file));
  } else if (const char* s = std::getenv("FLEXSP_CLUSTER_SECRET"); s && *s) {
    secret = s;
  } else if (const char* f = std::getenv("FLEXSP_SECRET_FILE"); f && *f) {
    FLEXSP_TRY_ASSIGN(secret, read_file(f));
  } else if (auto cur = current_cluster(); cur && (address.empty() || same_cluster((*cur)["address"], address))) {
    FLEXSP_TRY_ASSIGN(secret, read_file((*cur)["secret_file"].get<std::string>()));
  } else {
    // (`cur` is empty, or names another cluster.)
    const std::string why =
        address.empty() ? std::string{}
        : cur           ? fmt::format(" for {} (the head started on this machine is at {})", address,
                                      (*cur)["address"].get<std::string>())
                        : fmt::format(" for {} (no head was started on this machine)", address);
    return make_error(errc::invalid_argument,
                      "no cluster secret{}: pass --secret-file, or set FLEXSP_CLUSTER_SECRET or FLEXSP_SECRET_FILE "
                      "(a head started on this machine records its secret for later commands)",
                      why);
  }
  secret = trim(secret);
  if (secret.empty()) return make_error(errc::invalid_argument, "the cluster secret is empty");
  return std::vector<std::uint8_t>{secret.begin(), secret.end()};
}

expected<std::string> resolve_address(const std::string& address) {
  if (!address.empty()) {
    if (auto ep = net::endpoint::parse(address); !ep)
      return make_error(errc::invalid_argument, "--address {}: expected HOST:PORT ({})", address, ep.error().message());
    return address;
  }
  if (const char* a = std::getenv("FLEXSP_ADDRESS"); a && *a) {
    if (auto ep = net::endpoint::parse(a); !ep)
      return make_error(errc::invalid_argument, "FLEXSP_ADDRESS {}: expected HOST:PORT ({})", a, ep.error().message());
    return std::string{a};
  }
  if (auto cur = current_cluster()) return (*cur)["address"].get<std::string>();
  return make_error(errc::invalid_argument,
                    "no cluster address: pass --address HOST:PORT, set FLEXSP_ADDRESS, or start a head on this machine");
}

expected<std::shared_ptr<actors::job_client>> connect_job_client(const std::string& address,
                                                                 const std::string& secret_file) {
  FLEXSP_TRY_ASSIGN(const std::string resolved, resolve_address(address));
  net::transport_config t;
  FLEXSP_TRY_ASSIGN(t.secret, resolve_secret(secret_file, resolved));
  return actors::job_client::connect(resolved, t);
}

}  // namespace flexsp::app
