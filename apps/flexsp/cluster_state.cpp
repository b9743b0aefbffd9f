// Per-user cluster state shared by the cluster and job commands.
#include "cluster_state.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "flexsp/actors/job_client.hpp"
#include "flexsp/actors/local_cluster.hpp"
#include "flexsp/core/check.hpp"
#include "flexsp/core/net/transport.hpp"

namespace flexsp::app {

namespace fs = std::filesystem;

expected<fs::path> state_dir() { return actors::local_state_dir(); }

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
  return actors::resolve_cluster_secret(secret_file, address);
}

expected<std::string> resolve_address(const std::string& address) {
  if (!address.empty())
    if (auto ep = net::endpoint::parse(address); !ep)
      return make_error(errc::invalid_argument, "--address {}: expected HOST:PORT", address);
  return actors::resolve_head_address(address);
}

expected<std::shared_ptr<actors::job_client>> connect_job_client(const std::string& address,
                                                                 const std::string& secret_file) {
  FLEXSP_TRY_ASSIGN(const std::string resolved, resolve_address(address));
  net::transport_config t;
  FLEXSP_TRY_ASSIGN(t.secret, resolve_secret(secret_file, resolved));
  return actors::job_client::connect(resolved, t);
}

}  // namespace flexsp::app
