#include "flexsp/actors/state_store.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <mutex>

#include "flexsp/core/log.hpp"
#include "state_store_impl.hpp"

namespace flexsp::actors {

namespace {

// ---- memory ------------------------------------------------------------------------------------

/// The state as maps; the file store keeps one of these in step with its log.
struct state_maps {
  std::map<std::string, std::map<std::string, std::string>, std::less<>> tables;
  std::map<std::string, std::vector<std::string>, std::less<>> lists;
  std::size_t bytes = 0;  // payload bytes of live entries, to decide when to compact

  void put(std::string_view t, std::string_view k, std::string_view v) {
    auto& table = tables[std::string{t}];
    auto [it, fresh] = table.try_emplace(std::string{k});
    if (!fresh) bytes -= it->second.size() + k.size();
    it->second.assign(v);
    bytes += v.size() + k.size();
  }
  void erase(std::string_view t, std::string_view k) {
    auto table = tables.find(t);
    if (table == tables.end()) return;
    auto it = table->second.find(std::string{k});
    if (it == table->second.end()) return;
    bytes -= it->second.size() + k.size();
    table->second.erase(it);
  }
  void clear(std::string_view t) {
    auto table = tables.find(t);
    if (table == tables.end()) return;
    for (const auto& [k, v] : table->second) bytes -= k.size() + v.size();
    tables.erase(table);
  }
  void append(std::string_view l, std::string_view v) {
    lists[std::string{l}].emplace_back(v);
    bytes += v.size();
  }
  void drop(std::string_view l) {
    auto it = lists.find(l);
    if (it == lists.end()) return;
    for (const auto& v : it->second) bytes -= v.size();
    lists.erase(it);
  }
  std::map<std::string, std::string> entries(std::string_view t) const {
    auto it = tables.find(t);
    return it == tables.end() ? std::map<std::string, std::string>{} : it->second;
  }
  std::vector<std::string> items(std::string_view l) const {
    auto it = lists.find(l);
    return it == lists.end() ? std::vector<std::string>{} : it->second;
  }
};

class memory_state_store final : public state_store {
public:
  std::string describe() const override { return "memory"; }
  expected<void> put(std::string_view t, std::string_view k, std::string_view v) override {
    std::lock_guard lock{mutex_};
    maps_.put(t, k, v);
    return {};
  }
  expected<void> erase(std::string_view t, std::string_view k) override {
    std::lock_guard lock{mutex_};
    maps_.erase(t, k);
    return {};
  }
  expected<void> clear(std::string_view t) override {
    std::lock_guard lock{mutex_};
    maps_.clear(t);
    return {};
  }
  expected<std::map<std::string, std::string>> entries(std::string_view t) override {
    std::lock_guard lock{mutex_};
    return maps_.entries(t);
  }
  expected<void> append(std::string_view l, std::string_view v) override {
    std::lock_guard lock{mutex_};
    maps_.append(l, v);
    return {};
  }
  expected<std::vector<std::string>> items(std::string_view l) override {
    std::lock_guard lock{mutex_};
    return maps_.items(l);
  }
  expected<void> drop(std::string_view l) override {
    std::lock_guard lock{mutex_};
    maps_.drop(l);
    return {};
  }

private:
  std::mutex mutex_;
  state_maps maps_;
};

// ---- file --------------------------------------------------------------------------------------
//
// "flexsp-state 1\n", then records: op (1 byte: P put, E erase, C clear, A append, D drop),
// one to three length-prefixed fields (u32 little endian + bytes), and the FNV-1a hash (u32) of
// everything before it in the record.

constexpr std::string_view kMagic = "flexsp-state 1\n";
constexpr std::size_t kCompactAbove = 1u << 20;  // compact once the file exceeds this and 4x the live bytes

std::uint32_t fnv1a(std::string_view bytes) {
  std::uint32_t h = 2166136261u;
  for (unsigned char c : bytes) {
    h ^= c;
    h *= 16777619u;
  }
  return h;
}

void put_u32(std::string& out, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

std::uint32_t get_u32(std::string_view in, std::size_t at) {
  std::uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= static_cast<std::uint32_t>(static_cast<unsigned char>(in[at + i])) << (8 * i);
  return v;
}

int fields_of(char op) {
  switch (op) {
    case 'P': return 3;
    case 'E': case 'A': return 2;
    case 'C': case 'D': return 1;
    default: return -1;
  }
}

std::string encode(char op, std::initializer_list<std::string_view> fields) {
  std::string r;
  r.push_back(op);
  for (auto f : fields) {
    put_u32(r, static_cast<std::uint32_t>(f.size()));
    r.append(f);
  }
  put_u32(r, fnv1a(r));
  return r;
}

void apply(state_maps& m, char op, const std::vector<std::string_view>& f) {
  switch (op) {
    case 'P': m.put(f[0], f[1], f[2]); break;
    case 'E': m.erase(f[0], f[1]); break;
    case 'C': m.clear(f[0]); break;
    case 'A': m.append(f[0], f[1]); break;
    case 'D': m.drop(f[0]); break;
    default: break;
  }
}

/// Replays `data` (after the magic) into `m`; returns the length of its valid prefix.
std::size_t replay(std::string_view data, state_maps& m) {
  std::size_t at = 0;
  while (at < data.size()) {
    const std::size_t start = at;
    const int n = fields_of(data[at]);
    if (n < 0) return start;
    ++at;
    std::vector<std::string_view> fields;
    for (int i = 0; i < n; ++i) {
      if (data.size() - at < 4) return start;
      const auto len = get_u32(data, at);
      at += 4;
      if (data.size() - at < len) return start;
      fields.push_back(data.substr(at, len));
      at += len;
    }
    if (data.size() - at < 4 || get_u32(data, at) != fnv1a(data.substr(start, at - start))) return start;
    at += 4;
    apply(m, data[start], fields);
  }
  return at;
}

expected<void> write_all(int fd, std::string_view bytes, const std::string& path) {
  while (!bytes.empty()) {
    const auto n = ::write(fd, bytes.data(), bytes.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return make_error(errc::io, "cannot write the state file {}: {}", path, std::strerror(errno));
    }
    bytes.remove_prefix(static_cast<std::size_t>(n));
  }
  return {};
}

class file_state_store final : public state_store {
public:
  static expected<std::unique_ptr<file_state_store>> open(std::string path) {
    std::unique_ptr<file_state_store> s{new file_state_store{}};
    s->path_ = std::move(path);
    std::error_code ec;
    if (const auto parent = std::filesystem::path{s->path_}.parent_path(); !parent.empty())
      std::filesystem::create_directories(parent, ec);
    s->fd_ = ::open(s->path_.c_str(), O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (s->fd_ < 0) return make_error(errc::io, "cannot open the state file {}: {}", s->path_, std::strerror(errno));
    std::string data;
    char buf[1 << 16];
    for (;;) {
      const auto n = ::read(s->fd_, buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return make_error(errc::io, "cannot read the state file {}: {}", s->path_, std::strerror(errno));
      if (n == 0) break;
      data.append(buf, static_cast<std::size_t>(n));
    }
    if (data.empty()) {
      FLEXSP_TRY(write_all(s->fd_, kMagic, s->path_));
      s->size_ = kMagic.size();
    } else {
      if (!std::string_view{data}.starts_with(kMagic))
        return make_error(errc::invalid_argument, "{} is not a flexsp state file (it does not start with '{}')", s->path_,
                          kMagic.substr(0, kMagic.size() - 1));
      const auto valid = kMagic.size() + replay(std::string_view{data}.substr(kMagic.size()), s->maps_);
      if (valid < data.size()) {
        log::get("actors")->warn("state file {}: dropping {} bytes of a record cut short at offset {}", s->path_,
                                 data.size() - valid, valid);
        if (::ftruncate(s->fd_, static_cast<off_t>(valid)) != 0)
          return make_error(errc::io, "cannot truncate the state file {}: {}", s->path_, std::strerror(errno));
      }
      s->size_ = valid;
    }
    if (::lseek(s->fd_, static_cast<off_t>(s->size_), SEEK_SET) < 0)
      return make_error(errc::io, "cannot seek in the state file {}: {}", s->path_, std::strerror(errno));
    std::lock_guard lock{s->mutex_};
    FLEXSP_TRY(s->maybe_compact());
    return s;
  }
  ~file_state_store() override {
    if (fd_ >= 0) ::close(fd_);
  }

  std::string describe() const override { return "file " + path_; }
  expected<void> put(std::string_view t, std::string_view k, std::string_view v) override {
    return record('P', {t, k, v});
  }
  expected<void> erase(std::string_view t, std::string_view k) override { return record('E', {t, k}); }
  expected<void> clear(std::string_view t) override { return record('C', {t}); }
  expected<void> append(std::string_view l, std::string_view v) override { return record('A', {l, v}); }
  expected<void> drop(std::string_view l) override { return record('D', {l}); }
  expected<std::map<std::string, std::string>> entries(std::string_view t) override {
    std::lock_guard lock{mutex_};
    return maps_.entries(t);
  }
  expected<std::vector<std::string>> items(std::string_view l) override {
    std::lock_guard lock{mutex_};
    return maps_.items(l);
  }

private:
  file_state_store() = default;

  expected<void> record(char op, std::initializer_list<std::string_view> fields) {
    const auto bytes = encode(op, fields);
    std::lock_guard lock{mutex_};
    FLEXSP_TRY(write_all(fd_, bytes, path_));
    size_ += bytes.size();
    apply(maps_, op, std::vector<std::string_view>{fields});
    return maybe_compact();
  }

  /// Rewrites the file with only live entries once dead records dominate it.
  expected<void> maybe_compact() {
    if (size_ < kCompactAbove || size_ < 4 * (maps_.bytes + 1024)) return {};
    std::string out{kMagic};
    for (const auto& [t, table] : maps_.tables)
      for (const auto& [k, v] : table) out += encode('P', {t, k, v});
    for (const auto& [l, list] : maps_.lists)
      for (const auto& v : list) out += encode('A', {l, v});
    const auto tmp = path_ + ".compact";
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) return make_error(errc::io, "cannot compact the state file {}: {}", tmp, std::strerror(errno));
    auto w = write_all(fd, out, tmp);
    if (w && ::fsync(fd) != 0) w = make_error(errc::io, "cannot sync {}: {}", tmp, std::strerror(errno));
    ::close(fd);
    if (!w) return w;
    if (::rename(tmp.c_str(), path_.c_str()) != 0)
      return make_error(errc::io, "cannot replace the state file {}: {}", path_, std::strerror(errno));
    const int fresh = ::open(path_.c_str(), O_RDWR | O_APPEND | O_CLOEXEC);
    if (fresh < 0) return make_error(errc::io, "cannot reopen the state file {}: {}", path_, std::strerror(errno));
    ::close(fd_);
    fd_ = fresh;
    log::get("actors")->info("state file {}: compacted {} -> {} bytes", path_, size_, out.size());
    size_ = out.size();
    return {};
  }

  std::string path_;
  int fd_ = -1;
  std::size_t size_ = 0;
  std::mutex mutex_;
  state_maps maps_;
};

}  // namespace

expected<std::shared_ptr<state_store>> open_state_store(std::string_view url) {
  if (url == "memory:") return std::shared_ptr<state_store>{std::make_shared<memory_state_store>()};
  if (url.starts_with("redis://")) return open_redis_state_store(url);
  std::string_view path = url;
  if (path.starts_with("file:")) path.remove_prefix(5);
  if (path.empty() || path.find("://") != std::string_view::npos)
    return make_error(errc::invalid_argument,
                      "state store '{}': expected file:PATH, a path, redis://HOST:PORT[/NAMESPACE] or memory:", url);
  FLEXSP_TRY_ASSIGN(auto f, file_state_store::open(std::string{path}));
  return std::shared_ptr<state_store>{std::move(f)};
}

}  // namespace flexsp::actors
