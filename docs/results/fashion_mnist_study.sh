#!/usr/bin/env bash
# The accuracy study of docs/results.md (Fashion-MNIST, ResNet20 -> ResNet8, 8 methods x 3 seeds).
# Run from the repository root with the package installed (bash scripts/env.sh; source .venv/bin/activate).
set -euo pipefail
OUT=runs/study
COMMON="DATASET.TRAIN_SUBSET 5000 DATASET.SUBSET_SEED 0 LOG.TENSORBOARD false LOG.PROGRESS false"
# teacher: ResNet20, 15 epochs on the 5,000-image subset, LR decays at 62.5/75/87.5 % of the run
[ -f $OUT/fashion_mnist/teacher/summary.json ] || \
sldistill train --cfg configs/fashion_mnist/vanilla/resnet20.yaml $COMMON SOLVER.EPOCHS 15 \
    SOLVER.LR_DECAY_STAGES [9,11,13] LOG.PREFIX $OUT EXPERIMENT.NAME teacher
python - <<'PY'
from pathlib import Path
from sldistill.demo import teacher_statistics
from sldistill.engine.config import load_config
run = Path("runs/study/fashion_mnist/teacher")
print(teacher_statistics(run, load_config(run / "config.yaml"), progress=False))
PY
# students: ResNet8, 8 methods x 3 seeds, 6 epochs, the same subset, the teacher's last-epoch weights
sldistill sweep --out $OUT/sweep --seeds 3 \
    --cfg configs/fashion_mnist/vanilla/resnet8.yaml --label CE \
    --cfg configs/fashion_mnist/kd/resnet20_resnet8.yaml --label KD \
    --cfg configs/fashion_mnist/kd_sort/resnet20_resnet8.yaml --label KD+sort \
    --cfg configs/fashion_mnist/dkd/resnet20_resnet8.yaml --label DKD \
    --cfg configs/fashion_mnist/dkd_sort/resnet20_resnet8.yaml --label DKD+sort \
    --cfg configs/fashion_mnist/mlkd/resnet20_resnet8.yaml --label MLKD \
    --cfg configs/fashion_mnist/sld/resnet20_resnet8.yaml --label SLD \
    --cfg configs/fashion_mnist/sld_sort/resnet20_resnet8.yaml --label SLD+sort \
    $COMMON SOLVER.EPOCHS 6 SOLVER.LR_DECAY_STAGES [4,5] DKD.WARMUP 1 SLD.GAMMA_FRACTION 0.625 \
    DISTILLER.TEACHER_CKPT $OUT/fashion_mnist/teacher/latest.pth
