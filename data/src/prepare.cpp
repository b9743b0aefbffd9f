#include <algorithm>
#include <bit>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <cstdio>
#include <fstream>
#include <map>
#include <mutex>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "flexsp/data/dataset.hpp"
#include "format.hpp"
#include "input.hpp"

namespace flexsp::data {

namespace fs = std::filesystem;
using json = nlohmann::json;

static_assert(std::endian::native == std::endian::little, "token shards are written little-endian");

namespace {

/// Text read together and tokenized by one worker (an eighth of a shard, at most 4 MiB); shards end
/// on batch boundaries, so the output depends on the inputs and settings alone, not on the thread
/// count.
std::uint64_t batch_bytes_for(std::uint64_t shard_bytes) {
  return std::clamp<std::uint64_t>(shard_bytes / 8, 1, 4 << 20);
}

struct text_batch {
  std::uint64_t seq = 0;
  std::vector<std::string> documents;
  std::uint64_t bytes = 0;
};

struct token_batch {
  std::vector<std::int32_t> ids;
  std::vector<std::uint64_t> lengths;
  std::uint64_t bytes = 0;
};

/// The settings a resumed run must share with the interrupted one.
json fingerprint_of(const tokenizer& tok, const std::vector<fs::path>& files, const prepare_options& o) {
  json f = json::array();
  for (const auto& p : files) {
    std::error_code ec;
    f.push_back({p.string(), fs::file_size(p, ec)});
  }
  return {{"tokenizer", tok.id()}, {"files", f},
          {"field", o.field},        {"glob", o.glob},
          {"shard_bytes", o.shard_bytes}, {"skip_invalid_utf8", o.skip_invalid_utf8}};
}

/// One shard being written: its two files (as .tmp until closed) and running checksums.
class shard_writer {
public:
  shard_writer(fs::path dir, std::uint32_t index, int width) : dir_{std::move(dir)}, index_{index}, width_{width} {
    bin_path_ = dir_ / shard_bin_name(index);
    bin_path_ += ".tmp";
    bin_ = std::fopen(bin_path_.c_str(), "wb");
    offsets_.push_back(0);
  }
  ~shard_writer() {
    if (bin_) std::fclose(bin_);
  }
  bool ok() const { return bin_ != nullptr; }
  expected<void> add(const token_batch& b) {
    std::size_t at = 0;
    std::vector<char> out;
    for (auto len : b.lengths) {
      out.resize(len * static_cast<std::size_t>(width_));
      for (std::size_t i = 0; i < len; ++i) {
        const auto v = static_cast<std::uint32_t>(b.ids[at + i]);
        if (width_ == 2) {
          const auto w = static_cast<std::uint16_t>(v);
          std::memcpy(out.data() + 2 * i, &w, 2);
        } else {
          std::memcpy(out.data() + 4 * i, &v, 4);
        }
      }
      at += len;
      if (std::fwrite(out.data(), 1, out.size(), bin_) != out.size())
        return make_error(errc::io, "cannot write {}", bin_path_.string());
      sum_.add(out.data(), out.size());
      offsets_.push_back(offsets_.back() + len);
    }
    text_bytes_ += b.bytes;
    return {};
  }
  std::uint64_t text_bytes() const { return text_bytes_; }
  /// Writes the index, renames both files into place and returns the shard's entry.
  expected<shard_entry> close() {
    if (std::fflush(bin_) != 0 || std::fclose(bin_) != 0) {
      bin_ = nullptr;
      return make_error(errc::io, "cannot write {}", bin_path_.string());
    }
    bin_ = nullptr;
    const auto idx_bytes = encode_offsets(offsets_);
    auto idx_tmp = dir_ / shard_idx_name(index_);
    idx_tmp += ".tmp";
    {
      std::ofstream idx{idx_tmp, std::ios::binary | std::ios::trunc};
      idx.write(idx_bytes.data(), static_cast<std::streamsize>(idx_bytes.size()));
      if (!idx.flush()) return make_error(errc::io, "cannot write {}", idx_tmp.string());
    }
    sum_.add(idx_bytes.data(), idx_bytes.size());
    std::error_code ec;
    fs::rename(bin_path_, dir_ / shard_bin_name(index_), ec);
    if (!ec) fs::rename(idx_tmp, dir_ / shard_idx_name(index_), ec);
    if (ec) return make_error(errc::io, "cannot move shard {} into place: {}", index_, ec.message());
    shard_entry e;
    e.index = index_;
    e.documents = offsets_.size() - 1;
    e.tokens = offsets_.back();
    e.checksum = sum_.h;
    e.text_bytes = text_bytes_;
    return e;
  }

private:
  fs::path dir_, bin_path_;
  std::uint32_t index_;
  int width_;
  std::FILE* bin_ = nullptr;
  std::vector<std::uint64_t> offsets_;
  fnv1a64 sum_;
  std::uint64_t text_bytes_ = 0;
};

}  // namespace

expected<prepare_result> prepare(const tokenizer& tok, const prepare_options& o) {
  const auto t0 = std::chrono::steady_clock::now();
  if (o.out.empty()) return make_error(errc::invalid_argument, "prepare: no output directory");
  FLEXSP_TRY_ASSIGN(const auto files, list_inputs(o.inputs, o.glob));
  std::error_code ec;
  if (fs::exists(o.out / "index.json", ec))
    return make_error(errc::invalid_argument, "{} already holds a prepared dataset; remove it or choose another --out",
                      o.out.string());
  fs::create_directories(o.out, ec);
  if (ec) return make_error(errc::io, "cannot create {}: {}", o.out.string(), ec.message());
  const int width = tok.vocab_size() <= 65536 ? 2 : 4;
  const auto config = fingerprint_of(tok, files, o);

  // An interrupted run left progress.json: keep the shards it recorded (if they check out).
  std::vector<shard_entry> shards;
  std::uint64_t batches_done = 0;
  prepare_result result;
  if (std::ifstream in{o.out / "progress.json"}; in) {
    const auto p = json::parse(in, nullptr, false);
    if (p.is_discarded() || !p.is_object() || !p.contains("config"))
      return make_error(errc::invalid_argument, "{}/progress.json is unreadable; remove the directory", o.out.string());
    if (p["config"] != config)
      return make_error(errc::invalid_argument,
                        "{} holds an unfinished dataset of other inputs or settings; remove it or choose another --out",
                        o.out.string());
    for (const auto& s : p["shards"]) {
      auto e = shard_entry::from_json(s);
      if (!e || !verify_shard(o.out, *e, width)) break;
      shards.push_back(*e);
      batches_done = s.value("batches_end", std::uint64_t{0});
    }
    result.resumed_shards = static_cast<std::uint32_t>(shards.size());
  }
  auto write_progress = [&]() -> expected<void> {
    json p{{"config", config}, {"shards", json::array()}};
    for (const auto& s : shards) {
      auto j = s.to_json();
      j["batches_end"] = s.batches_end;
      p["shards"].push_back(j);
    }
    return write_atomically(o.out / "progress.json", p.dump(1));
  };

  // Reader -> workers (tokenize) -> this thread (writes in order).
  const int threads = o.threads > 0 ? o.threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  std::mutex mutex;
  std::condition_variable cv;
  std::deque<text_batch> todo;
  std::map<std::uint64_t, expected<token_batch>> done;
  bool reading_done = false, stop = false;
  std::uint64_t batches_read = 0;
  std::optional<error> read_error;
  document_reader reader{files, o.field, o.skip_invalid_utf8};
  const auto batch_bytes = batch_bytes_for(o.shard_bytes);
  std::thread read_thread{[&] {
    text_batch b;
    auto flush = [&] {
      std::unique_lock lock{mutex};
      cv.wait(lock, [&] { return stop || todo.size() < static_cast<std::size_t>(2 * threads); });
      if (!stop) {
        b.seq = batches_read++;
        if (b.seq >= batches_done) todo.push_back(std::move(b));  // earlier ones are in the kept shards
        cv.notify_all();
      }
      b = text_batch{};
    };
    std::string doc;
    for (;;) {
      auto more = reader.next(doc);
      if (!more) {
        std::lock_guard lock{mutex};
        read_error = more.error();
        break;
      }
      if (!*more) break;
      b.bytes += doc.size();
      b.documents.push_back(std::move(doc));
      if (b.bytes >= batch_bytes) flush();
      std::lock_guard lock{mutex};
      if (stop) break;
    }
    if (!b.documents.empty()) flush();
    std::lock_guard lock{mutex};
    reading_done = true;
    cv.notify_all();
  }};
  std::vector<std::thread> workers;
  for (int w = 0; w < threads; ++w)
    workers.emplace_back([&] {
      for (;;) {
        text_batch b;
        {
          std::unique_lock lock{mutex};
          cv.wait(lock, [&] { return stop || !todo.empty() || reading_done; });
          if (stop || (todo.empty() && reading_done)) return;
          b = std::move(todo.front());
          todo.pop_front();
          cv.notify_all();
        }
        token_batch t;
        t.bytes = b.bytes;
        expected<void> ok{};
        for (std::size_t d = 0; d < b.documents.size() && ok; ++d) {
          const auto before = t.ids.size();
          ok = tok.encode(b.documents[d], t.ids);
          if (!ok) {
            ok = make_error(ok.error().kind(), "document {} of batch {}: {}", d, b.seq, ok.error().message());
            break;
          }
          if (tok.end_of_document() >= 0) t.ids.push_back(tok.end_of_document());
          t.lengths.push_back(t.ids.size() - before);
        }
        std::lock_guard lock{mutex};
        if (ok)
          done.emplace(b.seq, std::move(t));
        else
          done.emplace(b.seq, unexpected<error>{ok.error()});
        cv.notify_all();
      }
    });
  auto finish_threads = [&] {
    {
      std::lock_guard lock{mutex};
      stop = true;
      cv.notify_all();
    }
    read_thread.join();
    for (auto& w : workers) w.join();
  };

  std::optional<shard_writer> current;
  expected<void> status{};
  bool stopped = false;
  for (const auto& s : shards) {
    result.documents += s.documents;
    result.tokens += s.tokens;
    result.text_bytes += s.text_bytes;
  }
  for (std::uint64_t seq = batches_done;; ++seq) {
    expected<token_batch> got = make_error(errc::failed, "no batch");
    {
      std::unique_lock lock{mutex};
      cv.wait(lock, [&] { return done.count(seq) || (reading_done && todo.empty() && batches_read <= seq) || read_error; });
      if (read_error && !done.count(seq)) {
        status = unexpected<error>{*read_error};
        break;
      }
      auto it = done.find(seq);
      if (it == done.end()) break;  // every batch written
      got = std::move(it->second);
      done.erase(it);
    }
    if (!got) {
      status = unexpected<error>{got.error()};
      break;
    }
    if (!current) {
      current.emplace(o.out, static_cast<std::uint32_t>(shards.size()), width);
      if (!current->ok()) {
        status = make_error(errc::io, "cannot write into {}", o.out.string());
        break;
      }
    }
    if (auto r = current->add(*got); !r) {
      status = r;
      break;
    }
    result.documents += got->lengths.size();
    result.tokens += got->ids.size();
    result.text_bytes += got->bytes;
    if (o.progress) o.progress(result.text_bytes, result.tokens, result.documents);
    if (current->text_bytes() >= o.shard_bytes) {
      auto e = current->close();
      current.reset();
      if (!e) {
        status = unexpected<error>{e.error()};
        break;
      }
      e->batches_end = seq + 1;
      shards.push_back(*e);
      if (auto w = write_progress(); !w) {
        status = w;
        break;
      }
      if (o.stop_after_shards > 0 && shards.size() - result.resumed_shards >= o.stop_after_shards) {
        stopped = true;
        break;
      }
    }
  }
  finish_threads();
  result.skipped = reader.skipped();
  if (!status) return unexpected<error>{status.error()};
  if (stopped) {
    result.shards = static_cast<std::uint32_t>(shards.size());
    result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    result.finished = false;
    return result;
  }
  if (current) {
    FLEXSP_TRY_ASSIGN(auto e, current->close());
    shards.push_back(e);
  }
  if (result.documents == 0) return make_error(errc::invalid_argument, "the inputs hold no documents");
  dataset_index index;
  index.tokenizer_id = tok.id();
  index.tokenizer_kind = std::string{tok.kind()};
  index.vocab_size = tok.vocab_size();
  index.end_of_document = tok.end_of_document();
  index.width = width;
  index.shards = shards;
  index.documents = result.documents;
  index.tokens = result.tokens;
  index.text_bytes = result.text_bytes;
  for (const auto& f : files) index.inputs.push_back(f.string());
  FLEXSP_TRY(write_atomically(o.out / "index.json", index.to_json().dump(1)));
  fs::remove(o.out / "progress.json", ec);
  result.shards = static_cast<std::uint32_t>(shards.size());
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return result;
}

}  // namespace flexsp::data
