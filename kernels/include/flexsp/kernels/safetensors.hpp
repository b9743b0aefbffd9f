#pragma once
/// \file
/// The safetensors format (Hugging Face): an 8-byte little-endian header length N, N bytes of
/// JSON ({"<name>": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
/// "__metadata__": {"<key>": "<text>"}}, padded with spaces to a multiple of 8), then the raw
/// little-endian tensor bytes; offsets are relative to the end of the header. Written against
/// the format's specification; F32 and BF16 are read and written, F16 is read.
///
/// Tensors are held as fp32 in memory whatever their stored type (BF16 rounds to nearest even on
/// writing and widens exactly on reading).

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "flexsp/core/error.hpp"

namespace flexsp::kernels {

/// Element types of a stored tensor.
enum class st_dtype : std::uint8_t { f32, bf16, f16 };

struct st_tensor {
  std::vector<std::int64_t> shape;
  std::vector<float> values;  ///< row-major, product(shape) values
  st_dtype stored = st_dtype::f32;
};

struct st_file {
  std::map<std::string, st_tensor> tensors;
  std::map<std::string, std::string> metadata;
};

/// Writes `file` to `path` (atomically: a temporary file renamed) storing every tensor as
/// `type` (f32 or bf16). errc::invalid_argument for a tensor whose values do not match its shape
/// or an f16 request; errc::io when the file cannot be written.
expected<void> write_safetensors(const std::filesystem::path& path, const st_file& file, st_dtype type);

/// Reads and checks a safetensors file: header length and JSON, every tensor's dtype (F32, BF16,
/// F16), shape, and offsets (inside the data, matching dtype x elements, not overlapping).
/// errc::not_found for a missing file, errc::invalid_argument naming what is wrong otherwise.
expected<st_file> read_safetensors(const std::filesystem::path& path);

}  // namespace flexsp::kernels
