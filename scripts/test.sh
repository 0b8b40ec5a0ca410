#!/usr/bin/env bash
# Run the whole test suite (installs what it needs first): `ruff check` and `mypy` on the
# package, then pytest. Any failure fails the script. Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/env.sh"
cd "$ROOT"
# keep the linters' caches in the virtual environment, out of the working tree
export RUFF_CACHE_DIR="$VENV/.cache/ruff"
export MYPY_CACHE_DIR="$VENV/.cache/mypy"
status=0
echo "[test] ruff check sldistill"
python -m ruff check sldistill || status=1
echo "[test] mypy sldistill"
python -m mypy sldistill || status=1
if [ "$status" -ne 0 ]; then
    echo "[test] lint/type check failed (see above); pytest not run" >&2
    exit "$status"
fi
exec python -m pytest -q -p no:cacheprovider "$@"
