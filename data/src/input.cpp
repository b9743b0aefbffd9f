#include "input.hpp"

#include <fnmatch.h>
#include <zlib.h>
#include <zstd.h>

#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "utf8.hpp"

namespace flexsp::data {

namespace fs = std::filesystem;

expected<std::vector<fs::path>> list_inputs(const std::vector<fs::path>& inputs, const std::string& glob) {
  std::vector<fs::path> files;
  for (const auto& in : inputs) {
    std::error_code ec;
    if (fs::is_directory(in, ec)) {
      std::vector<fs::path> found;
      for (auto it = fs::recursive_directory_iterator{in, fs::directory_options::skip_permission_denied, ec};
           !ec && it != fs::recursive_directory_iterator{}; it.increment(ec)) {
        std::error_code e2;
        if (!it->is_regular_file(e2)) continue;
        if (::fnmatch(glob.c_str(), it->path().filename().c_str(), 0) == 0) found.push_back(it->path());
      }
      if (ec) return make_error(errc::io, "cannot list {}: {}", in.string(), ec.message());
      if (found.empty()) return make_error(errc::not_found, "{}: no file matches '{}'", in.string(), glob);
      std::sort(found.begin(), found.end());
      files.insert(files.end(), found.begin(), found.end());
    } else if (fs::is_regular_file(in, ec)) {
      files.push_back(in);
    } else {
      return make_error(errc::not_found, "input {} does not exist", in.string());
    }
  }
  return files;
}

namespace {

bool ends_with(const std::string& s, std::string_view suffix) { return s.size() >= suffix.size() && s.ends_with(suffix); }

/// The file name without a compression suffix.
std::string plain_name(const fs::path& p) {
  auto n = p.filename().string();
  for (std::string_view z : {".gz", ".zst"})
    if (ends_with(n, z)) return n.substr(0, n.size() - z.size());
  return n;
}

}  // namespace

/// Bytes of one input file, decompressed.
struct document_reader::source {
  virtual ~source() = default;
  /// Up to n bytes; 0 at the end.
  virtual expected<std::size_t> read(char* buf, std::size_t n) = 0;
  fs::path path;
  bool json_lines = false;
  std::uint64_t raw_bytes = 0;  // of the file as stored
  std::string pending;           // read but not yet consumed
  bool eof = false;
};

namespace {

struct plain_source final : document_reader::source {
  std::FILE* f = nullptr;
  ~plain_source() override {
    if (f) std::fclose(f);
  }
  expected<std::size_t> read(char* buf, std::size_t n) override {
    const auto got = std::fread(buf, 1, n, f);
    if (got < n && std::ferror(f)) return make_error(errc::io, "{}: read error", path.string());
    raw_bytes += got;
    return got;
  }
};

struct gzip_source final : document_reader::source {
  gzFile f = nullptr;
  ~gzip_source() override {
    if (f) gzclose(f);
  }
  expected<std::size_t> read(char* buf, std::size_t n) override {
    const int got = gzread(f, buf, static_cast<unsigned>(n));
    if (got < 0) {
      int err = 0;
      const char* msg = gzerror(f, &err);
      return make_error(errc::invalid_argument, "{}: corrupt gzip data: {}", path.string(), msg ? msg : "?");
    }
    raw_bytes = static_cast<std::uint64_t>(gzoffset(f));
    return static_cast<std::size_t>(got);
  }
};

struct zstd_source final : document_reader::source {
  std::FILE* f = nullptr;
  ZSTD_DCtx* dctx = ZSTD_createDCtx();
  std::vector<char> in = std::vector<char>(ZSTD_DStreamInSize());
  ZSTD_inBuffer input{in.data(), 0, 0};
  bool frame_open = false;
  ~zstd_source() override {
    if (f) std::fclose(f);
    ZSTD_freeDCtx(dctx);
  }
  expected<std::size_t> read(char* buf, std::size_t n) override {
    ZSTD_outBuffer output{buf, n, 0};
    while (output.pos == 0) {
      if (input.pos == input.size) {
        const auto got = std::fread(in.data(), 1, in.size(), f);
        if (got == 0) {
          if (std::ferror(f)) return make_error(errc::io, "{}: read error", path.string());
          if (frame_open) return make_error(errc::invalid_argument, "{}: truncated zstd data", path.string());
          return std::size_t{0};
        }
        raw_bytes += got;
        input = ZSTD_inBuffer{in.data(), got, 0};
      }
      const auto rc = ZSTD_decompressStream(dctx, &output, &input);
      if (ZSTD_isError(rc))
        return make_error(errc::invalid_argument, "{}: corrupt zstd data: {}", path.string(), ZSTD_getErrorName(rc));
      frame_open = rc != 0;
    }
    return output.pos;
  }
};

}  // namespace

document_reader::document_reader(std::vector<fs::path> files, std::string field)
    : files_{std::move(files)}, field_{std::move(field)} {}
document_reader::~document_reader() = default;

std::uint64_t document_reader::bytes_read() const noexcept { return done_bytes_ + (src_ ? src_->raw_bytes : 0); }

expected<bool> document_reader::open_next() {
  if (src_) {
    done_bytes_ += src_->raw_bytes;
    src_.reset();
  }
  if (at_ >= files_.size()) return false;
  const auto& p = files_[at_++];
  const auto name = p.filename().string();
  std::unique_ptr<source> s;
  if (ends_with(name, ".gz")) {
    auto g = std::make_unique<gzip_source>();
    g->f = gzopen(p.c_str(), "rb");
    if (!g->f) return make_error(errc::not_found, "cannot open {}", p.string());
    s = std::move(g);
  } else if (ends_with(name, ".zst")) {
    auto z = std::make_unique<zstd_source>();
    z->f = std::fopen(p.c_str(), "rb");
    if (!z->f) return make_error(errc::not_found, "cannot open {}", p.string());
    s = std::move(z);
  } else {
    auto f = std::make_unique<plain_source>();
    f->f = std::fopen(p.c_str(), "rb");
    if (!f->f) return make_error(errc::not_found, "cannot open {}", p.string());
    s = std::move(f);
  }
  s->path = p;
  const auto plain = plain_name(p);
  s->json_lines = ends_with(plain, ".jsonl") || ends_with(plain, ".json");
  src_ = std::move(s);
  line_ = 0;
  return true;
}

expected<bool> document_reader::next(std::string& out) {
  static constexpr std::size_t kChunk = 1 << 20;
  for (;;) {
    if (!src_) {
      FLEXSP_TRY_ASSIGN(const bool more, open_next());
      if (!more) return false;
    }
    auto& s = *src_;
    if (!s.json_lines) {
      // A whole text file is one document.
      out.clear();
      std::vector<char> buf(kChunk);
      for (;;) {
        FLEXSP_TRY_ASSIGN(const auto got, s.read(buf.data(), buf.size()));
        if (got == 0) break;
        out.append(buf.data(), got);
      }
      const auto path = s.path;
      FLEXSP_TRY(open_next());
      if (const auto bad = invalid_utf8_at(out); bad >= 0)
        return make_error(errc::invalid_argument, "{}: invalid UTF-8 at byte {}", path.string(), bad);
      if (out.empty()) continue;
      return true;
    }
    // JSON lines: one object per line, the document in `field`.
    for (;;) {
      auto nl = s.pending.find('\n');
      while (nl == std::string::npos && !s.eof) {
        std::string buf(kChunk, '\0');
        FLEXSP_TRY_ASSIGN(const auto got, s.read(buf.data(), buf.size()));
        if (got == 0) {
          s.eof = true;
          break;
        }
        const auto old = s.pending.size();
        s.pending.append(buf.data(), got);
        nl = s.pending.find('\n', old);
      }
      if (nl == std::string::npos && s.pending.empty()) break;  // end of this file
      std::string line = nl == std::string::npos ? std::move(s.pending) : s.pending.substr(0, nl);
      s.pending.erase(0, nl == std::string::npos ? s.pending.size() : nl + 1);
      ++line_;
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(line);
      } catch (const nlohmann::json::exception& e) {
        return make_error(errc::invalid_argument, "{}:{}: not a JSON object: {}", s.path.string(), line_, e.what());
      }
      if (!j.is_object() || !j.contains(field_) || !j[field_].is_string())
        return make_error(errc::invalid_argument, "{}:{}: no string field \"{}\"", s.path.string(), line_, field_);
      out = j[field_].get<std::string>();
      if (out.empty()) continue;
      return true;
    }
    FLEXSP_TRY(open_next());
  }
}

}  // namespace flexsp::data
