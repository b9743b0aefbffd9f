#!/usr/bin/env bash
# The main job: builds flexsp, prepares a real corpus on first run, trains on it with FlexSP on 8
# CPU devices in one process, and scores the result on held-out text.
#
#   scripts/main_job.sh [flexsp train flags...]
#
# The corpus is text every Debian machine has: the copyright files of the installed packages
# (/usr/share/doc/*/copyright; a long tail of document lengths, from a few hundred bytes to
# megabytes) and the common licenses. Every tenth file is held out. A SentencePiece tokenizer
# (2048 pieces) is trained on the training files; both sets are prepared into token shards under
# $FLEXSP_BUILD_DIR/data/debian-docs (made once, reused after). Metrics go to
# $FLEXSP_BUILD_DIR/train_metrics.jsonl. `flexsp train` alone (no --data) keeps the synthetic
# long-tail lengths for planner studies.
set -euo pipefail
root_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_dir="${FLEXSP_BUILD_DIR:-$root_dir/build}"
"$root_dir/scripts/bootstrap.sh" --target flexsp
flexsp="$build_dir/apps/flexsp/flexsp"
data="$build_dir/data/debian-docs"

if [[ ! -f "$data/train/index.json" || ! -f "$data/heldout/index.json" ]]; then
  echo "main job: preparing the corpus (first run) in $data"
  mkdir -p "$data"
  { find /usr/share/doc -name copyright -type f; find /usr/share/common-licenses -type f; } 2>/dev/null |
    LC_ALL=C sort > "$data/files.txt"
  awk 'NR % 10 != 0' "$data/files.txt" > "$data/train-files.txt"
  awk 'NR % 10 == 0' "$data/files.txt" > "$data/heldout-files.txt"
  [[ -s "$data/train-files.txt" && -s "$data/heldout-files.txt" ]] || {
    echo "main job: no text under /usr/share/doc to train on" >&2
    exit 1
  }
  xargs -d '\n' cat < "$data/train-files.txt" > "$data/tokenizer-text.txt"
  "$flexsp" data train-tokenizer --input "$data/tokenizer-text.txt" --vocab-size 2048 --out "$data/tokenizer.model"
  rm -f "$data/tokenizer-text.txt"
  for set in train heldout; do
    rm -rf "$data/$set"
    mapfile -t files < "$data/$set-files.txt"
    "$flexsp" data prepare --input "${files[@]}" --tokenizer "$data/tokenizer.model" --out "$data/$set"
  done
  "$flexsp" data stats "$data/train" --svg "$data/train-lengths.svg"
fi

spec="$build_dir/main_job.json"
cat > "$spec" <<JSON
{"name": "main", "steps": 30, "batch_size": 64,
 "model": {"layers": 2, "d_model": 64, "heads": 4, "vocab": 2048, "max_seq": 1024},
 "data": {"prepared": "$data/train"}}
JSON
checkpoints="$build_dir/main_job_checkpoints"
rm -rf "$checkpoints"
"$flexsp" train --config "$spec" --devices cpu:8 --checkpoint-dir "$checkpoints" \
  --metrics "$build_dir/train_metrics.jsonl" "$@"
"$flexsp" eval "$checkpoints" --data "$data/heldout"
