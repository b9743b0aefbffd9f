#!/usr/bin/env bash
# The numerical oracle: flexsp's loss and gradients against PyTorch + transformers, for the gpt2
# and llama (grouped-query attention) families.
#   scripts/oracle.sh [--no-install]
# Installs CPU torch, transformers and safetensors into a venv (build/oracle-venv; the CPU wheel
# index when reachable, PyPI otherwise), builds flexsp_oracle_dump, and runs
# scripts/oracle_check.py on both families. --no-install uses the venv (or python3) as it is.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${FLEXSP_BUILD_DIR:-$root/build}"
venv="${FLEXSP_ORACLE_VENV:-$build/oracle-venv}"
install=1
case "${1:-}" in
  --no-install) install=0 ;;
  -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
  "") ;;
  *) echo "oracle: unknown argument '$1' (see --help)" >&2; exit 2 ;;
esac
if ((install)); then
  [[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
  if ! "$venv/bin/python" -c "import torch, transformers, safetensors" 2>/dev/null; then
    echo "oracle: installing torch, transformers, safetensors into $venv"
    "$venv/bin/pip" install -q --index-url https://download.pytorch.org/whl/cpu torch 2>/dev/null ||
      "$venv/bin/pip" install -q torch
    "$venv/bin/pip" install -q transformers safetensors
  fi
fi
python="$venv/bin/python"
[[ -x "$python" ]] || python=python3
if ! "$python" -c "import torch, transformers, safetensors" 2>/dev/null; then
  echo "SKIP: $python cannot import torch, transformers and safetensors (run scripts/oracle.sh to install them)"
  exit 77
fi
[[ -x "$build/tests/flexsp_oracle_dump" ]] || cmake --build "$build" --target flexsp_oracle_dump
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
rc=0
for family in gpt2 llama; do
  "$build/tests/flexsp_oracle_dump" "$family" "$work/$family"
  "$python" "$root/scripts/oracle_check.py" "$work/$family" || rc=1
done
exit $rc
