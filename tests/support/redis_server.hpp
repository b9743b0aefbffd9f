#pragma once
// A redis-server of a test's own: on a free loopback port, without persistence, killed at the
// end. `start` is false (and the test should skip, naming the reason) where redis-server is not
// installed; scripts/bootstrap.sh installs it.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>

#include "flexsp/actors/state_store.hpp"
#include "ports.hpp"

namespace flexsp::testing {

class redis_server {
public:
  redis_server() = default;
  redis_server(const redis_server&) = delete;
  redis_server& operator=(const redis_server&) = delete;
  ~redis_server() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }

  /// Starts the server with `dir` as its working directory; waits (up to 20 s) until it answers.
  bool start(const std::filesystem::path& dir) {
    if (std::system("command -v redis-server >/dev/null 2>&1") != 0) return false;
    for (int tries = 0; tries < 5; ++tries) {
      port_ = free_loopback_port();
      const pid_t child = ::fork();
      if (child == 0) {
        const auto p = std::to_string(port_);
        ::execlp("redis-server", "redis-server", "--port", p.c_str(), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", dir.c_str(), "--loglevel", "warning", static_cast<char*>(nullptr));
        ::_exit(127);
      }
      for (int i = 0; i < 200; ++i) {
        if (actors::open_state_store(url("probe"))) {
          pid_ = child;
          return true;
        }
        if (::waitpid(child, nullptr, WNOHANG) == child) break;  // the port was taken: another one
        std::this_thread::sleep_for(std::chrono::milliseconds{100});
      }
      ::kill(child, SIGKILL);
      ::waitpid(child, nullptr, 0);
    }
    return false;
  }

  int port() const { return port_; }
  /// The state store URL of namespace `ns` on this server.
  std::string url(const std::string& ns) const { return "redis://127.0.0.1:" + std::to_string(port_) + "/" + ns; }

private:
  pid_t pid_ = -1;
  int port_ = 0;
};

}  // namespace flexsp::testing
