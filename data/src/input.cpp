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
  // Comma-separated patterns: a file matching any of them is taken.
  std::vector<std::string> patterns;
  for (std::size_t b = 0; b <= glob.size();) {
    const auto e = std::min(glob.find(',', b), glob.size());
    if (e > b) patterns.push_back(glob.substr(b, e - b));
    b = e + 1;
  }
  if (patterns.empty()) patterns.push_back("*");
  auto matches = [&](const std::string& name) {
    return std::any_of(patterns.begin(), patterns.end(),
                       [&](const std::string& p) { return ::fnmatch(p.c_str(), name.c_str(), 0) == 0; });
  };
  std::vector<fs::path> files;
  for (const auto& in : inputs) {
    std::error_code ec;
    if (fs::is_directory(in, ec)) {
      std::vector<fs::path> found;
      for (auto it = fs::recursive_directory_iterator{in, fs::directory_options::skip_permission_denied, ec};
           !ec && it != fs::recursive_directory_iterator{}; it.increment(ec)) {
        std::error_code e2;
        if (!it->is_regular_file(e2)) continue;
        if (matches(it->path().filename().string())) found.push_back(it->path());
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

/// Appends the UTF-8 encoding of code point `cp`.
void append_utf8(std::string& out, std::uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xc0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xe0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  } else {
    out += static_cast<char>(0xf0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3f));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  }
}

/// A fast reader of one string field of a JSON object on one line, for the common case; any
/// surprise (malformed JSON, a non-string field, a missing one) returns false and the caller
/// parses the line with the full JSON parser, which also words the error.
class field_scanner {
public:
  field_scanner(std::string_view s, std::string_view field) : s_{s}, field_{field} {}
  bool run(std::string& out) {
    ws();
    if (!eat('{')) return false;
    ws();
    if (eat('}')) return false;
    bool found = false;
    for (;;) {
      std::string key;
      ws();
      if (!string(&key)) return false;
      ws();
      if (!eat(':')) return false;
      ws();
      if (key == field_) {
        if (found) return false;  // a repeated key: the full parser decides which counts
        out.clear();
        if (!string(&out)) return false;
        found = true;
      } else if (!skip_value()) {
        return false;
      }
      ws();
      if (eat(',')) continue;
      if (!eat('}')) return false;
      ws();
      return found && i_ == s_.size();
    }
  }

private:
  void ws() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\r' || s_[i_] == '\n')) ++i_;
  }
  bool eat(char c) {
    if (i_ < s_.size() && s_[i_] == c) {
      ++i_;
      return true;
    }
    return false;
  }
  int hex4() {
    if (i_ + 4 > s_.size()) return -1;
    int v = 0;
    for (int k = 0; k < 4; ++k) {
      const char c = s_[i_++];
      v = v * 16 + (c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1000);
    }
    return v < 0 ? -1 : v;
  }
  /// A JSON string; decoded into `out` when given.
  bool string(std::string* out) {
    if (!eat('"')) return false;
    for (;;) {
      const auto start = i_;
      while (i_ < s_.size() && s_[i_] != '"' && s_[i_] != '\\' && static_cast<unsigned char>(s_[i_]) >= 0x20) ++i_;
      if (out) out->append(s_.data() + start, i_ - start);
      if (i_ >= s_.size() || static_cast<unsigned char>(s_[i_]) < 0x20) return false;
      if (s_[i_++] == '"') return true;
      if (i_ >= s_.size()) return false;
      const char e = s_[i_++];
      char plain = 0;
      switch (e) {
        case '"': plain = '"'; break;
        case '\\': plain = '\\'; break;
        case '/': plain = '/'; break;
        case 'b': plain = '\b'; break;
        case 'f': plain = '\f'; break;
        case 'n': plain = '\n'; break;
        case 'r': plain = '\r'; break;
        case 't': plain = '\t'; break;
        case 'u': {
          int cp = hex4();
          if (cp < 0) return false;
          if (cp >= 0xd800 && cp <= 0xdbff) {  // a surrogate pair
            if (!eat('\\') || !eat('u')) return false;
            const int lo = hex4();
            if (lo < 0xdc00 || lo > 0xdfff) return false;
            cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
          } else if (cp >= 0xdc00 && cp <= 0xdfff) {
            return false;
          }
          if (out) append_utf8(*out, static_cast<std::uint32_t>(cp));
          continue;
        }
        default: return false;
      }
      if (out) *out += plain;
    }
  }
  bool skip_value() {
    if (i_ >= s_.size()) return false;
    const char c = s_[i_];
    if (c == '"') return string(nullptr);
    if (c == '{' || c == '[') {
      int depth = 0;
      while (i_ < s_.size()) {
        const char d = s_[i_];
        if (d == '"') {
          if (!string(nullptr)) return false;
          continue;
        }
        if (d == '{' || d == '[') ++depth;
        if (d == '}' || d == ']') {
          if (--depth == 0) {
            ++i_;
            return true;
          }
        }
        ++i_;
      }
      return false;
    }
    // A number or a literal: up to the next delimiter (the full parser judges it if it is odd).
    const auto start = i_;
    while (i_ < s_.size() && s_[i_] != ',' && s_[i_] != '}' && s_[i_] != ' ' && s_[i_] != '\t') ++i_;
    return i_ > start;
  }

  std::string_view s_, field_;
  std::size_t i_ = 0;
};

}  // namespace

