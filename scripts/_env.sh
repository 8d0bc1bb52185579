# shellcheck shell=bash
# Shared by scripts/serve and scripts/test: find Python >= 3.11, make .venv, install.
# Usage: . scripts/_env.sh; ensure_venv "<pip extras spec>"
set -euo pipefail

find_python() {
  local candidate
  for candidate in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$candidate"
      return 0
    fi
  done
  echo "nexus-actors needs Python 3.11 or newer (set PYTHON=/path/to/python3.11)" >&2
  return 1
}

ensure_venv() {
  local spec="$1" python stamp want
  if [ ! -x .venv/bin/python ]; then
    python=$(find_python)
    "$python" -m venv .venv
  fi
  stamp=.venv/.nexus-installed
  want="$spec $(cat pyproject.toml | cksum)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e "$spec"
    echo "$want" > "$stamp"
  fi
}
