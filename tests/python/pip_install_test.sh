#!/usr/bin/env bash
# `pip install .` of the repository into a fresh virtual environment (reusing the build tree given,
# so only the packaging is new), then the package and its `flexsp` command from that environment,
# outside the source and build trees.
#   pip_install_test.sh SOURCE_DIR BUILD_DIR
set -euo pipefail
src="$1"; build="$2"; python="${PYTHON:-python3}"
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT

if ! "$python" -c 'import venv, ensurepip' 2>/dev/null; then
  echo "SKIP: $python has no venv/ensurepip module (Debian: apt-get install python3-venv)"; exit 77
fi
# --system-site-packages: setuptools and wheel from the system, so the build needs no network.
"$python" -m venv --system-site-packages "$work/venv"
cd "$work"
FLEXSP_BUILD_DIR="$build" "$work/venv/bin/pip" install --no-build-isolation --no-deps --quiet "$src" \
  > "$work/pip.log" 2>&1 || { cat "$work/pip.log"; echo "FAIL: pip install . failed"; exit 1; }

"$work/venv/bin/python" - <<'PY'
import flexsp, os
assert "/venv/" in flexsp.__file__, flexsp.__file__  # the installed copy, not the build tree's
p = flexsp.plan([1000, 2000, 16000, 300], devices=8, devices_per_node=8)
assert p.predicted_ms > 0 and p.micro_batches, p
try:
    flexsp.connect("not-an-address")
    raise SystemExit("connect to a bad address did not raise")
except flexsp.FlexspError as e:
    assert "not-an-address" in str(e), e
print("installed package plans:", round(p.predicted_ms, 1), "ms")
PY
"$work/venv/bin/flexsp" --help > "$work/help.txt" 2>&1 || { cat "$work/help.txt"; echo "FAIL: flexsp --help"; exit 1; }
grep -q "plan" "$work/help.txt" || { cat "$work/help.txt"; echo "FAIL: the installed flexsp command's --help lists no plan"; exit 1; }
"$work/venv/bin/python" -m flexsp info > "$work/info.txt" 2>&1 || { cat "$work/info.txt"; echo "FAIL: python -m flexsp info"; exit 1; }
grep -q "build" "$work/info.txt" || { cat "$work/info.txt"; echo "FAIL: flexsp info shows no build"; exit 1; }
"$work/venv/bin/pip" uninstall --yes --quiet flexsp
[[ ! -e "$work/venv/bin/flexsp" ]] || { echo "FAIL: pip uninstall left the flexsp command"; exit 1; }
echo "PASS: pip install . gives the flexsp package and command; pip uninstall removes them"
