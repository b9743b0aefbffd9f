#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>

#include <fmt/format.h>

#include "flexsp/data/dataset.hpp"
#include "flexsp/core/check.hpp"
#include "format.hpp"

namespace flexsp::data {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

/// A read-only mapping of a whole file.
class mapped_file {
public:
  mapped_file() = default;
  mapped_file(const mapped_file&) = delete;
  mapped_file& operator=(const mapped_file&) = delete;
  mapped_file(mapped_file&& o) noexcept : data_{o.data_}, size_{o.size_} { o.data_ = nullptr, o.size_ = 0; }
  mapped_file& operator=(mapped_file&& o) noexcept {
    std::swap(data_, o.data_);
    std::swap(size_, o.size_);
    return *this;
  }
  ~mapped_file() {
    if (data_ && size_ > 0) ::munmap(const_cast<char*>(data_), size_);
  }
  static expected<mapped_file> open(const fs::path& p) {
    const int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return make_error(errc::not_found, "cannot open {}", p.string());
    struct stat st{};
    if (::fstat(fd, &st) != 0) {
      ::close(fd);
      return make_error(errc::io, "cannot stat {}", p.string());
    }
    mapped_file m;
    m.size_ = static_cast<std::size_t>(st.st_size);
    if (m.size_ > 0) {
      void* addr = ::mmap(nullptr, m.size_, PROT_READ, MAP_SHARED, fd, 0);
      if (addr == MAP_FAILED) {
        ::close(fd);
        return make_error(errc::io, "cannot map {}", p.string());
      }
      m.data_ = static_cast<const char*>(addr);
    }
    ::close(fd);
    return m;
  }
  const char* data() const { return data_; }
  std::size_t size() const { return size_; }

private:
  const char* data_ = nullptr;
  std::size_t size_ = 0;
};

/// A shard's checksum: FNV-1a 64 of its token file, then its index.
std::uint64_t checksum_of(const mapped_file& bin, const mapped_file& idx) {
  fnv1a64 sum;
  sum.add(bin.data(), bin.size());
  sum.add(idx.data(), idx.size());
  return sum.h;
}

}  // namespace

expected<void> write_atomically(const fs::path& path, const std::string& text) {
  auto tmp = path;
  tmp += ".tmp";
  {
    std::ofstream out{tmp, std::ios::trunc};
    out << text;
    if (!out.flush()) return make_error(errc::io, "cannot write {}", tmp.string());
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) return make_error(errc::io, "cannot rename {} to {}: {}", tmp.string(), path.string(), ec.message());
  return {};
}

bool verify_shard(const fs::path& dir, const shard_entry& e, int width) {
  std::error_code ec;
  const auto bin = dir / shard_bin_name(e.index), idx = dir / shard_idx_name(e.index);
  if (fs::file_size(bin, ec) != e.tokens * static_cast<std::uint64_t>(width) || ec) return false;
  if (fs::file_size(idx, ec) != 16 + 8 * (e.documents + 1) || ec) return false;
  auto b = mapped_file::open(bin);
  auto i = mapped_file::open(idx);
  return b && i && checksum_of(*b, *i) == e.checksum;
}

expected<dataset_index> read_index(const fs::path& dir) {
  const auto file = dir / "index.json";
  std::ifstream in{file};
  if (!in) {
    std::error_code ec;
    if (fs::exists(dir / "progress.json", ec))
      return make_error(errc::not_found, "{} is an unfinished dataset (prepare was interrupted; run it again to finish)",
                        dir.string());
    return make_error(errc::not_found, "{} is not a prepared dataset (no index.json)", dir.string());
  }
  const auto j = json::parse(in, nullptr, false);
  auto bad = [&](const std::string& why) {
    return make_error(errc::invalid_argument, "{}: {}", file.string(), why);
  };
  if (j.is_discarded() || !j.is_object()) return bad("not JSON");
  if (j.value("format", "") != "flexsp-tokens") return bad("not a flexsp token dataset");
  if (j.value("version", 0) != kFormatVersion) return bad(fmt::format("format version {}", j.value("version", 0)));
  try {
    dataset_index x;
    const auto& t = j.at("tokenizer");
    x.tokenizer_id = t.at("id").get<std::string>();
    x.tokenizer_kind = t.at("kind").get<std::string>();
    x.vocab_size = t.at("vocab_size").get<std::int64_t>();
    x.end_of_document = t.at("end_of_document").get<std::int32_t>();
    const auto dtype = j.at("dtype").get<std::string>();
    if (dtype != "uint16" && dtype != "uint32") return bad("dtype " + dtype);
    x.width = dtype == "uint16" ? 2 : 4;
    x.documents = j.at("documents").get<std::uint64_t>();
    x.tokens = j.at("tokens").get<std::uint64_t>();
    x.text_bytes = j.value("text_bytes", std::uint64_t{0});
    for (const auto& s : j.at("shards")) {
      auto e = shard_entry::from_json(s);
      if (!e) return bad("a shard entry is malformed");
      x.shards.push_back(*e);
    }
    if (j.contains("inputs")) x.inputs = j["inputs"].get<std::vector<std::string>>();
    return x;
  } catch (const std::exception& e) {
    return bad(e.what());
  }
}

