#pragma once
/// \file
/// Where a job's global batches come from. Batch `i` is a pure function of the spec and `i`,
/// so the data position saved in a checkpoint is just the next batch index, and a re-run of an
/// aborted step sees exactly the same batch.
///
/// - synthetic (`{"synthetic": "wikipedia"}`): lengths from the planner's long-tail generator,
///   scaled to the model (a length L becomes L * max_seq / 4096, clamped to [8, max_seq]); the
///   tokens are windows of a small built-in English text, so the loss can fall.
/// - a file (`{"path": F}`): JSON lines with a `text` field, or a directory of text files; every
///   document is one sequence (byte tokens, cut at max_seq); batches walk the documents in order
///   and wrap around.
/// - prepared datasets (`{"prepared": DIR}`, or a weighted `mixture` of them; `flexsp data
///   prepare`): token shards read through mmap, never whole. Each document longer than max_seq is
///   cut into max_seq pieces (`long_documents: split`) or left out (`drop`); each sequence keeps its
///   real length. Each dataset gets a fixed share of every batch (its weight, largest remainder),
///   and walks its sequences in an order shuffled by (seed, epoch): batch i reads sequences
///   [i * share, (i + 1) * share) of that stream, so resuming at a step resumes at the same document.

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "flexsp/actors/job_spec.hpp"
#include "flexsp/actors/step_protocol.hpp"
#include "flexsp/core/error.hpp"

namespace flexsp::actors {

class batch_source {
public:
  /// errc::not_found / invalid_argument for unreadable data (the message names data.path).
  static expected<std::unique_ptr<batch_source>> create(const job_spec& spec);
  /// The checks a submit makes without reading the data: prepared datasets exist and are finished,
  /// and their tokenizer's ids fit model.vocab.
  static expected<void> check(const job_spec& spec);

  training_batch batch(std::uint64_t index) const;
  /// What the job trains on, for its log (datasets, sequences, long documents split or dropped).
  std::string describe() const;

  /// The built-in text (a few paragraphs of plain English).
  static std::string_view builtin_text();

private:
  batch_source() = default;
  job_spec spec_;
  std::vector<std::int32_t> corpus_;                // synthetic: token pool
  std::vector<std::vector<std::int32_t>> documents_;  // file data: one sequence each (length + 1 ids)
  struct prepared;
  std::vector<std::shared_ptr<prepared>> prepared_;   // prepared datasets, in mixture order
  std::vector<std::uint32_t> shares_;                 // sequences per batch from each
  std::string description_;
public:
  ~batch_source();
};

}  // namespace flexsp::actors
