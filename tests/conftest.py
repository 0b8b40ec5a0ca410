"""Shared test fixtures: where the reference data lives, small helpers."""
from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path | None:
    """The project's shared/ folder: $SLDISTILL_SHARED, ../shared beside the repo, or /work/shared."""
    candidates = [os.environ.get("SLDISTILL_SHARED"), REPO.parent / "shared", "/work/shared"]
    for c in candidates:
        if c and (Path(c) / "reference").is_dir():
            return Path(c)
    return None


SHARED = shared_dir()
needs_shared = pytest.mark.skipif(SHARED is None, reason="shared/ reference data folder not found (set SLDISTILL_SHARED)")


@pytest.fixture(scope="session")
def shared() -> Path:
    if SHARED is None:
        pytest.skip("shared/ reference data folder not found (set SLDISTILL_SHARED)")
    return SHARED


@pytest.fixture(scope="session")
def loss_vectors(shared: Path) -> list[dict]:
    return json.loads((shared / "reference" / "loss_vectors.json").read_text())["cases"]


@pytest.fixture(scope="session")
def feature_vectors(shared: Path) -> list[dict]:
    with gzip.open(shared / "reference" / "feature_vectors.json.gz", "rt") as f:
        return json.load(f)["cases"]


@pytest.fixture(scope="session")
def model_signatures(shared: Path) -> dict:
    return json.loads((shared / "reference" / "model_signatures.json").read_text())


@pytest.fixture(autouse=True)
def _small_threads():
    """Keep each test on the 2 cores of CI without oversubscription; restore afterwards."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)
