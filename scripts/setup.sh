# Sourced by the other scripts: make .venv with the tested versions, once.
# Needs Python >= 3.11 and pip; no GPU. torch is the CPU build (pinned in constraints.txt).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for c in python3.11 python3.12 python3; do
    if command -v "$c" >/dev/null && "$c" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then PY=$c; break; fi
  done
fi
[ -n "$PY" ] || { echo "error: mixsearch needs Python >= 3.11 (set PYTHON=...)" >&2; exit 1; }
stamp=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ ! -f .venv/.installed-"$stamp" ]; then
  echo "setting up .venv with $PY (tested versions from constraints.txt)..." >&2
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip >&2
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[test]" >&2
  rm -f .venv/.installed-*
  touch .venv/.installed-"$stamp"
fi
export PATH="$PWD/.venv/bin:$PATH"