struct dataset::impl {
  fs::path dir;
  dataset_index index;
  struct shard {
    mapped_file bin, idx;
    const std::uint64_t* offsets = nullptr;  // documents + 1
    std::uint64_t documents = 0;
  };
  std::vector<shard> shards;
  std::vector<std::uint64_t> first_doc;  // per shard, its first global document
};

dataset::dataset(std::unique_ptr<impl> p) : p_{std::move(p)} {}
dataset::~dataset() = default;

expected<std::shared_ptr<dataset>> dataset::open(const fs::path& dir, bool verify) {
  auto p = std::make_unique<impl>();
  p->dir = dir;
  FLEXSP_TRY_ASSIGN(p->index, read_index(dir));
  std::uint64_t docs = 0, tokens = 0;
  for (const auto& e : p->index.shards) {
    const auto bin_path = dir / shard_bin_name(e.index), idx_path = dir / shard_idx_name(e.index);
    impl::shard s;
    FLEXSP_TRY_ASSIGN(s.bin, mapped_file::open(bin_path));
    FLEXSP_TRY_ASSIGN(s.idx, mapped_file::open(idx_path));
    if (s.idx.size() < 16 || std::memcmp(s.idx.data(), kIndexMagic, 8) != 0)
      return make_error(errc::invalid_argument, "{}: not a document index", idx_path.string());
    std::memcpy(&s.documents, s.idx.data() + 8, 8);
    if (s.documents != e.documents || s.idx.size() != 16 + 8 * (s.documents + 1))
      return make_error(errc::invalid_argument, "{}: {} bytes for {} documents (truncated or corrupt)", idx_path.string(),
                        s.idx.size(), e.documents);
    s.offsets = reinterpret_cast<const std::uint64_t*>(s.idx.data() + 16);
    if (s.offsets[s.documents] != e.tokens || s.bin.size() != e.tokens * static_cast<std::uint64_t>(p->index.width))
      return make_error(errc::invalid_argument, "{}: {} bytes, its index says {} tokens (truncated or corrupt)",
                        bin_path.string(), s.bin.size(), e.tokens);
    for (std::uint64_t d = 0; d < s.documents; ++d)
      if (s.offsets[d] > s.offsets[d + 1])
        return make_error(errc::invalid_argument, "{}: offsets go backwards at document {}", idx_path.string(), d);
    if (verify) {
      if (checksum_of(s.bin, s.idx) != e.checksum)
        return make_error(errc::invalid_argument, "shard {} of {}: checksum mismatch (corrupt)", e.index, dir.string());
    }
    p->first_doc.push_back(docs);
    docs += s.documents;
    tokens += e.tokens;
    p->shards.push_back(std::move(s));
  }
  if (docs != p->index.documents || tokens != p->index.tokens)
    return make_error(errc::invalid_argument, "{}/index.json: totals do not match its shards", dir.string());
  return std::shared_ptr<dataset>{new dataset{std::move(p)}};
}

const fs::path& dataset::dir() const noexcept { return p_->dir; }
const std::string& dataset::tokenizer_id() const noexcept { return p_->index.tokenizer_id; }
std::int64_t dataset::vocab_size() const noexcept { return p_->index.vocab_size; }
std::uint64_t dataset::documents() const noexcept { return p_->index.documents; }
std::uint64_t dataset::tokens() const noexcept { return p_->index.tokens; }

namespace {
std::pair<std::size_t, std::uint64_t> locate(const dataset::impl& p, std::uint64_t doc) {
  FLEXSP_EXPECTS(doc < p.index.documents, "document {} of {}", doc, p.index.documents);
  const auto it = std::upper_bound(p.first_doc.begin(), p.first_doc.end(), doc);
  const auto s = static_cast<std::size_t>(it - p.first_doc.begin()) - 1;
  return {s, doc - p.first_doc[s]};
}
}  // namespace

std::uint64_t dataset::length(std::uint64_t doc) const {
  const auto [s, d] = locate(*p_, doc);
  const auto& sh = p_->shards[s];
  return sh.offsets[d + 1] - sh.offsets[d];
}

void dataset::read(std::uint64_t doc, std::uint64_t begin, std::uint64_t end, std::vector<std::int32_t>& out) const {
  const auto [s, d] = locate(*p_, doc);
  const auto& sh = p_->shards[s];
  const auto first = sh.offsets[d], n = sh.offsets[d + 1] - first;
  end = std::min(end, n);
  if (begin >= end) return;
  out.reserve(out.size() + (end - begin));
  if (p_->index.width == 2) {
    const auto* v = reinterpret_cast<const std::uint16_t*>(sh.bin.data()) + first;
    for (auto i = begin; i < end; ++i) out.push_back(v[i]);
  } else {
    const auto* v = reinterpret_cast<const std::uint32_t*>(sh.bin.data()) + first;
    for (auto i = begin; i < end; ++i) out.push_back(static_cast<std::int32_t>(v[i]));
  }
}

}  // namespace flexsp::data
