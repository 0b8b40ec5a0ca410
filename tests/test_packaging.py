"""The package metadata states the real minimum versions, and this environment meets them."""
import tomllib
from pathlib import Path

import torch
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]


def _requirements() -> dict[str, Requirement]:
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    return {r.name: r for r in map(Requirement, meta["project"]["dependencies"])}


def test_torch_minimum_is_the_one_the_code_needs():
    reqs = _requirements()
    # torch.amp.GradScaler("cuda", ...) (the fp16 path of the trainer) appeared in torch 2.3
    assert not reqs["torch"].specifier.contains("2.2.2") and reqs["torch"].specifier.contains("2.3.0")
    assert not reqs["torchvision"].specifier.contains("0.17.2") and reqs["torchvision"].specifier.contains("0.18.0")
    assert torch.amp.GradScaler("cuda", enabled=False) is not None


def test_installed_versions_satisfy_the_metadata():
    import torchvision

    reqs = _requirements()
    assert reqs["torch"].specifier.contains(Version(torch.__version__.split("+")[0]))
    assert reqs["torchvision"].specifier.contains(Version(torchvision.__version__.split("+")[0]))
