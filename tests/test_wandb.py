"""Weights & Biases logging of MetricLogger (LOG.WANDB), in offline mode: the offline run files are
read back (their record log) and the history rows, config, tags and summary checked; a resumed
logger continues the same W&B run; a missing package gives a one-line message naming the extra."""
from __future__ import annotations

import inspect
import json
import struct
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from sldistill.engine.config import load_config
from sldistill.engine.metrics import (
    WANDB_ID_FILE,
    MetricLogger,
    WandbInitError,
    WandbMissingError,
    WandbOptions,
    wandb_options,
)

CFG = "fashion_mnist/vanilla/resnet20.yaml"


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """wandb offline, every W&B folder in tmp_path, no console capture; the service stopped after."""
    wandb = pytest.importorskip("wandb")
    root = tmp_path / "wandb_home"
    for var, sub in (("WANDB_DIR", "dir"), ("WANDB_CONFIG_DIR", "config"), ("WANDB_CACHE_DIR", "cache"),
                     ("WANDB_DATA_DIR", "data"), ("WANDB_ARTIFACT_DIR", "artifacts")):
        (root / sub).mkdir(parents=True)
        monkeypatch.setenv(var, str(root / sub))
    for var, value in (("WANDB_MODE", "offline"), ("WANDB_SILENT", "true"), ("WANDB_CONSOLE", "off"),
                       ("WANDB_DISABLE_GIT", "true"), ("WANDB_DISABLE_CODE", "true")):
        monkeypatch.setenv(var, value)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    yield root / "dir"
    wandb.teardown()


