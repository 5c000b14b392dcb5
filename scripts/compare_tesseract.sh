#!/usr/bin/env bash
# Runs scripts/compare_tesseract.py with Python Stim and Google's Tesseract
# decoder installed in the venv that compare_python.sh uses
# (~/.cache/qecd/pyenv); this only adds packages. It builds nothing: it uses
# $QECD, or target/release/qecd, as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${QECD_PYENV:-$HOME/.cache/qecd/pyenv}"
# The newest tesseract-decoder with a wheel for the venv's Python 3.11; later
# builds ship wheels for 3.12 and up only.
tesseract="tesseract-decoder==0.1.1.dev20260822020007"
if ! "$venv/bin/python" -c "import stim, numpy, tesseract_decoder" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "stim==1.16.*" numpy "$tesseract"
  "$venv/bin/python" -c "from tesseract_decoder import tesseract, utils"
fi
qecd="${QECD:-target/release/qecd}"
if [ ! -x "$qecd" ]; then
  echo "compare_tesseract: $qecd is missing; build it with \`cargo build --release --bin qecd\`, or set QECD to a qecd binary" >&2
  exit 1
fi
QECD="$(realpath "$qecd")" exec "$venv/bin/python" scripts/compare_tesseract.py "$@"
