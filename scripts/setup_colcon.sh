#!/usr/bin/env bash
# colcon for the colcon-route check (test/colcon/test_colcon_route.py, `pytest -m colcon`):
# colcon-common-extensions from PyPI in its own virtual environment, .venv-colcon/ at the
# repository root. Own environment, as on a ROS machine where colcon is a system tool beside
# the ROS install: colcon brings empy 4 (rosidl needs empy 3) and pytest plugins (pytest-cov,
# -repeat, -rerunfailures) that must not reach the ROS Python of .venv. Idempotent: a second
# run takes a fraction of a second. Prints the path of the colcon executable.
#   env: PYTHON=<python3.11 interpreter> (default: python3.11)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv-colcon"
PINS=("colcon-common-extensions==0.3.0" "setuptools>=77.0.3,<80")
key="${PINS[*]}"

if [[ ! -x "$VENV/bin/colcon" || "$(cat "$VENV/.csr_colcon" 2>/dev/null)" != "$key" ]]; then
  echo "[setup_colcon] installing ${PINS[*]} into $VENV" >&2
  "${PYTHON:-python3.11}" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${PINS[@]}" >&2
  printf '%s' "$key" >"$VENV/.csr_colcon"
fi
echo "$VENV/bin/colcon"