def _records(path: Path) -> Iterator[Any]:
    """The protobuf records of a ``run-<id>.wandb`` file: a 7-byte header, then 32 KiB blocks of
    chunks (4-byte checksum, 2-byte length, 1-byte type: 1 full, 2 first, 3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer padding
            pos += left
            continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and n == 0:
            pos += left
            continue
        chunk, pos = data[pos + 7:pos + 7 + n], pos + 7 + n
        if kind in (1, 2):
            pending = chunk
        else:
            pending += chunk
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(pending)
            yield rec


def _parse_offline_run(f: Path) -> dict[str, Any] | None:
    """One offline run file's run record, history rows and summary; ``None`` while the W&B service
    has not yet written it out (no run record, or no exit record)."""
    run, history, summary, ended = None, [], {}, False
    try:
        records = list(_records(f))
    except Exception:  # a record cut off mid-write
        return None
    for rec in records:
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            run = rec.run
        elif kind == "history":
            history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item})
        elif kind == "summary":
            for i in rec.summary.update:
                summary[i.key or "/".join(i.nested_key)] = json.loads(i.value_json)
        elif kind == "exit":
            ended = True
    if run is None or not ended:
        return None
    config = {i.key: json.loads(i.value_json) for i in run.config.update}
    return {"run": run, "config": config, "history": history, "summary": summary}


def _read_offline_run(wandb_dir: Path, run_id: str, timeout: float = 30.0) -> list[dict[str, Any]]:
    """Every offline run folder of ``run_id``, oldest first: its run record, history rows, summary.
    The W&B service writes the files in the background: wait (up to ``timeout`` s) until each is
    complete."""
    files = sorted(wandb_dir.glob(f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb"))
    deadline = time.monotonic() + timeout
    while True:
        parsed = [_parse_offline_run(f) for f in files]
        if all(p is not None for p in parsed):
            return [p for p in parsed if p is not None]
        assert time.monotonic() < deadline, [f for f, p in zip(files, parsed) if p is None]
        time.sleep(0.2)


ROWS = {1: {"lr": 0.05, "train_loss_ce": 2.1, "train_acc": 30.0, "test_acc": 41.5, "test_acc_top5": 80.0,
            "test_loss": 1.9, "best_acc": 41.5, "images_per_s": 250.0},
        2: {"lr": 0.05, "train_loss_ce": 1.4, "train_acc": 55.0, "test_acc": 62.25, "test_acc_top5": 90.0,
            "test_loss": 1.2, "best_acc": 62.25, "images_per_s": 251.0},
        3: {"lr": 0.005, "train_loss_ce": 1.1, "train_acc": 61.0, "test_acc": 60.0, "test_acc_top5": 91.0,
            "test_loss": 1.1, "best_acc": 62.25, "images_per_s": 249.0}}


def _cfg(tmp_path: Path, *extra: str):
    return load_config(CFG, ["LOG.WANDB", "true", "LOG.PREFIX", str(tmp_path / "out"), "EXPERIMENT.TAG",
                             "vanilla,resnet20,fmnist", *extra])


def test_options_from_config(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    opts = wandb_options(cfg, resumed=True)
    assert opts is not None and opts.project == "fashion_mnist" and opts.name == "vanilla,resnet20,fmnist"
    assert opts.tags == ["vanilla", "resnet20", "fmnist"] and opts.resumed
    assert opts.config["SOLVER"]["LR"] == 0.05 and opts.config["LOG"]["WANDB"] is True
    assert wandb_options(_cfg(tmp_path, "EXPERIMENT.NAME", "run7")).name == "run7"
    assert wandb_options(load_config(CFG)) is None  # LOG.WANDB false: no W&B


def test_offline_run_holds_history_config_and_summary(tmp_path: Path, offline: Path) -> None:
    cfg = _cfg(tmp_path)
    run_dir = tmp_path / "out" / "fashion_mnist" / "vanilla,resnet20,fmnist"
    logger = MetricLogger(run_dir, tensorboard=False, wandb=wandb_options(cfg), stream=sys.stderr)
    for epoch in (1, 2, 3):
        logger.log_epoch(epoch, ROWS[epoch])
    logger.log_summary({"best_acc": 62.25, "best_epoch": 2, "last_acc": 60.0, "last_epoch": 3, "teacher_acc": None})
    logger.close()
    run_id = (run_dir / WANDB_ID_FILE).read_text().strip()
    (rec,) = _read_offline_run(offline, run_id)
    assert rec["run"].project == "fashion_mnist" and rec["run"].display_name == "vanilla,resnet20,fmnist"
    assert list(rec["run"].tags) == ["vanilla", "resnet20", "fmnist"]
    assert rec["config"]["SOLVER"]["LR"] == 0.05 and rec["config"]["DISTILLER"]["STUDENT"] == "resnet20"
    history = [{k: v for k, v in h.items() if not k.startswith("_")} for h in rec["history"]]
    assert history == [{"epoch": e, **ROWS[e]} for e in (1, 2, 3)]
    s = rec["summary"]
    assert (s["best_acc"], s["best_epoch"], s["last_acc"], s["last_epoch"]) == (62.25, 2, 60.0, 3)
    assert "teacher_acc" not in s
    assert (run_dir / "metrics.csv").is_file()  # the files are still written


def test_resumed_logger_continues_the_same_run(tmp_path: Path, offline: Path) -> None:
    cfg = _cfg(tmp_path)
    run_dir = tmp_path / "run"
    first = MetricLogger(run_dir, tensorboard=False, wandb=wandb_options(cfg), stream=sys.stderr)
    first.log_epoch(1, ROWS[1])
    first.log_epoch(2, ROWS[2])
    run_id = first.wandb_run.id
    first.close(exit_code=1)  # interrupted
    # offline run folders are named by the start time to the second: resume in the next second
    time.sleep(1.02 - time.time() % 1.0)
    resumed = MetricLogger(run_dir, tensorboard=False, wandb=wandb_options(cfg, resumed=True), stream=sys.stderr)
    assert resumed.wandb_run.id == run_id
    resumed.log_epoch(3, ROWS[3])
    resumed.close()
    assert (run_dir / WANDB_ID_FILE).read_text().strip() == run_id
    parts = _read_offline_run(offline, run_id)
    assert len(parts) == 2 and all(p["run"].run_id == run_id for p in parts)
    assert [h["epoch"] for h in parts[1]["history"]] == [3]
    # best/last over all epochs of the run (the rows before the resume are read back from metrics.csv)
    assert (parts[1]["summary"]["best_acc"], parts[1]["summary"]["last_acc"]) == (62.25, 60.0)
    fresh = MetricLogger(run_dir, tensorboard=False, wandb=wandb_options(cfg), stream=sys.stderr)
    assert fresh.wandb_run.id != run_id  # a new training run is a new W&B run
    fresh.close()


def test_resume_with_wandb_newly_on_sends_the_earlier_epochs(tmp_path: Path, offline: Path) -> None:
    run_dir = tmp_path / "run"
    plain = MetricLogger(run_dir, tensorboard=False, stream=sys.stderr)
    plain.log_epoch(1, ROWS[1])
    plain.close()
    logger = MetricLogger(run_dir, tensorboard=False, wandb=wandb_options(_cfg(tmp_path), resumed=True),
                          stream=sys.stderr)
    logger.log_epoch(2, ROWS[2])
    run_id = logger.wandb_run.id
    logger.close()
    (rec,) = _read_offline_run(offline, run_id)
    assert [(h["epoch"], h["test_acc"]) for h in rec["history"]] == [(1, 41.5), (2, 62.25)]


def test_missing_package_is_one_line_naming_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    opts = WandbOptions(project="p", name="n")
    for enabled in (True, False):  # every rank stops, not only the one that logs
        with pytest.raises(WandbMissingError) as info:
            MetricLogger(tmp_path / "run", tensorboard=False, enabled=enabled, wandb=opts)
        msg = str(info.value)
        assert "\n" not in msg and "pip install 'sldistill[wandb]'" in msg and "LOG.WANDB false" in msg
        assert isinstance(info.value, ValueError)  # the command line prints it as one error line
    assert not (tmp_path / "run").exists()  # nothing written: it fails before anything starts
    with pytest.raises(WandbMissingError, match="sldistill"):  # at the start of a run, from the config
        wandb_options(_cfg(tmp_path))
    MetricLogger(tmp_path / "plain", tensorboard=False, stream=sys.stderr).close()  # W&B off: no import


def test_init_failure_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class FakeWandb:
        @staticmethod
        def init(**kwargs: Any) -> Any:
            raise RuntimeError("api_key not configured (no-tty)")

    monkeypatch.setitem(sys.modules, "wandb", FakeWandb)
    with pytest.raises(WandbInitError, match="wandb login.*WANDB_MODE=offline.*LOG.WANDB false") as info:
        MetricLogger(tmp_path / "run", tensorboard=False, wandb=WandbOptions(project="p", name="n"), stream=sys.stderr)
    assert isinstance(info.value, ValueError) and "\n" not in str(info.value)


def _train_passes_wandb() -> bool:
    import sldistill.engine.run as run

    return "wandb" in inspect.getsource(run)


@pytest.mark.skipif(not _train_passes_wandb(), reason="engine.run does not pass wandb_options(cfg) to MetricLogger yet")
def test_train_with_wandb_missing_stops_before_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture) -> None:
    from datagen import write_fashion_mnist
    from sldistill.cli import main

    data = write_fashion_mnist(tmp_path / "data", n_train=40, n_test=20)
    monkeypatch.setitem(sys.modules, "wandb", None)
    rc = main(["train", "--cfg", CFG, "LOG.WANDB", "true", "LOG.PREFIX", str(tmp_path / "out"),
               "DATASET.ROOT", str(data), "DATASET.TRAIN_SUBSET", "0", "DATASET.NUM_WORKERS", "0",
               "SOLVER.EPOCHS", "1", "LOG.PROGRESS", "false"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "sldistill[wandb]" in err and len(err.splitlines()) == 1
    assert not list((tmp_path / "out").rglob("metrics.csv"))
