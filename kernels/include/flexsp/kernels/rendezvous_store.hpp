#pragma once
/// \file
/// A key-value store through which the members of a communicator find each other (they
/// publish their transport addresses under agreed keys). The head's KV store implements this
/// interface in a cluster; a directory on a shared file system or an in-process map serve
/// tests and single-machine runs.

#include <chrono>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <condition_variable>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "flexsp/core/error.hpp"

namespace flexsp::kernels {

/// Rendezvous key-value store. Keys are printable strings; values are opaque bytes.
/// Implementations must be safe to call from several threads.
class rendezvous_store {
public:
  virtual ~rendezvous_store() = default;

  /// Publishes `value` under `key` (overwrites). errc::io on storage failure.
  [[nodiscard]] virtual expected<void> set(std::string_view key, std::span<const char> value) = 0;

  /// The value under `key`, waiting up to `timeout` for it to appear. errc::timeout when it
  /// did not appear in time.
  [[nodiscard]] virtual expected<std::vector<char>> get(std::string_view key, std::chrono::milliseconds timeout) = 0;

  /// Waits until every key exists. errc::timeout names the first missing key.
  [[nodiscard]] virtual expected<void> wait(std::span<const std::string> keys, std::chrono::milliseconds timeout) = 0;
};

/// An in-process store (threads of one process). Never fails except by timeout.
class memory_store final : public rendezvous_store {
public:
  expected<void> set(std::string_view key, std::span<const char> value) override;
  expected<std::vector<char>> get(std::string_view key, std::chrono::milliseconds timeout) override;
  expected<void> wait(std::span<const std::string> keys, std::chrono::milliseconds timeout) override;

private:
  std::mutex mutex_;
  std::condition_variable changed_;
  std::map<std::string, std::vector<char>, std::less<>> values_;
};

/// A store in a directory shared by the processes (one file per key, written atomically by
/// rename, key bytes hex-encoded in the file name). Waiting polls the directory every
/// `poll_interval`. Keys are never deleted: use a fresh directory per job, or keys that
/// include the membership epoch, so that no member reads a stale address.
class file_store final : public rendezvous_store {
public:
  /// Creates the directory when missing; errc::io when that fails.
  static expected<std::unique_ptr<file_store>> open(std::filesystem::path dir,
                                                    std::chrono::milliseconds poll_interval = std::chrono::milliseconds{5});

  expected<void> set(std::string_view key, std::span<const char> value) override;
  expected<std::vector<char>> get(std::string_view key, std::chrono::milliseconds timeout) override;
  expected<void> wait(std::span<const std::string> keys, std::chrono::milliseconds timeout) override;

  const std::filesystem::path& directory() const noexcept { return dir_; }

private:
  file_store(std::filesystem::path dir, std::chrono::milliseconds poll) : dir_{std::move(dir)}, poll_{poll} {}
  std::filesystem::path path_of(std::string_view key) const;

  std::filesystem::path dir_;
  std::chrono::milliseconds poll_;
};

}  // namespace flexsp::kernels
