#pragma once
/// \file
/// Interchange with the Hugging Face ecosystem: a model directory (`config.json` +
/// `model.safetensors`) with the names and layouts of `GPT2LMHeadModel` (gpt2 family) or
/// `LlamaForCausalLM` (llama family), which `transformers` loads with `from_pretrained`.
///
/// Layouts: flexsp keeps every projection as [in, out] (y = x W). GPT-2's Conv1D weights are
/// [in, out] too, so they are copied; LLaMA's Linear weights are [out, in], so they are
/// transposed, and the fused Q/K/V and gate/up projections are split into q_proj, k_proj,
/// v_proj, gate_proj and up_proj. Rotary embeddings use Hugging Face's rotate-half pairing, so
/// no permutation of Q or K is needed. GPT-2's output head is tied to `transformer.wte.weight`
/// (not stored twice). Exporting and importing again gives back the same bits in fp32.

#include <filesystem>
#include <vector>

#include "flexsp/core/error.hpp"
#include "flexsp/kernels/model.hpp"
#include "flexsp/kernels/safetensors.hpp"

namespace flexsp::kernels {

/// Writes `config` and the flat parameters `params` (model::parameters() order) to `dir`
/// (created if missing) as config.json + model.safetensors, tensors stored as `type` (f32 or
/// bf16). errc::io when a file cannot be written.
expected<void> export_hugging_face(const model_config& config, std::span<const float> params,
                                   const std::filesystem::path& dir, st_dtype type);

/// A model read from a Hugging Face directory.
struct imported_model {
  model_config config;
  std::vector<float> params;  ///< flat, in model::parameters() order
};

/// Reads `dir`/config.json and `dir`/model.safetensors of a GPT2LMHeadModel or LlamaForCausalLM.
/// errc::not_found for a missing file; errc::invalid_argument naming the key or tensor that is
/// missing, of the wrong shape, or of an architecture this build does not train.
expected<imported_model> import_hugging_face(const std::filesystem::path& dir);

}  // namespace flexsp::kernels
