#include "flexsp/scheduler/dataset.hpp"

#include <zlib.h>

#include <algorithm>
#include <memory>
#include <sstream>
#include <string_view>

#include "flexsp/core/config.hpp"

namespace flexsp::scheduler {
namespace {

struct gz_closer {
  void operator()(gzFile f) const { gzclose(f); }
};

expected<void> parse_line(std::string_view line, const std::string& source, std::size_t line_no,
                          std::vector<std::int64_t>& out) {
  while (!line.empty() && (line.back() == '\r' || line.back() == ' ' || line.back() == '\t')) line.remove_suffix(1);
  while (!line.empty() && (line.front() == ' ' || line.front() == '\t')) line.remove_prefix(1);
  if (line.empty() || line.front() == '#') return {};
  auto v = parse_int(line);
  if (!v || *v < 1)
    return make_error(errc::invalid_argument, "{}:{}: '{}' is not a sequence length (an integer >= 1)", source, line_no,
                      line.substr(0, 40));
  out.push_back(*v);
  return {};
}

}  // namespace

expected<std::vector<std::int64_t>> read_lengths(std::istream& in, const std::string& source) {
  std::vector<std::int64_t> out;
  std::string line;
  std::size_t line_no = 0;
  while (std::getline(in, line)) FLEXSP_TRY(parse_line(line, source, ++line_no, out));
  if (in.bad()) return make_error(errc::io, "{}: read error", source);
  return out;
}

expected<std::vector<std::int64_t>> read_lengths_file(const std::string& path) {
  // gzread passes plain files through unchanged, so one reader serves both
  std::unique_ptr<gzFile_s, gz_closer> f{gzopen(path.c_str(), "rb")};
  if (!f) return make_error(errc::not_found, "cannot open lengths file '{}'", path);
  std::vector<std::int64_t> out;
  std::string pending;
  std::size_t line_no = 0;
  std::vector<char> buf(1 << 16);
  for (;;) {
    const int n = gzread(f.get(), buf.data(), static_cast<unsigned>(buf.size()));
    if (n < 0) {
      int err = 0;
      const char* msg = gzerror(f.get(), &err);
      return make_error(errc::io, "{}: decompression failed: {}", path, msg ? msg : "unknown error");
    }
    if (n == 0) break;
    std::string_view chunk{buf.data(), static_cast<std::size_t>(n)};
    std::size_t pos = 0;
    while (pos < chunk.size()) {
      const auto nl = chunk.find('\n', pos);
      if (nl == std::string_view::npos) {
        pending.append(chunk.substr(pos));
        break;
      }
      pending.append(chunk.substr(pos, nl - pos));
      FLEXSP_TRY(parse_line(pending, path, ++line_no, out));
      pending.clear();
      pos = nl + 1;
    }
  }
  if (!pending.empty()) FLEXSP_TRY(parse_line(pending, path, ++line_no, out));
  return out;
}

std::vector<std::vector<std::int64_t>> paper_batches(const std::vector<std::int64_t>& lengths, int pad_multiple,
                                                     std::int64_t context_limit, std::size_t batch_size,
                                                     std::size_t start, std::size_t count, std::size_t* dropped) {
  std::vector<std::vector<std::int64_t>> out;
  if (dropped) *dropped = 0;
  if (batch_size == 0 || count == 0) return out;
  const std::int64_t pad = std::max(1, pad_multiple);
  const std::size_t skip = start * batch_size;
  std::size_t kept = 0;
  std::vector<std::int64_t> current;
  for (auto s : lengths) {
    const auto padded = (s + pad - 1) / pad * pad;
    if (padded > context_limit) {
      if (dropped) ++*dropped;
      continue;
    }
    if (kept++ < skip) continue;
    current.push_back(padded);
    if (current.size() == batch_size) {
      out.push_back(std::move(current));
      current.clear();
      if (out.size() == count) break;
    }
  }
  return out;
}

}  // namespace flexsp::scheduler
