"""Feature distillers: reference vectors through the classes, connectors, gradients,
memory bank, warm-up, checkpoints, training on a fixed batch.

The configs here are built from the distillers' own ``config`` declarations
(:func:`declared_cfg`), not from the engine, so a key a distiller reads without declaring
it fails these tests."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from test_losses_feature import _t, check_against_expected
from torch import nn

from sldistill.distillers import build_distiller, get_distiller_class

FEATURE_TYPES = ["FITNET", "AT", "NST", "PKT", "KDSVD", "OFD", "RKD", "VID", "SP", "CRD", "REVIEWKD"]
CONNECTOR_TYPES = {"FITNET": ["conv_reg"], "OFD": ["connectors"], "VID": ["regressors"],
                   "CRD": ["embed_s", "embed_t"], "REVIEWKD": ["abfs"]}


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one thread avoids oversubscribing CI's 2 cores (conftest restores it)."""
    torch.set_num_threads(1)



# ------------------------------------------------------------------ stand-in models
class Fixed(nn.Module):
    """Returns given logits/features; as a student they are parameters (to read gradients)."""

    def __init__(self, logits, feats, pooled, learn: bool) -> None:
        super().__init__()
        wrap = (lambda x: nn.Parameter(x)) if learn else (lambda x: nn.Parameter(x, requires_grad=False))
        self.logits = wrap(logits)
        self.feats = nn.ParameterList([wrap(f) for f in feats])
        self.pooled = wrap(pooled)

    def forward(self, x):
        feats = list(self.feats)
        return self.logits, {"feats": feats, "preact_feats": feats, "pooled_feat": self.pooled}


class TinyNet(nn.Module):
    """The zoo contract in miniature: stem + 3 stages (conv-BN-ReLU), pooled feature, linear."""

    def __init__(self, widths=(4, 8, 16, 16), num_classes: int = 10) -> None:
        super().__init__()
        chans = [3, *widths]
        strides = [1, 1, 2, 2]
        self.convs = nn.ModuleList(nn.Conv2d(chans[i], chans[i + 1], 3, strides[i], 1, bias=False) for i in range(4))
        self.bns = nn.ModuleList(nn.BatchNorm2d(c) for c in widths)
        self.fc = nn.Linear(widths[-1], num_classes)
        self.widths = list(widths)

    def forward(self, x):
        feats, pre = [], []
        for conv, bn in zip(self.convs, self.bns):
            x = bn(conv(x))
            pre.append(x)
            x = F.relu(x)
            feats.append(x)
        pooled = x.mean(dim=(2, 3))
        return self.fc(pooled), {"feats": feats, "preact_feats": pre, "pooled_feat": pooled}

    def get_stage_channels(self):
        return self.widths

    def get_bn_before_relu(self):
        return list(self.bns)[1:]

    def get_feat_modules(self):
        return nn.ModuleList([*self.convs, *self.bns])


