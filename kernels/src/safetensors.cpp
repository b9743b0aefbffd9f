#include "flexsp/kernels/safetensors.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>

#include <nlohmann/json.hpp>

#include "flexsp/kernels/ops.hpp"

namespace flexsp::kernels {

namespace {

std::size_t element_bytes(st_dtype t) { return t == st_dtype::f32 ? 4 : 2; }
std::string_view dtype_name(st_dtype t) { return t == st_dtype::f32 ? "F32" : t == st_dtype::bf16 ? "BF16" : "F16"; }

float from_f16(std::uint16_t h) {
  const std::uint32_t sign = (h >> 15) & 1u, exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
  float v;
  if (exp == 0)
    v = std::ldexp(static_cast<float>(mant), -24);
  else if (exp == 31)
    v = mant ? std::nanf("") : INFINITY;
  else
    v = std::ldexp(static_cast<float>(mant | 0x400u), static_cast<int>(exp) - 25);
  return sign ? -v : v;
}

std::int64_t numel(const std::vector<std::int64_t>& shape) {
  std::int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

}  // namespace

expected<void> write_safetensors(const std::filesystem::path& path, const st_file& file, st_dtype type) {
  if (type == st_dtype::f16) return make_error(errc::invalid_argument, "safetensors: writing F16 is not supported");
  const std::size_t eb = element_bytes(type);
  nlohmann::json header = nlohmann::json::object();
  std::size_t offset = 0;
  for (const auto& [name, t] : file.tensors) {
    if (name.empty() || name == "__metadata__")
      return make_error(errc::invalid_argument, "safetensors: bad tensor name '{}'", name);
    if (numel(t.shape) != static_cast<std::int64_t>(t.values.size()))
      return make_error(errc::invalid_argument, "safetensors: tensor '{}' holds {} values for a shape of {}", name,
                        t.values.size(), numel(t.shape));
    const std::size_t bytes = t.values.size() * eb;
    header[name] = {{"dtype", std::string{dtype_name(type)}}, {"shape", t.shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  if (!file.metadata.empty()) header["__metadata__"] = file.metadata;
  std::string text = header.dump();
  while (text.size() % 8 != 0) text.push_back(' ');
  std::string out;
  out.reserve(8 + text.size() + offset);
  const std::uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  out += text;
  for (const auto& [name, t] : file.tensors) {
    if (type == st_dtype::f32) {
      for (float v : t.values) {
        char b[4];
        std::memcpy(b, &v, 4);  // little-endian hosts only (x86-64, aarch64)
        out.append(b, 4);
      }
    } else {
      for (float v : t.values) {
        const std::uint16_t h = to_bf16(v);
        out.push_back(static_cast<char>(h & 0xff));
        out.push_back(static_cast<char>(h >> 8));
      }
    }
  }
  auto tmp = path;
  tmp += ".tmp";
  {
    std::ofstream f{tmp, std::ios::binary | std::ios::trunc};
    f.write(out.data(), static_cast<std::streamsize>(out.size()));
    f.flush();
    if (!f) return make_error(errc::io, "cannot write {}", tmp.string());
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) return make_error(errc::io, "cannot rename {} to {}: {}", tmp.string(), path.string(), ec.message());
  return {};
}

expected<st_file> read_safetensors(const std::filesystem::path& path) {
  std::ifstream in{path, std::ios::binary};
  if (!in) return make_error(errc::not_found, "{} cannot be opened", path.string());
  std::string buf{std::istreambuf_iterator<char>{in}, std::istreambuf_iterator<char>{}};
  const auto where = path.string();
  if (buf.size() < 8) return make_error(errc::invalid_argument, "{}: shorter than a safetensors header", where);
  std::uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<std::uint64_t>(static_cast<unsigned char>(buf[i])) << (8 * i);
  if (n > buf.size() - 8 || n > (std::uint64_t{100} << 20))
    return make_error(errc::invalid_argument, "{}: header length {} does not fit the file ({} bytes)", where, n,
                      buf.size());
  auto header = nlohmann::json::parse(std::string_view{buf}.substr(8, n), nullptr, false);
  if (!header.is_object()) return make_error(errc::invalid_argument, "{}: the header is not a JSON object", where);
  const std::size_t data_start = 8 + n, data_size = buf.size() - data_start;
  st_file out;
  std::vector<std::pair<std::uint64_t, std::uint64_t>> spans;
  for (const auto& [name, e] : header.items()) {
    if (name == "__metadata__") {
      if (!e.is_object()) return make_error(errc::invalid_argument, "{}: __metadata__ is not an object", where);
      for (const auto& [k, v] : e.items())
        if (v.is_string()) out.metadata[k] = v.get<std::string>();
      continue;
    }
    if (!e.is_object() || !e.contains("dtype") || !e.contains("shape") || !e.contains("data_offsets") ||
        !e["dtype"].is_string() || !e["shape"].is_array() || !e["data_offsets"].is_array() ||
        e["data_offsets"].size() != 2)
      return make_error(errc::invalid_argument, "{}: tensor '{}' lacks dtype, shape or data_offsets", where, name);
    st_tensor t;
    const auto dt = e["dtype"].get<std::string>();
    if (dt == "F32") t.stored = st_dtype::f32;
    else if (dt == "BF16") t.stored = st_dtype::bf16;
    else if (dt == "F16") t.stored = st_dtype::f16;
    else return make_error(errc::invalid_argument, "{}: tensor '{}' has dtype {} (F32, BF16 and F16 are read)", where, name, dt);
    for (const auto& d : e["shape"]) {
      if (!d.is_number_unsigned()) return make_error(errc::invalid_argument, "{}: tensor '{}' has a bad shape", where, name);
      t.shape.push_back(d.get<std::int64_t>());
    }
    const auto& off = e["data_offsets"];
    if (!off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      return make_error(errc::invalid_argument, "{}: tensor '{}' has bad data_offsets", where, name);
    const auto begin = off[0].get<std::uint64_t>(), end = off[1].get<std::uint64_t>();
    const auto count = numel(t.shape);
    if (begin > end || end > data_size || end - begin != static_cast<std::uint64_t>(count) * element_bytes(t.stored))
      return make_error(errc::invalid_argument, "{}: tensor '{}' spans bytes [{}, {}) of {} for {} {} values", where,
                        name, begin, end, data_size, count, dt);
    spans.emplace_back(begin, end);
    t.values.resize(static_cast<std::size_t>(count));
    const char* p = buf.data() + data_start + begin;
    for (std::int64_t i = 0; i < count; ++i) {
      if (t.stored == st_dtype::f32) {
        std::memcpy(&t.values[static_cast<std::size_t>(i)], p + 4 * i, 4);
      } else {
        const auto h = static_cast<std::uint16_t>(static_cast<unsigned char>(p[2 * i]) |
                                                  (static_cast<unsigned char>(p[2 * i + 1]) << 8));
        t.values[static_cast<std::size_t>(i)] = t.stored == st_dtype::bf16 ? from_bf16(h) : from_f16(h);
      }
    }
    out.tensors.emplace(name, std::move(t));
  }
  std::sort(spans.begin(), spans.end());
  for (std::size_t i = 1; i < spans.size(); ++i)
    if (spans[i].first < spans[i - 1].second)
      return make_error(errc::invalid_argument, "{}: tensors overlap at byte {}", where, spans[i].first);
  return out;
}

}  // namespace flexsp::kernels
