#!/usr/bin/env bash
# Installs what flexsp needs (Debian packages, idempotent), configures and builds.
#
#   scripts/bootstrap.sh [--target T ...] [--werror] [-- <extra cmake args>]
#
# Environment: FLEXSP_BUILD_DIR (default: build), FLEXSP_BUILD_TYPE (default: RelWithDebInfo),
# FLEXSP_ENABLE_CUDA (AUTO|ON|OFF, default AUTO), FLEXSP_SKIP_APT=1 to never call apt-get.
# Quick when everything is already there: one dpkg-query, then an incremental ninja build.
set -euo pipefail

usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; }

root_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_dir="${FLEXSP_BUILD_DIR:-$root_dir/build}"
build_type="${FLEXSP_BUILD_TYPE:-RelWithDebInfo}"
targets=()
werror=""  # --werror: ON; otherwise keep what the build directory has (ON when new: see below)
extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --target) targets+=("$2"); shift 2 ;;
    --werror) werror=ON; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "bootstrap: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

packages=(
  build-essential cmake ninja-build ccache pkg-config git
  libasio-dev capnproto libcapnp-dev coinor-libcbc-dev libspdlog-dev libfmt-dev libgloo-dev
  libopenblas-dev nlohmann-json3-dev libcli11-dev googletest libgtest-dev libgmock-dev
  libbenchmark-dev libcaf-dev zlib1g-dev iproute2 procps libhiredis-dev redis-server
  libsentencepiece-dev sentencepiece libzstd-dev zstd libcpp-httplib-dev prometheus
  python3-dev pybind11-dev python3-pytest python3-numpy python3-pip python3-setuptools python3-wheel python3-venv chromium
)

# One dpkg-query for all packages; it prints nothing for packages it has never heard of.
declare -A installed=()
while read -r pkg status; do
  [[ "$status" == "installed" ]] && installed[$pkg]=1
done < <(dpkg-query -W -f='${Package} ${db:Status-Status}\n' "${packages[@]}" 2>/dev/null || true)
missing=()
for pkg in "${packages[@]}"; do
  [[ -n "${installed[$pkg]:-}" ]] || missing+=("$pkg")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  if [[ "${FLEXSP_SKIP_APT:-0}" == "1" ]]; then
    echo "bootstrap: missing packages: ${missing[*]} (FLEXSP_SKIP_APT=1, not installing)" >&2
    exit 1
  fi
  sudo=""
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "bootstrap: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
    sudo="sudo"
  fi
  echo "bootstrap: installing ${missing[*]}" >&2
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Reconfigure only when needed: a build without --werror reuses a build directory as it is, and a
# new one gets warnings as errors too, as the tests build it, so the two README commands share one
# build whichever runs first (a change of -Werror would change every compile line).
cached_werror="$(grep -s '^FLEXSP_WERROR:' "$build_dir/CMakeCache.txt" | cut -d= -f2 || true)"
if [[ ! -f "$build_dir/build.ninja" ]] || [[ -n "$werror" && "$cached_werror" != "$werror" ]] || [[ ${#extra[@]} -gt 0 ]]; then
  cmake -S "$root_dir" -B "$build_dir" -G Ninja \
    -DCMAKE_BUILD_TYPE="$build_type" \
    -DFLEXSP_ENABLE_CUDA="${FLEXSP_ENABLE_CUDA:-AUTO}" \
    -DFLEXSP_WERROR="${werror:-${cached_werror:-ON}}" "${extra[@]}" >/dev/null
fi

echo "bootstrap: building ${targets[*]:-all} in $build_dir" >&2
cmake --build "$build_dir" ${targets:+--target "${targets[@]}"}
