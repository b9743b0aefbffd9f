#include "flexsp/kernels/rendezvous_store.hpp"

#include <fstream>
#include <iterator>
#include <system_error>
#include <thread>
#include <unistd.h>

namespace flexsp::kernels {

expected<void> memory_store::set(std::string_view key, std::span<const char> value) {
  {
    std::lock_guard lock{mutex_};
    values_.insert_or_assign(std::string{key}, std::vector<char>(value.begin(), value.end()));
  }
  changed_.notify_all();
  return {};
}

expected<std::vector<char>> memory_store::get(std::string_view key, std::chrono::milliseconds timeout) {
  std::unique_lock lock{mutex_};
  auto found = values_.end();
  if (!changed_.wait_for(lock, timeout, [&] { return (found = values_.find(key)) != values_.end(); }))
    return make_error(errc::timeout, "rendezvous key '{}' did not appear within {} ms", key, timeout.count());
  return found->second;
}

expected<void> memory_store::wait(std::span<const std::string> keys, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (const auto& k : keys) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    FLEXSP_TRY(get(k, std::max(left, std::chrono::milliseconds{0})));
  }
  return {};
}

expected<std::unique_ptr<file_store>> file_store::open(std::filesystem::path dir, std::chrono::milliseconds poll) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return make_error(errc::io, "cannot create rendezvous directory {}: {}", dir.string(), ec.message());
  return std::unique_ptr<file_store>{new file_store{std::move(dir), poll}};
}

std::filesystem::path file_store::path_of(std::string_view key) const {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string name;
  name.reserve(key.size() * 2);
  for (unsigned char c : key) {
    name.push_back(kHex[c >> 4]);
    name.push_back(kHex[c & 15]);
  }
  return dir_ / name;
}

expected<void> file_store::set(std::string_view key, std::span<const char> value) {
  const auto final_path = path_of(key);
  auto tmp = final_path;
  tmp += ".tmp." + std::to_string(::getpid()) + "." +
         std::to_string(std::hash<std::thread::id>{}(std::this_thread::get_id()));
  {
    std::ofstream out{tmp, std::ios::binary | std::ios::trunc};
    out.write(value.data(), static_cast<std::streamsize>(value.size()));
    if (!out) return make_error(errc::io, "cannot write rendezvous key '{}' to {}", key, tmp.string());
  }
  std::error_code ec;
  std::filesystem::rename(tmp, final_path, ec);
  if (ec) return make_error(errc::io, "cannot publish rendezvous key '{}': {}", key, ec.message());
  return {};
}

expected<std::vector<char>> file_store::get(std::string_view key, std::chrono::milliseconds timeout) {
  const auto p = path_of(key);
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    std::ifstream in{p, std::ios::binary};
    if (in) return std::vector<char>(std::istreambuf_iterator<char>{in}, std::istreambuf_iterator<char>{});
    if (std::chrono::steady_clock::now() >= deadline)
      return make_error(errc::timeout, "rendezvous key '{}' did not appear in {} within {} ms", key, dir_.string(),
                        timeout.count());
    std::this_thread::sleep_for(poll_);
  }
}

expected<void> file_store::wait(std::span<const std::string> keys, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (const auto& k : keys) {
    const auto p = path_of(k);
    while (!std::filesystem::exists(p)) {
      if (std::chrono::steady_clock::now() >= deadline)
        return make_error(errc::timeout, "rendezvous key '{}' did not appear in {} within {} ms", k, dir_.string(),
                          timeout.count());
      std::this_thread::sleep_for(poll_);
    }
  }
  return {};
}

}  // namespace flexsp::kernels
