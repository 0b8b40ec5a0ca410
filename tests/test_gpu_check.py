"""scripts/gpu_check.sh: on a machine without a CUDA device it refuses, says why, runs nothing."""
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_refuses_without_cuda(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    res = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), str(tmp_path / "out")], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 3, res.stdout + res.stderr
    assert "no CUDA device is visible" in res.stderr and "Nothing was run" in res.stderr
    assert not (tmp_path / "out").exists()