/// Bytes of one input file, decompressed.
struct document_reader::source {
  virtual ~source() = default;
  /// Up to n bytes; 0 at the end.
  virtual expected<std::size_t> read(char* buf, std::size_t n) = 0;
  fs::path path;
  bool json_lines = false;
  std::string pending;           // read; bytes before `at` are consumed
  std::size_t at = 0;
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

document_reader::document_reader(std::vector<fs::path> files, std::string field, bool skip_invalid)
    : files_{std::move(files)}, field_{std::move(field)}, skip_invalid_{skip_invalid} {}
document_reader::~document_reader() = default;


expected<bool> document_reader::open_next() {
  src_.reset();
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
      if (const auto bad = invalid_utf8_at(out); bad >= 0) {
        if (skip_invalid_) {
          ++skipped_;
          continue;
        }
        return make_error(errc::invalid_argument, "{}: invalid UTF-8 at byte {}", path.string(), bad);
      }
      if (out.empty()) continue;
      return true;
    }
    // JSON lines: one object per line, the document in `field`. Lines are cut out of `pending`
    // in place (`at` moves along it); it is compacted only when more bytes are read.
    for (;;) {
      auto nl = s.pending.find('\n', s.at);
      while (nl == std::string::npos && !s.eof) {
        s.pending.erase(0, s.at);
        s.at = 0;
        const auto old = s.pending.size();
        s.pending.resize(old + kChunk);
        FLEXSP_TRY_ASSIGN(const auto got, s.read(s.pending.data() + old, kChunk));
        s.pending.resize(old + got);
        if (got == 0) {
          s.eof = true;
          break;
        }
        nl = s.pending.find('\n', old);
      }
      if (nl == std::string::npos && s.at >= s.pending.size()) break;  // end of this file
      const auto end = nl == std::string::npos ? s.pending.size() : nl;
      const std::string_view line{s.pending.data() + s.at, end - s.at};
      s.at = nl == std::string::npos ? s.pending.size() : nl + 1;
      ++line_;
      if (line.find_first_not_of(" \t\r") == std::string_view::npos) continue;
      if (field_scanner{line, field_}.run(out)) {
        if (const auto bad = invalid_utf8_at(out); bad >= 0) {
          if (skip_invalid_) {
            ++skipped_;
            continue;
          }
          return make_error(errc::invalid_argument, "{}:{}: invalid UTF-8 in \"{}\" at byte {}", s.path.string(), line_,
                            field_, bad);
        }
        if (out.empty()) continue;
        return true;
      }
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(line.begin(), line.end());
      } catch (const nlohmann::json::exception& e) {
        if (skip_invalid_ && invalid_utf8_at(line) >= 0) {
          ++skipped_;
          continue;
        }
        return make_error(errc::invalid_argument, "{}:{}: not a JSON object: {}", s.path.string(), line_, e.what());
      }
      auto it = j.is_object() ? j.find(field_) : j.end();
      if (!j.is_object() || it == j.end() || !it->is_string())
        return make_error(errc::invalid_argument, "{}:{}: no string field \"{}\"", s.path.string(), line_, field_);
      out = std::move(it->get_ref<std::string&>());
      if (out.empty()) continue;
      return true;
    }
    FLEXSP_TRY(open_next());
  }
}

}  // namespace flexsp::data
