#!/usr/bin/env bash
# The accuracy study of docs/results.md (Fashion-MNIST, ResNet20 -> ResNet8, 8 methods x 3 seeds).
set -euo pipefail
COMMON="DATASET.TRAIN_SUBSET 2000 DATASET.SUBSET_SEED 0 LOG.TENSORBOARD false LOG.PROGRESS false"
sldistill train --cfg configs/fashion_mnist/vanilla/resnet20.yaml $COMMON SOLVER.EPOCHS 8 \
    SOLVER.LR_DECAY_STAGES [5,6,7] LOG.PREFIX runs/study EXPERIMENT.NAME teacher
sldistill sweep --out runs/study/sweep --seeds 3 \
    --cfg configs/fashion_mnist/vanilla/resnet8.yaml --label CE \
    --cfg configs/fashion_mnist/kd/resnet20_resnet8.yaml --label KD \
    --cfg configs/fashion_mnist/kd_sort/resnet20_resnet8.yaml --label KD+sort \
    --cfg configs/fashion_mnist/dkd/resnet20_resnet8.yaml --label DKD \
    --cfg configs/fashion_mnist/dkd_sort/resnet20_resnet8.yaml --label DKD+sort \
    --cfg configs/fashion_mnist/mlkd/resnet20_resnet8.yaml --label MLKD \
    --cfg configs/fashion_mnist/sld/resnet20_resnet8.yaml --label SLD \
    --cfg configs/fashion_mnist/sld_sort/resnet20_resnet8.yaml --label SLD+sort \
    $COMMON SOLVER.EPOCHS 5 SOLVER.LR_DECAY_STAGES [3,4] DKD.WARMUP 1 SLD.GAMMA_FRACTION 0.625 \
    DISTILLER.TEACHER_CKPT runs/study/fashion_mnist/teacher/latest.pth
