#pragma once
/// \file
/// Where the head keeps what must outlive its process: membership, the KV store and named
/// actors, and every job (spec, progress, metrics, events). A restarted head reads it back
/// (head.hpp, job_manager.hpp) so nodes keep their ids and running jobs continue.
///
/// One interface, three kinds, chosen by a URL (`open_state_store`):
/// - `file:PATH` (or a plain path): an append-only log of records, each with a checksum; a
///   torn last record (the process died while writing it) is dropped when the file is opened,
///   and the file is rewritten compactly when dead records outweigh live ones. Each record is
///   one write(2), so it survives the head process being killed at any point; it is not
///   fsync'ed, so it does not survive the host losing power.
/// - `redis://HOST:PORT[/NAMESPACE]`: a Redis server (tables are hashes, lists are lists under
///   `NAMESPACE:`), which survives losing the head's host, as Ray's GCS fault tolerance does.
/// - `memory:`: a map in this process, for tests.
///
/// The model: named tables of key -> value, and named append-only lists. Values are bytes.
/// Every method is thread-safe.

#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "flexsp/core/error.hpp"

namespace flexsp::actors {

class state_store {
public:
  virtual ~state_store() = default;
  /// Where the state lives, for logs ("file /var/lib/flexsp/head-7400.state").
  virtual std::string describe() const = 0;

  /// Sets entry `key` of `table`.
  virtual expected<void> put(std::string_view table, std::string_view key, std::string_view value) = 0;
  /// Removes entry `key` of `table`; no error when there is none.
  virtual expected<void> erase(std::string_view table, std::string_view key) = 0;
  /// Removes every entry of `table`.
  virtual expected<void> clear(std::string_view table) = 0;
  /// Every entry of `table`, by key.
  virtual expected<std::map<std::string, std::string>> entries(std::string_view table) = 0;

  /// Appends `value` to list `list`.
  virtual expected<void> append(std::string_view list, std::string_view value) = 0;
  /// Every item of `list`, oldest first (empty when there is none).
  virtual expected<std::vector<std::string>> items(std::string_view list) = 0;
  /// Removes list `list`.
  virtual expected<void> drop(std::string_view list) = 0;
};

/// Opens the store a URL names (see the file comment). errc::invalid_argument for a URL of no
/// known kind; the store's own error (naming the file or server) when it cannot be opened.
expected<std::shared_ptr<state_store>> open_state_store(std::string_view url);

}  // namespace flexsp::actors
