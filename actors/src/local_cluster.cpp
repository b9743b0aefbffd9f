// Finding the cluster started on this machine: its address and secret.
#include "flexsp/actors/local_cluster.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "flexsp/core/net/transport.hpp"

namespace flexsp::actors {

namespace fs = std::filesystem;

namespace {

expected<std::string> read_text(const fs::path& p) {
  std::ifstream in{p, std::ios::binary};
  if (!in) return make_error(errc::not_found, "cannot read {}", p.string());
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

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

expected<fs::path> local_state_dir() {
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

std::optional<local_cluster> recorded_local_cluster() {
  auto dir = local_state_dir();
  if (!dir) return std::nullopt;
  auto text = read_text(*dir / "current_cluster.json");
  if (!text) return std::nullopt;
  auto j = nlohmann::json::parse(*text, nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("address") || !j["address"].is_string()) return std::nullopt;
  local_cluster c;
  c.address = j["address"].get<std::string>();
  if (j.contains("secret_file") && j["secret_file"].is_string()) c.secret_file = j["secret_file"].get<std::string>();
  return c;
}

expected<std::vector<std::uint8_t>> resolve_cluster_secret(const std::string& secret_file, const std::string& address) {
  std::string secret;
  if (!secret_file.empty()) {
    FLEXSP_TRY_ASSIGN(secret, read_text(secret_file));
  } else if (const char* s = std::getenv("FLEXSP_CLUSTER_SECRET"); s && *s) {
    secret = s;
  } else if (const char* f = std::getenv("FLEXSP_SECRET_FILE"); f && *f) {
    FLEXSP_TRY_ASSIGN(secret, read_text(f));
  } else if (auto cur = recorded_local_cluster(); cur && (address.empty() || same_cluster(cur->address, address))) {
    if (cur->secret_file.empty())
      return make_error(errc::invalid_argument, "the record of the head at {} names no secret file", cur->address);
    FLEXSP_TRY_ASSIGN(secret, read_text(cur->secret_file));
  } else {
    // (`cur` is empty, or names another cluster.)
    const std::string why =
        address.empty() ? std::string{}
        : cur           ? fmt::format(" for {} (the head started on this machine is at {})", address,
                                      cur->address)
                        : fmt::format(" for {} (no head was started on this machine)", address);
    return make_error(errc::invalid_argument,
                      "no cluster secret{}: give a secret file (--secret-file; secret_file= in Python), or set FLEXSP_CLUSTER_SECRET or FLEXSP_SECRET_FILE "
                      "(a head started on this machine records its secret for later commands)",
                      why);
  }
  secret = trim(secret);
  if (secret.empty()) return make_error(errc::invalid_argument, "the cluster secret is empty");
  return std::vector<std::uint8_t>{secret.begin(), secret.end()};
}

expected<std::string> resolve_head_address(const std::string& address) {
  if (!address.empty()) {
    if (auto ep = net::endpoint::parse(address); !ep)
      return make_error(errc::invalid_argument, "{}", ep.error().message());
    return address;
  }
  if (const char* a = std::getenv("FLEXSP_ADDRESS"); a && *a) {
    if (auto ep = net::endpoint::parse(a); !ep)
      return make_error(errc::invalid_argument, "FLEXSP_ADDRESS: {}", ep.error().message());
    return std::string{a};
  }
  if (auto cur = recorded_local_cluster()) return cur->address;
  return make_error(errc::invalid_argument,
                    "no cluster address: give HOST:PORT (--address), set FLEXSP_ADDRESS, or start a head on this machine");
}

}  // namespace flexsp::actors
