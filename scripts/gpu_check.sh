#!/usr/bin/env bash
# Run every CUDA path of sldistill once, on a machine with an NVIDIA GPU, in a few minutes:
# the CUDA tests, tiny SLD runs in bf16 and fp16 (channels_last), eval, a resume on the GPU,
# a feature method in fp16 and deterministic ReviewKD, a 1-process torchrun run, and with two
# or more GPUs a 2-process run with SyncBatchNorm. Data and teachers are generated (tiny).
# Usage: bash scripts/gpu_check.sh [OUT_DIR]   (default runs/gpu_check; a summary is printed)
# Exit codes: 0 all passed, 1 a check failed, 3 no CUDA device here (nothing was run).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/env.sh" || exit 1
cd "$ROOT"
OUT="${1:-runs/gpu_check}"
if ! python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check: no CUDA device is visible to torch here (torch.cuda.is_available() is False);" \
         "run this script on a machine with an NVIDIA GPU. Nothing was run." >&2
    exit 3
fi
NGPU="$(python -c 'import torch; print(torch.cuda.device_count())')"
rm -rf "$OUT" && mkdir -p "$OUT"
python - "$OUT" <<'PY'
import sys
sys.path.insert(0, "tests")
from datagen import write_cifar100, write_published_teacher
out = sys.argv[1]
write_cifar100(f"{out}/data", n_train=256, n_test=128)
for name in ("resnet32x4", "resnet8x4"):
    write_published_teacher(f"{out}/teachers", name)
PY
COMMON=(DATASET.ROOT "$OUT/data" DISTILLER.TEACHER_ROOT "$OUT/teachers" DATASET.NUM_WORKERS 2
        SOLVER.BATCH_SIZE 64 SOLVER.EPOCHS 1 LOG.PREFIX "$OUT/runs" LOG.TENSORBOARD false EXPERIMENT.DEVICE cuda)
SLD=(--cfg configs/cifar100/sld/resnet32x4_resnet8x4.yaml)
FAILED=()
check() {  # check NAME COMMAND...: run, record the outcome
    local name="$1"; shift
    local start=$SECONDS
    if "$@" >"$OUT/$name.log" 2>&1; then
        echo "PASS  $name ($((SECONDS - start)) s)"
    else
        echo "FAIL  $name ($((SECONDS - start)) s): see $OUT/$name.log"; tail -n 5 "$OUT/$name.log" | sed 's/^/      /'
        FAILED+=("$name")
    fi
}
check cuda_tests python -m pytest -q -p no:cacheprovider tests -k "cuda or CUDA or gpu" -x
check sld_bf16 sldistill train "${SLD[@]}" "${COMMON[@]}" SOLVER.AMP bf16 EXPERIMENT.NAME sld_bf16
check sld_fp16 sldistill train "${SLD[@]}" "${COMMON[@]}" SOLVER.AMP fp16 EXPERIMENT.NAME sld_fp16
check sld_fp32_contiguous sldistill train "${SLD[@]}" "${COMMON[@]}" SOLVER.CHANNELS_LAST false EXPERIMENT.NAME sld_fp32
check eval sldistill eval --run "$OUT/runs/cifar100/sld_bf16" EXPERIMENT.DEVICE cuda
check resume_on_gpu sldistill train "${SLD[@]}" "${COMMON[@]}" SOLVER.AMP bf16 EXPERIMENT.NAME sld_bf16 \
    SOLVER.EPOCHS 2 --resume
check sp_fp16 sldistill train "${SLD[@]}" "${COMMON[@]}" DISTILLER.TYPE SP SOLVER.AMP fp16 EXPERIMENT.NAME sp_fp16
check reviewkd_deterministic sldistill train "${SLD[@]}" "${COMMON[@]}" DISTILLER.TYPE REVIEWKD \
    EXPERIMENT.DETERMINISTIC true SOLVER.AMP bf16 EXPERIMENT.NAME reviewkd_det
check torchrun_1gpu torchrun --standalone --nproc_per_node=1 -m sldistill train "${SLD[@]}" "${COMMON[@]}" \
    EXPERIMENT.NAME torchrun1
if [ "$NGPU" -ge 2 ]; then
    check torchrun_2gpu_syncbn torchrun --standalone --nproc_per_node=2 -m sldistill train "${SLD[@]}" "${COMMON[@]}" \
        SOLVER.SYNC_BN true EXPERIMENT.NAME torchrun2_syncbn
else
    echo "SKIP  torchrun_2gpu_syncbn (needs 2 GPUs, this machine has $NGPU)"
fi
python -c "import torch; print('device:', torch.cuda.get_device_name(0), '| torch', torch.__version__)"
if [ "${#FAILED[@]}" -gt 0 ]; then
    echo "gpu_check: ${#FAILED[@]} check(s) failed: ${FAILED[*]}"
    exit 1
fi
echo "gpu_check: all checks passed"