class Cfg(dict):
    """A nested dict with attribute access (the shape of the engine's config object)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        self[name] = value


def declared_cfg(kind: str = "NONE") -> Cfg:
    """Defaults of every key the feature distillers declare, plus the two engine keys they
    read (``DATASET.TYPE``, ``DATASET.TRAIN_SUBSET``) and ``DISTILLER.TYPE``."""
    cfg = Cfg(DATASET=Cfg(TYPE="cifar100", TRAIN_SUBSET=0), DISTILLER=Cfg(TYPE=kind))
    for name in FEATURE_TYPES:
        for dotted, key in get_distiller_class(name).config.items():
            *path, leaf = dotted.split(".")
            node = cfg
            for part in path:
                node = node.setdefault(part, Cfg())
            node[leaf] = copy.deepcopy(key.default)
    return cfg


SIZE = 16  # input side of the tiny models: feats 16, 16, 8, 4


def tiny_cfg(kind: str):
    cfg = declared_cfg(kind)
    cfg.DISTILLER.TYPE = kind
    cfg.FITNET.INPUT_SIZE = [SIZE, SIZE]
    cfg.VID.INPUT_SIZE = [SIZE, SIZE]
    cfg.CRD.FEAT.STUDENT_DIM, cfg.CRD.FEAT.TEACHER_DIM, cfg.CRD.FEAT.DIM = 16, 32, 8
    cfg.CRD.NCE.K = 20
    cfg.DATASET.TRAIN_SUBSET = 64  # memory-bank rows (no training set here)
    r = cfg.REVIEWKD
    r.SHAPES = r.OUT_SHAPES = [1, 4, 8, 16]
    r.IN_CHANNELS, r.OUT_CHANNELS = [8, 16, 16, 16], [16, 32, 32, 32]
    return cfg


def make(kind: str, seed: int = 0, cfg=None):
    """Build a distiller on the tiny models (connector shapes come from its own probe)."""
    torch.manual_seed(seed)
    student, teacher = TinyNet((4, 8, 16, 16)), TinyNet((8, 16, 32, 32))
    return build_distiller(cfg or tiny_cfg(kind), student, teacher)


def batch(seed: int = 0, n: int = 8):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, SIZE, SIZE, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    extras = {"index": torch.arange(n) + 3 * seed, "contrast_index": torch.randint(0, 64, (n, 21), generator=g)}
    extras["contrast_index"][:, 0] = extras["index"]
    return x, y, extras


def step_loss(d, seed=0, epoch=1):
    x, y, extras = batch(seed)
    extras = {k: v for k, v in extras.items() if k in d.needs}
    logits, terms = d.forward_train([x], y, epoch, **extras)
    return logits, terms


# ------------------------------------------------------------------ reference vectors
def test_reference_cases_through_distillers(feature_vectors):
    for case in feature_vectors:
        i, p = case["inputs"], case["params"]
        cfg = declared_cfg(case["distiller"])
        sec = cfg[case["distiller"]]
        for key, value in p.items():
            node, *rest = key.split(".") if "." in key else [key]
            if rest:
                sec[node][rest[0]] = value
            elif isinstance(value, dict):
                sec[node].update(value)
            else:
                sec[node] = value
        student = Fixed(_t(i["student_logits"]), [_t(f) for f in i["student_feats"]], _t(i["student_pooled"]), True)
        teacher = Fixed(_t(i["teacher_logits"]), [_t(f) for f in i["teacher_feats"]], _t(i["teacher_pooled"]), False)
        d = build_distiller(cfg, student, teacher)
        d.train()
        logits, terms = d.forward_train([torch.zeros(1)], torch.tensor(i["target"]), 1)
        assert set(terms) == {"loss_ce", "loss_kd"}
        total = sum(terms.values())
        total.backward()
        check_against_expected(case, total, student.logits.grad, [f.grad for f in student.feats], student.pooled.grad)


# ------------------------------------------------------------------ structure
@pytest.mark.parametrize("kind", FEATURE_TYPES)
def test_registered_and_connectors_learnable(kind):
    d = make(kind)
    assert get_distiller_class(kind) is type(d)
    learn = {id(p) for p in d.learnable_parameters()}
    assert all(id(p) in learn for p in d.student.parameters())
    assert not any(id(p) in learn for p in d.teacher.parameters())
    names = CONNECTOR_TYPES.get(kind, [])
    conn = [p for n in names for p in getattr(d, n).parameters()]
    assert all(id(p) in learn for p in conn)
    assert d.extra_parameter_count() == sum(p.numel() for p in conn)
    if names:
        assert d.extra_parameter_count() > 0
        keys = d.state_dict().keys()
        assert any(k.startswith(names[0] + ".") for k in keys)


def test_crd_memory_is_buffer_and_updates():
    d = make("CRD")
    assert d.needs == ("index", "contrast_index")
    bufs = dict(d.named_buffers())
    assert "contrast.memory_v1" in bufs and bufs["contrast.memory_v1"].shape == (64, 8)
    assert not any(p is bufs["contrast.memory_v1"] for p in d.learnable_parameters())
    before = d.contrast.memory_v1.clone()
    d.train()
    step_loss(d)
    idx = batch(0)[2]["index"]
    changed = (d.contrast.memory_v1 != before).any(dim=1)
    assert changed[idx].all() and not changed[torch.tensor([i for i in range(64) if i not in idx.tolist()])].any()
    torch.testing.assert_close(d.contrast.memory_v1[idx].norm(dim=1), torch.ones(len(idx)))
    assert float(d.contrast.params[2]) > 0 and float(d.contrast.params[3]) > 0  # Z set from the first batch
    x, y, _ = batch(0)
    with pytest.raises(ValueError, match="CRD needs each sample's dataset index"):
        d.forward_train([x], y, 1)
    # without contrast_index: uniform negatives are drawn, positive in column 0
    _, terms = d.forward_train([x], y, 1, index=idx)
    assert torch.isfinite(terms["loss_kd"])


def test_crd_embeddings_sized_from_the_models():
    cfg = tiny_cfg("CRD")
    cfg.CRD.FEAT.STUDENT_DIM = 256
    with pytest.warns(UserWarning, match="STUDENT_DIM=256"):
        d = make("CRD", cfg=cfg)
    assert d.embed_s.linear.in_features == 16 and d.embed_t.linear.in_features == 32


def test_crd_num_data_required_for_unknown_dataset():
    cfg = tiny_cfg("CRD")
    cfg.DATASET.TRAIN_SUBSET = 0
    cfg.DATASET.TYPE = "folder"
    with pytest.raises(ValueError, match="num_data"):
        make("CRD", cfg=cfg)


def test_reviewkd_warmup_and_channel_check():
    d = make("REVIEWKD")
    d.train()
    w = d.cfg.REVIEWKD.WARMUP_EPOCHS
    k1 = step_loss(d, epoch=1)[1]["loss_kd"].detach()
    kw = step_loss(d, epoch=w)[1]["loss_kd"].detach()
    k2w = step_loss(d, epoch=2 * w)[1]["loss_kd"].detach()
    torch.testing.assert_close(k1 * w, kw)
    torch.testing.assert_close(kw, k2w)
    cfg = tiny_cfg("REVIEWKD")
    cfg.REVIEWKD.IN_CHANNELS = [64, 128, 256, 256]
    with pytest.raises(ValueError, match="IN_CHANNELS"):
        make("REVIEWKD", cfg=cfg)


def test_fitnet_bad_hint_layer():
    cfg = tiny_cfg("FITNET")
    cfg.FITNET.HINT_LAYER = 7
    with pytest.raises(ValueError, match="HINT_LAYER"):
        make("FITNET", cfg=cfg)


# ------------------------------------------------------------------ minima with identity connectors
@pytest.mark.parametrize("kind", ["AT", "NST", "SP", "KDSVD", "PKT", "RKD", "FITNET", "OFD"])
def test_zero_when_student_equals_teacher(kind):
    d = make(kind)
    d.student = copy.deepcopy(d.teacher)
    for p in d.student.parameters():
        p.requires_grad_(True)
    if kind == "FITNET":
        d.conv_reg = nn.Identity()
    if kind == "OFD":
        d.connectors = nn.ModuleList(nn.Identity() for _ in d.connectors)
    d.train()
    d.student.train(d.teacher.training)  # the teacher's BN mode (OFD's teacher trains, as released)
    _, terms = step_loss(d)
    assert float(terms["loss_kd"].detach()) == pytest.approx(0.0, abs=1e-6)
    d2 = make(kind)
    d2.train()
    assert float(step_loss(d2)[1]["loss_kd"].detach()) > 1e-6


# ------------------------------------------------------------------ gradients
@pytest.mark.parametrize("kind", FEATURE_TYPES)
def test_gradients_reach_student_and_connectors_not_teacher(kind):
    d = make(kind)
    d.train()
    _, terms = step_loss(d, epoch=30)
    terms["loss_kd"].backward()
    assert all(p.grad is None for p in d.teacher.parameters())
    assert not any(p.requires_grad for p in d.teacher.parameters())
    assert d.teacher.training == (not d.teacher_eval)  # only OFD's teacher trains (released)
    conv_grads = [p.grad for p in d.student.convs.parameters()]
    assert any(g is not None and float(g.abs().sum()) > 0 for g in conv_grads)
    for name in CONNECTOR_TYPES.get(kind, []):
        grads = [p.grad for p in getattr(d, name).parameters()]
        assert grads and all(g is not None for g in grads), name
        assert any(float(g.abs().sum()) > 0 for g in grads), name


# ------------------------------------------------------------------ training and checkpoints
@pytest.mark.parametrize("kind", FEATURE_TYPES)
def test_loss_finite_and_decreasing_on_fixed_batch(kind):
    d = make(kind)
    d.train()
    opt = torch.optim.SGD(d.learnable_parameters(), lr=0.02, momentum=0.9)
    totals = []
    for _ in range(6):
        _, terms = step_loss(d, epoch=30)
        total = sum(terms.values())
        assert torch.isfinite(total)
        opt.zero_grad()
        total.backward()
        opt.step()
        totals.append(float(total.detach()))
    assert totals[-1] < totals[0], totals


@pytest.mark.parametrize("kind", [k for k in FEATURE_TYPES if k in CONNECTOR_TYPES])
def test_checkpoint_roundtrip_with_connectors(kind, tmp_path):
    d = make(kind, seed=0)
    d.train()
    opt = torch.optim.SGD(d.learnable_parameters(), lr=0.01)
    _, terms = step_loss(d, epoch=30)
    sum(terms.values()).backward()
    opt.step()
    path = tmp_path / "ckpt.pth"
    extra = {k: v for k, v in d.state_dict().items() if not k.startswith(("student.", "teacher."))}
    torch.save({"model": d.student.state_dict(), "distiller": extra}, path)
    fresh = make(kind, seed=1)
    ckpt = torch.load(path)
    fresh.student.load_state_dict(ckpt["model"])
    fresh.load_state_dict(ckpt["distiller"], strict=False)
    fresh.teacher.load_state_dict(d.teacher.state_dict())
    for (k, v), (k2, v2) in zip(d.state_dict().items(), fresh.state_dict().items()):
        assert k == k2
        torch.testing.assert_close(v, v2, msg=k)
    d.eval(), fresh.eval()
    x = batch(1)[0]
    torch.testing.assert_close(d.forward_test(x), fresh.forward_test(x))


# ------------------------------------------------------------------ published configs through the CLI
PUBLISHED = ["at", "crd", "fitnet", "kdsvd", "nst", "ofd", "pkt", "reviewkd", "rkd", "sp", "vid"]


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory):
    from datagen import write_cifar100, write_published_teacher

    root = tmp_path_factory.mktemp("feat_cli")
    write_cifar100(root / "data", n_train=16, n_test=8)
    write_published_teacher(root / "teachers", "resnet32x4")
    return root


@pytest.mark.parametrize("name", PUBLISHED)
def test_published_config_trains_two_iterations_via_cli(name, cli_env, shared):
    import json
    import math

    from sldistill.cli import main

    torch.set_num_threads(1)  # restored by conftest; tiny batches gain nothing from threads
    cfg_file = shared / "seed_configs" / "mdistiller" / "cifar100" / f"{name}.yaml"
    out = cli_env / "out" / name
    rc = main(["train", "--cfg", str(cfg_file), "DATASET.ROOT", str(cli_env / "data"),
               "DISTILLER.TEACHER_ROOT", str(cli_env / "teachers"), "SOLVER.EPOCHS", "1", "SOLVER.BATCH_SIZE", "8",
               "DATASET.TEST.BATCH_SIZE", "8", "DATASET.NUM_WORKERS", "0", "DATASET.DOWNLOAD", "False",
               "LOG.PREFIX", str(out), "LOG.TENSORBOARD", "False", "LOG.PROGRESS", "False"])
    assert rc == 0
    (run,) = [p for p in out.rglob("metrics.jsonl")]
    rows = [json.loads(line) for line in run.read_text().splitlines() if line.strip()]
    assert rows and all(math.isfinite(rows[-1][k]) and rows[-1][k] > 0 for k in ("train_loss_ce", "train_loss_kd"))
    ckpt = torch.load(run.parent / "latest.pth", map_location="cpu", weights_only=False)
    kind = name.upper()
    for prefix in CONNECTOR_TYPES.get(kind, []):
        assert any(k.startswith(prefix + ".") for k in ckpt["distiller"]), (prefix, list(ckpt["distiller"])[:5])
    if kind == "CRD":
        assert ckpt["distiller"]["contrast.memory_v1"].shape == (16, 128)  # one row per training image
