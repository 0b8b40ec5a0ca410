"""What every configuration key means: the source of ``docs/configs.md``.

:data:`DESCRIPTIONS` maps each dotted key of :data:`sldistill.engine.config.SCHEMA` to one
sentence; :func:`render_markdown` builds the reference page from it and the schema (type,
default, valid choices). ``python -m sldistill.engine.config_reference > docs/configs.md``
regenerates the page; a test keeps the two in step.
"""
from __future__ import annotations

from sldistill.engine.config import BASES, DEFAULTS, SCHEMA, CfgNode

__all__ = ["DESCRIPTIONS", "PUBLISHED_SECTIONS", "render_markdown"]

_FEAT = "weight of the feature-distillation term"
_CE = "weight of the cross-entropy term"

DESCRIPTIONS: dict[str, str] = {
    "BASE": "Which published codebase's defaults the file is read against (its `defaults.yaml`); also `--base` on the command line.",
    "EXPERIMENT.PROJECT": "Second level of the run folder: `LOG.PREFIX/PROJECT/<NAME or TAG>`.",
    "EXPERIMENT.NAME": "Run folder name; when empty, `TAG` is used.",
    "EXPERIMENT.TAG": "Run label (published files use `method,teacher,student`); the folder name when `NAME` is empty.",
    "EXPERIMENT.LOGIT_STAND": "Logit standardization: z-score the student's and teacher's logits in KD/DKD/MLKD (same as `DISTILLER.LOGIT_PROCESSOR: zscore`).",
    "EXPERIMENT.SEED": "Seed of python, numpy, torch and every data stream (shuffling, augmentation, CRD sampling).",
    "EXPERIMENT.DETERMINISTIC": "Use deterministic algorithms (bitwise-reproducible runs and resumes on CPU; slower on GPU).",
    "EXPERIMENT.DEVICE": "`auto` (CUDA when present, else CPU), `cpu`, `cuda` or `cuda:N`; under torchrun each process takes its local rank's GPU.",
    "DATASET.TYPE": "Which dataset reader and transforms to use.",
    "DATASET.NUM_WORKERS": "Data-loading worker processes per training process (persistent); 0 loads in the main process.",
    "DATASET.TEST.BATCH_SIZE": "Batch size of evaluation (per process).",
    "DATASET.ROOT": "Dataset folder; empty means `$SLDISTILL_DATA`, else `./data`.",
    "DATASET.DOWNLOAD": "Download CIFAR-100 / Fashion-MNIST when missing and the machine has internet.",
    "DATASET.TRAIN_SUBSET": "If > 0, train on a seeded, class-balanced subset of this many images (0: the whole training set).",
    "DATASET.SUBSET_SEED": "Seed of the `TRAIN_SUBSET` draw; -1 uses `EXPERIMENT.SEED` (set it >= 0 to keep the subset fixed across seeds).",
    "DATASET.PIN_MEMORY": "Pin host memory of batches (takes effect on CUDA only).",
    "DATASET.IMAGE_SIZE": "`folder` datasets: image side for training and test (0: 32, the CIFAR family's size).",
    "DATASET.DROP_LAST": "Drop the last short training batch (published loaders keep it; a one-image batch is always dropped).",
    "DISTILLER.TYPE": "The method, by its published name (`NONE`, `KD`, `DKD`, `MLKD`/`KD_ours`, `SLD`, `FITNET`, `AT`, `NST`, `PKT`, `KDSVD`, `OFD`, `RKD`, `VID`, `SP`, `CRD`, `REVIEWKD`).",
    "DISTILLER.TEACHER": "Teacher architecture (a zoo name, `torchvision:NAME`, `timm:NAME` or `package.module:callable`).",
    "DISTILLER.STUDENT": "Student architecture (same forms as `TEACHER`).",
    "DISTILLER.LOGIT_PROCESSOR": "Logit processing for KD/DKD/MLKD: `sort` or `swap` act on the teacher, `zscore` on teacher and student.",
    "DISTILLER.TEACHER_ROOT": "Folder holding the published teachers (`cifar_teachers/<name>_vanilla/ckpt_epoch_240.pth`); `$SLDISTILL_TEACHER_ROOT` when left at its default.",
    "DISTILLER.TEACHER_CKPT": "A teacher checkpoint file, used instead of the published-teacher table.",
    "DISTILLER.STUDENT_CKPT": "Optional initial weights of the student.",
    "SOLVER.TRAINER": "`base` one view; `ours` weak+strong views (MLKD, SLD); `crd` adds contrastive sampling; `dot`/`crd_dot` use the DOT optimizer; `aug` is refused (no release implements it).",
    "SOLVER.BATCH_SIZE": "Global training batch, split evenly over DDP processes.",
    "SOLVER.EPOCHS": "Training epochs.",
    "SOLVER.LR": "Initial learning rate.",
    "SOLVER.LR_DECAY_STAGES": "Epochs after which the step schedule multiplies the learning rate by `LR_DECAY_RATE`.",
    "SOLVER.LR_DECAY_RATE": "Factor of each step decay.",
    "SOLVER.WEIGHT_DECAY": "SGD weight decay.",
    "SOLVER.MOMENTUM": "SGD momentum.",
    "SOLVER.TYPE": "Optimizer (SGD, as published).",
    "SOLVER.DOT.DELTA": "DOT: the distillation gradient's momentum is `MOMENTUM + DELTA`, the task gradient's `MOMENTUM - DELTA`.",
    "SOLVER.SCHEDULER": "`step` (published) or `cosine` (per iteration).",
    "SOLVER.WARMUP_EPOCHS": "Linear learning-rate warm-up length in epochs (0: none, as published).",
    "SOLVER.NESTEROV": "Nesterov momentum.",
    "SOLVER.AMP": "Mixed precision: `none`, `bf16` (CPU and CUDA) or `fp16` (CUDA only, with a gradient scaler).",
    "SOLVER.CHANNELS_LAST": "Run models and inputs in channels_last memory layout.",
    "SOLVER.SYNC_BN": "SyncBatchNorm across DDP processes (CUDA only; refused on CPU).",
    "SOLVER.FUSE_STUDENT_VIEWS": "One student forward over both views instead of two (faster; batch-norm statistics then mix the views, unlike the release).",
    "SOLVER.FOLD_TEACHER_BN": "Run the frozen teacher through a copy with each BatchNorm folded into the preceding convolution (faster; teacher outputs change only by float rounding, about 1e-6 relative in fp32). The teacher module, its state dict and its BN layers are unchanged; models that torch.fx cannot trace run unfolded, with a warning.",
    "SOLVER.TEACHER_CHUNK": "Rows per teacher forward: `-1` (auto) runs a float32 teacher on the CPU in 32-row micro-batches, where the forward runs 1.1-1.2x faster in cache-sized chunks than as one large batch (a few percent of an SLD step), and the whole batch at once on GPUs and under bf16 autocast; `0` always the whole batch; `N > 0` chunks of N rows. The teacher is in eval mode, so its outputs do not depend on the chunking (up to float rounding).",
    "LOG.PREFIX": "Root of the run folders.",
    "LOG.SAVE_CHECKPOINT_FREQ": "Keep an `epoch_N.pth` checkpoint every this many epochs (besides `latest.pth` and `best.pth`).",
    "LOG.TENSORBOARD_FREQ": "Accepted for compatibility with the published files; TensorBoard scalars are written once per epoch.",
    "LOG.WANDB": "Accepted for compatibility with the published files; Weights & Biases logging is not implemented (ignored).",
    "LOG.TENSORBOARD": "Write TensorBoard event files under the run folder's `tb/`.",
    "LOG.PROGRESS": "Show progress bars (on terminals).",
    "KD.TEMPERATURE": "KD temperature `T` (also MLKD's first temperature; SLD ignores it, as released).",
    "KD.LOSS.CE_WEIGHT": "Weight of cross-entropy in KD, MLKD and SLD.",
    "KD.LOSS.KD_WEIGHT": "Weight of the KL terms in KD, MLKD and SLD.",
    "DKD.CE_WEIGHT": _CE + " in DKD.",
    "DKD.ALPHA": "Weight of the target-class term (TCKD).",
    "DKD.BETA": "Weight of the non-target-class term (NCKD).",
    "DKD.T": "DKD temperature.",
    "DKD.WARMUP": "Epochs over which the DKD term ramps up linearly (`min(epoch / WARMUP, 1)`).",
    "MLKD.CLEAN": "False: the released MLKD computation (scalar masks, two strong-view terms reading weak logits); True: per-sample masks, each view's own logits.",
    "SLD.TEMPERATURES": "Temperatures summed in every SLD KL term (released: 1..6).",
    "SLD.GAMMA": "The pseudo-teacher term is on when `epoch > GAMMA` (released: 150 whatever the run length).",
    "SLD.GAMMA_FRACTION": "If > 0, `GAMMA = round(GAMMA_FRACTION * SOLVER.EPOCHS)` (0.625 = 150/240 scales the released schedule to any length).",
    "SLD.DETACH_PSEUDO_TEACHER": "Detach the swapped student logits used as pseudo-teacher (released: not detached).",
    "SLD.TEACHER_PROCESSOR": "Processor of the teacher's logits (`swap` released; `sort` for SLD with the sorting mechanism).",
    "SLD.STUDENT_PROCESSOR": "Processor of the student's logits for the pseudo-teacher (`swap` released; `none` switches the term off).",
    "AT.P": "Exponent of the attention maps.",
    "AT.LOSS.CE_WEIGHT": _CE + ".",
    "AT.LOSS.FEAT_WEIGHT": _FEAT + ".",
    "CRD.MODE": "`exact`: the positive is the sample itself; `relax`: a random sample of the same class.",
    "CRD.FEAT.DIM": "Dimension of the contrastive embeddings.",
    "CRD.FEAT.STUDENT_DIM": "Published key; checked against the student's pooled-feature size (a mismatch warns and the measured size is used).",
    "CRD.FEAT.TEACHER_DIM": "Published key; checked against the teacher's pooled-feature size (a mismatch warns and the measured size is used).",
    "CRD.LOSS.CE_WEIGHT": _CE + ".",
    "CRD.LOSS.FEAT_WEIGHT": _FEAT + ".",
    "CRD.NCE.K": "Negatives per sample.",
    "CRD.NCE.MOMENTUM": "Momentum of the memory-bank update.",
    "CRD.NCE.TEMPERATURE": "Temperature of the contrastive scores.",
    "FITNET.HINT_LAYER": "Index of the stage feature used as hint.",
    "FITNET.INPUT_SIZE": "Input size used to infer feature shapes when building the regressor.",
    "FITNET.LOSS.CE_WEIGHT": _CE + ".",
    "FITNET.LOSS.FEAT_WEIGHT": _FEAT + ".",
    "KDSVD.K": "Number of singular vectors kept.",
    "KDSVD.LOSS.CE_WEIGHT": _CE + ".",
    "KDSVD.LOSS.FEAT_WEIGHT": _FEAT + ".",
    "NST.LOSS.CE_WEIGHT": _CE + ".",
    "NST.LOSS.FEAT_WEIGHT": _FEAT + ".",
    "OFD.CONNECTOR.KERNEL_SIZE": "Kernel size of the OFD connectors.",
    "OFD.LOSS.CE_WEIGHT": _CE + ".",
    "OFD.LOSS.FEAT_WEIGHT": _FEAT + ".",
    "PKT.LOSS.CE_WEIGHT": _CE + ".",
    "PKT.LOSS.FEAT_WEIGHT": _FEAT + ".",
    "REVIEWKD.CE_WEIGHT": _CE + ".",
    "REVIEWKD.REVIEWKD_WEIGHT": "Weight of the review (hierarchical context) loss.",
    "REVIEWKD.WARMUP_EPOCHS": "Epochs over which the review loss ramps up linearly.",
    "REVIEWKD.SHAPES": "Spatial sizes of the student's features, deepest first.",
    "REVIEWKD.OUT_SHAPES": "Spatial sizes of the teacher's features, deepest first.",
    "REVIEWKD.IN_CHANNELS": "Channels of the student's features, shallowest first.",
    "REVIEWKD.OUT_CHANNELS": "Channels of the teacher's features, shallowest first.",
    "REVIEWKD.MAX_MID_CHANNEL": "Upper bound of the fusion modules' middle channels.",
    "REVIEWKD.STU_PREACT": "Read the student's pre-activation features.",
    "RKD.DISTANCE_WEIGHT": "Weight of the distance-wise relation term.",
    "RKD.ANGLE_WEIGHT": "Weight of the angle-wise relation term.",
    "RKD.LOSS.CE_WEIGHT": _CE + ".",
    "RKD.LOSS.FEAT_WEIGHT": _FEAT + ".",
    "RKD.PDIST.EPSILON": "Lower clamp of pairwise distances.",
    "RKD.PDIST.SQUARED": "Use squared pairwise distances.",
    "SP.LOSS.CE_WEIGHT": _CE + ".",
    "SP.LOSS.FEAT_WEIGHT": _FEAT + ".",
    "VID.LOSS.CE_WEIGHT": _CE + ".",
    "VID.LOSS.FEAT_WEIGHT": _FEAT + ".",
    "VID.EPS": "Lower bound of the predicted variance.",
    "VID.INIT_PRED_VAR": "Initial predicted variance.",
    "VID.INPUT_SIZE": "Input size used to infer feature shapes when building the regressors.",
}

