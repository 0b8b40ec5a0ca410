#!/usr/bin/env bash
# The main job: the Fashion-MNIST demo (teacher, then students by several methods, a table and
# a plot in runs/demo/). Installs what it needs: the virtual environment with the pinned torch,
# and Debian's dataset-fashion-mnist package when the data is not there yet.
# Extra arguments go to `sldistill demo` (see `sldistill demo --help`).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/env.sh"
FMNIST=/usr/share/datasets/fashion-mnist
if [ -z "${SLDISTILL_DATA:-}" ] && [ ! -e "$FMNIST/train-images-idx3-ubyte.gz" ] && [ ! -e "$FMNIST/train-images-idx3-ubyte" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "[demo] installing Debian's dataset-fashion-mnist"
        (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
            || echo "[demo] apt-get failed; the demo will try torchvision's download instead"
    else
        echo "[demo] $FMNIST not found and not root: the demo will try torchvision's download"
    fi
fi
cd "$ROOT"
exec sldistill demo "$@"
