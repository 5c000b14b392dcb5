#!/usr/bin/env bash
# Runs scripts/compare_belief.py with Python Stim, PyMatching 2.4 and the
# beliefmatching package (ldpc's BP, then PyMatching) installed in the venv
# that compare_python.sh uses (~/.cache/qecd/pyenv); this only adds packages.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${QECD_PYENV:-$HOME/.cache/qecd/pyenv}"
if ! "$venv/bin/python" -c "import stim, pymatching, numpy; from beliefmatching import BeliefMatching" 2>/dev/null; then
  python3 -m venv "$venv"
  # beliefmatching 0.2.0 asks for any ldpc; 2.4.1 is the one whose BP the
  # comparison was read against (and it caps numpy at 2.2.6).
  "$venv/bin/pip" install --quiet "stim==1.16.*" "pymatching==2.4.*" numpy "beliefmatching==0.2.0" "ldpc==2.4.1"
  "$venv/bin/python" -c "from beliefmatching import BeliefMatching"
fi
cargo build --release --quiet
exec "$venv/bin/python" scripts/compare_belief.py "$@"