#: the sections whose keys all come from the published files (others are partly ours)
PUBLISHED_SECTIONS = ("KD", "DKD", "AT", "CRD", "FITNET", "KDSVD", "NST", "OFD", "PKT", "REVIEWKD", "RKD", "SP", "VID")


def _default(key: str) -> object:
    node: object = CfgNode(DEFAULTS)
    for part in key.split("."):
        node = node[part]  # type: ignore[index]
    return node


def _fmt(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"`{value!r}`" if value == "" else f"`{value}`"
    return f"`{value}`"


def render_markdown() -> str:
    """The full text of ``docs/configs.md``."""
    lines = [
        "# Configuration keys",
        "",
        "Every key the toolkit reads, with its type, its default (the SLD/mdistiller release's value",
        "where the key is published) and its meaning. Set keys in a YAML file (`--cfg FILE`) or on the",
        "command line as `KEY VALUE` pairs or `KEY=VALUE`. Unknown keys, wrong types and bad values",
        "are errors naming the file, the key and the closest valid keys.",
        "",
        "Defaults of the other published codebases (`--base NAME` or a top-level `BASE:` key):",
        "",
    ]
    for name, spec in BASES.items():
        diffs = ", ".join(f"`{k}: {_fmt(v).strip('`')}`" for k, v in spec["defaults"].items()) or "none"
        lines.append(f"- `{name}`: {spec['about']}; differences from ours: {diffs}.")
    lines += ["", "Generated by `python -m sldistill.engine.config_reference`; do not edit by hand.", ""]
    section = None
    for key, spec in SCHEMA.items():
        top = key.split(".")[0] if "." in key else "(top level)"
        if top != section:
            section = top
            lines += ["", f"## {section}", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        meaning = DESCRIPTIONS[key]
        if spec.choices:
            meaning += " Valid: " + ", ".join(f"`{c}`" for c in spec.choices) + "."
        kind = spec.kind.replace("list_", "list of ")
        lines.append(f"| `{key}` | {kind} | {_fmt(_default(key))} | {meaning} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render_markdown(), end="")
