"""Shared test fixtures: where the reference data lives, small helpers.

The reference vectors (the released implementations' outputs on fixed inputs) are part of the
test suite: they live in ``tests/reference/`` and every clone tests against them. Only the
published configs (``seed_configs``) are read from outside the repository, from the project's
``shared/`` folder beside it; tests that need them skip, naming what is missing, when it is absent.
"""
from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path(__file__).resolve().parent / "reference"


def load_reference(name: str) -> Any:
    """The parsed JSON of ``tests/reference/<name>`` (``.gz`` files are decompressed)."""
    path = REFERENCE / name
    if path.suffix == ".gz":
        with gzip.open(path, "rt") as f:
            return json.load(f)
    return json.loads(path.read_text())


def loss_vector_cases() -> list[dict]:
    """The logit-loss reference cases; a plain function so modules can parametrize with it."""
    return load_reference("loss_vectors.json")["cases"]


def feature_vector_cases() -> list[dict]:
    """The feature-distiller reference cases."""
    return load_reference("feature_vectors.json.gz")["cases"]


def shared_dir() -> Path | None:
    """The project's shared/ folder holding the published configs (``seed_configs``):
    ``$SLDISTILL_SHARED`` when set, otherwise ``../shared`` beside the repository; None when absent."""
    env = os.environ.get("SLDISTILL_SHARED")
    candidate = Path(env) if env else REPO.parent / "shared"
    return candidate if (candidate / "seed_configs").is_dir() else None


SHARED = shared_dir()
SEED_CONFIGS_MISSING = "published configs not found: ../shared/seed_configs is absent (or set SLDISTILL_SHARED)"
needs_shared = pytest.mark.skipif(SHARED is None, reason=SEED_CONFIGS_MISSING)


@pytest.fixture(scope="session")
def shared() -> Path:
    """The shared/ folder, for tests that read ``shared / "seed_configs"``."""
    if SHARED is None:
        pytest.skip(SEED_CONFIGS_MISSING)
    return SHARED


@pytest.fixture(scope="session")
def loss_vectors() -> list[dict]:
    return loss_vector_cases()


@pytest.fixture(scope="session")
def feature_vectors() -> list[dict]:
    return feature_vector_cases()


@pytest.fixture(scope="session")
def model_signatures() -> dict:
    return load_reference("model_signatures.json")


@pytest.fixture(autouse=True)
def _small_threads():
    """Keep each test on the 2 cores of CI without oversubscription; restore afterwards."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def run_subcommand(argv: list[str]) -> int:
    """Run one ``sldistill`` subcommand's handler directly (its exceptions propagate, unlike
    ``sldistill.cli.main``, which turns them into exit codes)."""
    from sldistill.cli import build_parser

    args = build_parser().parse_args(argv)
    return int(args.func(args))
