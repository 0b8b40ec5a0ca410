#!/usr/bin/env bash
# Create (or reuse) the repository's virtual environment in .venv and install the
# package with the pinned torch/torchvision from constraints.txt. Sourced by the
# other scripts; safe to run repeatedly (a stamp file skips work already done).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SLDISTILL_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    echo "[env] creating virtual environment in $VENV"
    "$PY" -m venv "$VENV"
fi
STAMP="$VENV/.sldistill-installed"
WANT="$(cat "$ROOT/constraints.txt" "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    echo "[env] installing sldistill with pinned torch/torchvision (constraints.txt)"
    LOG="$VENV/pip-install.log"
    if ! "$VENV/bin/python" -m pip install -c "$ROOT/constraints.txt" -e "$ROOT[test]" >"$LOG" 2>&1; then
        tail -n 40 "$LOG" >&2
        echo "[env] pip install failed; full log: $LOG" >&2
        exit 1
    fi
    echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
