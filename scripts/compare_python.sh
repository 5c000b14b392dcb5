#!/usr/bin/env bash
# Runs scripts/compare_python.py with Python Stim and PyMatching 2.4 installed
# in a venv kept outside the clone (~/.cache/qecd/pyenv).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${QECD_PYENV:-$HOME/.cache/qecd/pyenv}"
if ! "$venv/bin/python" -c "import stim, pymatching, numpy" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "stim==1.16.*" "pymatching==2.4.*" numpy
fi
cargo build --release --quiet
exec "$venv/bin/python" scripts/compare_python.py "$@"
